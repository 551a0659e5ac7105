"""What verify feeds a graph: images for an image graph, the reference's own upstream outputs for
a graph fed by another (a decoder gets the PyTorch encoder's embeddings of the same image, so
its parity is its own), and prompts where a model family supplies them."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.data import input_batches
from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec, TensorInfo

if TYPE_CHECKING:
    import torch

    from evit_deploy.zoo.cards import GraphCard, ModelCard

# feed kind -> (card, graph, image index, seed) -> arrays for those inputs; model families add theirs.
PromptFeed = Callable[["ModelCard", "GraphCard", int, int], dict[str, np.ndarray]]
PROMPT_FEEDS: dict[str, PromptFeed] = {}


def graph_module(model: torch.nn.Module, card: ModelCard, graph: GraphCard | None,
                 options: dict[str, bool]) -> torch.nn.Module:
    """The reference module of ``graph`` (the model itself for a one-graph model)."""
    if graph is None:
        return model
    return model.graph(graph.name, **{k: v for k, v in options.items() if k in graph.options}).eval()


def graph_inputs(spec: InputSpec, graph: GraphCard | None) -> list[TensorInfo]:
    """The reference runner's inputs, in the module's call order."""
    if graph is None:
        return [TensorInfo(spec.name, spec.shape)]
    return [TensorInfo(t.name, ()) for t in graph.inputs]


def graph_feeds(card: ModelCard, graph: GraphCard | None, model: torch.nn.Module, spec: InputSpec,
                options: dict[str, bool], *, samples: int, seed: int, source: Path | None) -> Iterator[dict[str, Any]]:
    """One feed per image (random or from ``source``), for ``graph``'s inputs."""
    import torch

    images = input_batches(spec, samples=samples, seed=seed, source=source)
    if graph is None:
        for image in images:
            yield {spec.name: image}
        return
    upstream = [g for g in card.graphs[:card.graphs.index(graph)]]
    modules = {g.name: graph_module(model, card, g, options) for g in upstream}
    for index, image in enumerate(images):
        produced: dict[str, dict[str, np.ndarray]] = {}
        for g in [*upstream, graph]:
            feed = _feed(card, g, image, produced, index, seed)
            if g is graph:
                yield feed
                break
            with torch.inference_mode():
                out = modules[g.name](*(torch.from_numpy(feed[t.name]) for t in g.inputs))
            out = out if isinstance(out, (tuple, list)) else (out,)
            produced[g.name] = {t.name: o.numpy() for t, o in zip(g.outputs, out)}


def _feed(card: ModelCard, graph: GraphCard, image: np.ndarray, produced: dict[str, dict[str, np.ndarray]],
          index: int, seed: int) -> dict[str, np.ndarray]:
    feed: dict[str, np.ndarray] = {}
    for tensor in graph.inputs:
        kind = tensor.feed or ""
        source, _, output = kind.partition(".")
        if kind == "image":
            feed[tensor.name] = image
        elif output:  # the card's fixed sizes (e.g. one image's embeddings) cut from what upstream gave
            value = produced[source][output]
            feed[tensor.name] = np.ascontiguousarray(
                value[tuple(slice(0, d) if isinstance(d, int) else slice(None) for d in tensor.shape)])
        elif kind in PROMPT_FEEDS:
            feed.update(PROMPT_FEEDS[kind](card, graph, index, seed))
        else:
            raise UsageError(f"{card.name} graph {graph.name}: verify has no source for {kind!r} inputs "
                             f"({tensor.name}) here")
    return feed
