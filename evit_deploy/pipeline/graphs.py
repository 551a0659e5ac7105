"""The graphs a model exports as: a cls/seg model is one, a SAM model two (encoder, prompt decoder).

For a card with ``graphs:`` each graph's module comes from the built model (``model.graph(name,
**options)``) and its inputs from the card: an ``image`` input is exported at the recipe's size,
an input fed from another graph takes the shape that graph's module really outputs (run once
here on a zero image), a ``prompts`` input the sizes the card gives its dims. A dim the card
names is dynamic when the recipe asks for ``--dynamic``, else fixed at its ``static`` size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evit_deploy.errors import UsageError
from evit_deploy.spec import DynamicDim, GraphInput, GraphIO, InputSpec

if TYPE_CHECKING:
    import torch

    from evit_deploy.zoo.cards import GraphCard, ModelCard

BATCH_RANGE = (1, 256)


@dataclass
class ExportGraph:
    """One graph to export: its card entry (None for a one-graph model), module and tensors."""

    card: GraphCard | None
    module: torch.nn.Module
    io: GraphIO

    @property
    def name(self) -> str | None:
        return self.card.name if self.card is not None else None


def selected(card: ModelCard, graphs: list[str] | None) -> list[GraphCard]:
    """The card's graphs, or those named in ``graphs`` (in card order); refuses unknown names."""
    if not card.graphs:
        if graphs:
            raise UsageError(f"{card.name} exports as one graph; drop --graph")
        return []
    for name in graphs or []:
        card.graph(name)
    return [g for g in card.graphs if not graphs or g.name in graphs]


def export_graphs(card: ModelCard, model: torch.nn.Module, spec: InputSpec, *, dynamic: bool,
                  options: dict[str, Any], graphs: list[str] | None = None) -> list[ExportGraph]:
    """What to export, in order; for a multi-graph card the upstream graphs run once to size the rest."""
    import torch

    wanted = selected(card, graphs)
    if not wanted:
        return [ExportGraph(None, model, GraphIO.image(spec))]
    produced: dict[str, dict[str, torch.Tensor]] = {}
    plans = []
    for graph in card.graphs:  # every graph, so the selected ones can be fed from the others
        own = {k: v for k, v in options.items() if k in graph.options}
        module = model.graph(graph.name, **own).eval()
        tensors = graph.inputs_for(own)
        inputs = [_graph_input(graph, tensor, spec, dynamic, produced) for tensor in tensors]
        examples = [_example(graph, tensor, i, produced) for tensor, i in zip(tensors, inputs)]
        with torch.inference_mode():
            outputs = module(*examples)
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        produced[graph.name] = {t.name: o for t, o in zip(graph.outputs, outputs)}
        if graph in wanted:
            plans.append(ExportGraph(graph, module, GraphIO(tuple(inputs), tuple(t.name for t in graph.outputs))))
    return plans


def _dim_range(graph: GraphCard, name: str) -> tuple[int, int]:
    return graph.dynamic.get(name, BATCH_RANGE if name == "batch" else (1, 1))


def _graph_input(graph: GraphCard, tensor: Any, spec: InputSpec, dynamic: bool,
                 produced: dict[str, dict[str, Any]]) -> GraphInput:
    source, _, output = (tensor.feed or "").partition(".")
    if output:  # fed from another graph: the card's sizes where it gives them, else what that graph outputs
        real = tuple(produced[source][output].shape)
        if len(real) != len(tensor.shape):
            raise UsageError(f"graph {graph.name}: {tensor.name} has {len(tensor.shape)} dims in the card, "
                             f"{tensor.feed} gives {len(real)}")
        shape = tuple(dim if isinstance(dim, int) else size for dim, size in zip(tensor.shape, real))
        return GraphInput(tensor.name, shape, dynamic=tuple(
            DynamicDim(axis, dim, *_dim_range(graph, dim))
            for axis, dim in enumerate(tensor.shape) if isinstance(dim, str) and dynamic))
    sizes: list[int] = []
    dims: list[DynamicDim] = []
    for axis, dim in enumerate(tensor.shape):
        if isinstance(dim, int):
            sizes.append(dim)
            continue
        low, high = _dim_range(graph, dim)
        if dynamic:
            sizes.append(min(max(2, low), high))  # torch.export fixes a dim traced at size 1
            dims.append(DynamicDim(axis, dim, low, high))
        else:
            sizes.append(graph.static_size(dim, spec.batch))
    if tensor.feed == "image":
        if len(sizes) != 4:
            raise UsageError(f"graph {graph.name}: image input {tensor.name} must be (batch, 3, H, W)")
        sizes[2:] = [spec.height, spec.width]
    return GraphInput(tensor.name, tuple(sizes), dynamic=tuple(dims))


def _example(graph: GraphCard, tensor: Any, info: GraphInput, produced: dict[str, dict[str, Any]]) -> Any:
    import torch

    source, _, output = (tensor.feed or "").partition(".")
    if output:  # e.g. one image's embeddings for a decoder that takes one image
        value = produced[source][output]
        return value[tuple(slice(0, size) for size in info.shape)]
    return torch.zeros(info.shape)
