"""What verify feeds a graph: images for an image graph, the reference's own upstream outputs for
a graph fed by another (a decoder gets the PyTorch encoder's embeddings of the same image, so
its parity is its own), and prompts where a model family supplies them."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.data import image_sizes, input_batches
from evit_deploy.errors import UsageError
from evit_deploy.pipeline.sam_feed import sam_prompts
from evit_deploy.spec import InputSpec, TensorInfo

if TYPE_CHECKING:
    import torch

    from evit_deploy.zoo.cards import GraphCard, ModelCard


@dataclass(frozen=True)
class PromptContext:
    """What a prompt feed knows when it makes one image's prompts."""

    index: int  # of the image among verify's samples
    seed: int
    image_size: tuple[int, int]  # (h, w) of the photo, before preprocessing: prompts are in its pixels
    options: dict[str, bool]  # the model options the artifact was exported with
    artifact_inputs: dict[str, TensorInfo] = field(default_factory=dict)  # sizes to fit (None: dynamic)
    prompts: Path | None = None  # a prompt file, else generated prompts


# feed kind -> (card, graph, context) -> one or more feeds of that kind's inputs (as many runs as the
# artifact needs for one image's prompts); model families add theirs.
PromptFeed = Callable[["ModelCard", "GraphCard", PromptContext], list[dict[str, np.ndarray]]]
PROMPT_FEEDS: dict[str, PromptFeed] = {"prompts": sam_prompts}


@dataclass
class Sample:
    """One run's inputs, and the size of the photo they came from (SAM's masks are judged on it)."""

    inputs: dict[str, np.ndarray]
    image_size: tuple[int, int] | None = None


def graph_module(model: torch.nn.Module, card: ModelCard, graph: GraphCard | None,
                 options: dict[str, bool]) -> torch.nn.Module:
    """The reference module of ``graph`` (the model itself for a one-graph model)."""
    if graph is None:
        return model
    return model.graph(graph.name, **{k: v for k, v in options.items() if k in graph.options}).eval()


def graph_inputs(spec: InputSpec, graph: GraphCard | None, options: dict[str, bool]) -> list[TensorInfo]:
    """The reference runner's inputs, in the module's call order."""
    if graph is None:
        return [TensorInfo(spec.name, spec.shape)]
    return [TensorInfo(t.name, ()) for t in graph.inputs_for(options)]


def graph_feeds(card: ModelCard, graph: GraphCard | None, model: torch.nn.Module, spec: InputSpec,
                options: dict[str, bool], *, samples: int, seed: int, source: Path | None,
                artifact_inputs: list[TensorInfo] | None = None, prompts: Path | None = None) -> Iterator[Sample]:
    """The runs for ``samples`` images (random or from ``source``): one per image, or as many as its
    prompts need to fit the artifact's fixed sizes (``artifact_inputs``)."""
    import torch

    images = input_batches(spec, samples=samples, seed=seed, source=source)
    if graph is None:
        for image in images:
            yield Sample({spec.name: image})
        return
    sizes = image_sizes(spec, samples=samples, source=source)
    fixed = {t.name: t for t in artifact_inputs or []}
    upstream = [g for g in card.graphs[:card.graphs.index(graph)]]
    modules = {g.name: graph_module(model, card, g, options) for g in upstream}
    for index, (image, size) in enumerate(zip(images, sizes)):
        produced: dict[str, dict[str, np.ndarray]] = {}
        context = PromptContext(index, seed, size, options, fixed, prompts)
        for g in [*upstream, graph]:
            feeds = _feeds(card, g, image, produced, context)
            if g is graph:
                yield from (Sample(feed, size) for feed in feeds)
                break
            own = [t.name for t in g.inputs_for(options)]
            with torch.inference_mode():
                out = modules[g.name](*(torch.from_numpy(feeds[0][name]) for name in own))
            out = out if isinstance(out, (tuple, list)) else (out,)
            produced[g.name] = {t.name: o.numpy() for t, o in zip(g.outputs, out)}


def _feeds(card: ModelCard, graph: GraphCard, image: np.ndarray, produced: dict[str, dict[str, np.ndarray]],
           context: PromptContext) -> list[dict[str, np.ndarray]]:
    feed: dict[str, np.ndarray] = {}
    prompt_kinds: list[str] = []
    for tensor in graph.inputs_for(context.options):
        kind = tensor.feed or ""
        source, _, output = kind.partition(".")
        if kind == "image":
            feed[tensor.name] = image
        elif output:  # the card's fixed sizes (e.g. one image's embeddings) cut from what upstream gave
            value = produced[source][output]
            feed[tensor.name] = np.ascontiguousarray(
                value[tuple(slice(0, d) if isinstance(d, int) else slice(None) for d in tensor.shape)])
        elif kind in PROMPT_FEEDS:
            if kind not in prompt_kinds:
                prompt_kinds.append(kind)
        else:
            raise UsageError(f"{card.name} graph {graph.name}: verify has no source for {kind!r} inputs "
                             f"({tensor.name}) here")
    runs: list[dict[str, Any]] = [feed]
    for kind in prompt_kinds:  # each prompt batch that fits the artifact is one run
        runs = [{**run, **part} for run in runs for part in PROMPT_FEEDS[kind](card, graph, context)]
    return runs
