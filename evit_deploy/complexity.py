"""Parameter and MAC counts, the way the published figures were counted.

- params: trainable parameters (``model.parameters()``); BatchNorm running statistics and
  other buffers are not parameters.
- MACs: ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 for one image. It counts
  convolutions, linear layers and matmuls (the attention's products included) and nothing
  elementwise (norms, activations, the segmentation head's bicubic upsampling), which is
  how the official figures were re-checked (zoo_facts.md, [V]).

Counting runs on the ``meta`` device (shapes only, no arithmetic), so even seg-L2 at
1024x2048 counts in well under a second; a model that cannot run on meta is counted with a
real forward pass of zeros.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from evit_deploy.zoo import ModelCard

__all__ = ["card_stats", "count_graph_macs", "count_macs", "count_params", "counted_with", "graph_stats"]


def count_params(model: torch.nn.Module) -> int:
    """Trainable parameters; shared parameters count once, buffers never."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: torch.nn.Module, input_size: tuple[int, int], *, batch_size: int = 1,
               in_channels: int = 3) -> int:
    """MACs of one forward pass at ``input_size`` ([H, W]): FlopCounterMode FLOPs // 2."""
    import torch
    from torch.func import functional_call

    h, w = (int(s) for s in input_size)
    shape = (batch_size, in_channels, h, w)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    on_meta = all(t.device.type == "meta" for t in state.values())
    try:
        if on_meta:
            return _flops(lambda x: model(x), torch.empty(shape, device="meta")) // 2
        meta_state = {k: torch.empty_like(v, device="meta") for k, v in state.items()}
        return _flops(lambda x: functional_call(model, meta_state, (x,)), torch.empty(shape, device="meta")) // 2
    except Exception:  # an op without a meta kernel: count a real pass instead
        if on_meta:
            raise
    ref = next(iter(state.values()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    return _flops(model, torch.zeros(shape, device=device, dtype=dtype)) // 2


def _flops(fn, x) -> int:  # type: ignore[no-untyped-def]
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(x)
    return int(counter.get_total_flops())


def counted_with() -> str:
    import torch

    return f"torch {torch.__version__.split('+')[0]} FlopCounterMode, FLOPs/2, batch 1"


def card_stats(card: ModelCard, input_size: tuple[int, int] | None = None) -> dict[str, int]:
    """``{"params", "macs"}`` of the card's architecture, built on the meta device (no weights needed).

    A several-graph model: the whole model's params, its first (image) graph's MACs, as ``ModelCard.macs``."""
    import torch

    from evit_deploy.nn import build_model

    with torch.device("meta"):
        model = build_model(card.builder, norm_eps=card.norm_eps, **card.builder_kwargs)
    size = tuple(input_size or card.input_size)
    image_graph = model.graph(card.graphs[0].name) if card.graphs else model  # SAM: MACs of the image encoder
    return {"params": count_params(model), "macs": count_macs(image_graph, size)}  # type: ignore[arg-type]


def graph_stats(card: ModelCard) -> dict[str, dict[str, object]]:
    """Per graph of a several-graph card: ``{"params", "macs", "inputs"}`` at its static export's sizes
    (batch 1; SAM's decoder: one prompt of two points), built on the meta device."""
    import torch

    from evit_deploy.nn import build_model

    with torch.device("meta"):
        model = build_model(card.builder, norm_eps=card.norm_eps, **card.builder_kwargs)
    stats: dict[str, dict[str, object]] = {}
    for graph in card.graphs:
        module = model.graph(graph.name)
        shapes = {t.name: graph.static_shape(t) for t in graph.inputs_for({})}
        inputs = tuple(torch.empty(shape, device="meta") for shape in shapes.values())
        stats[graph.name] = {"params": count_params(module), "macs": count_graph_macs(module, inputs),
                             "inputs": {name: list(shape) for name, shape in shapes.items()}}
    return stats


def count_graph_macs(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """MACs of one ``module(*inputs)`` call, for graphs with several inputs (SAM's decoder).

    Counted under ``inference_mode`` rather than ``no_grad``: a view of a parameter passed
    between modules (SAM's no-mask embedding) still requires grad under ``no_grad``, and
    FlopCounterMode's module tracker then fails to hook it.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(*inputs)
    return int(counter.get_total_flops()) // 2
