"""int8 for ONNX Runtime on CPUs: the shared Q/DQ quantiser (``evit_deploy.onnx.qdq``) in ORT's scheme.

The LiteMLA attention and the resizes stay float (the same islands as fp16 and TensorRT int8),
and so do the nodes that write the graph's outputs (the classifier / segmentation head's last
layer: quantising the logits to 256 levels flips near-tied argmaxes; on seeded seg-B0 and seg-B1
it cost 0.4-0.5 points of pixel agreement for one small conv), and any node named in ``keep_float`` (node names or module paths: the handle an
accuracy-control loop turns). Calibration is the streamed, memory-checked, cached one TensorRT uses.

The scheme was chosen by measurement (``benchmarks/onnx_int8_schemes.py``: seg-B1 at 512x1024,
seeded weights, ORT 1.32 CPU provider, 2 threads, the candidates alternated run by run in one
process, 12 rounds, on a shared 2-core Xeon with AVX512-VNNI and AMX; medians, ratios to fp32).
Before main's exact-bicubic export and new attention graph (branch point 98dfb31):

- QDQ, uint8 activations, int8 per-channel weights (u8s8), Q/DQ on Conv and the residual Adds:
  1.35x fp32 (the chosen default); the same with Conv alone 1.19x; QOperator u8s8 1.17x;
- QDQ s8s8: 0.73x (slower than fp32: ORT's s8s8 convs lose to u8s8 on x86).

After merging main the same graphs ran at 0.52-0.65x fp32 (s8s8 0.38-0.43x), same order: ORT
has no int8 HardSwish, so it ran each one in float (HardSigmoid + Mul) between a DequantizeLinear
and a QuantizeLinear, wrapped with the attention in Transposes around its channels-last
QLinearConvs; those took about two thirds of the int8 run. With HardSwish written as int8 ops
(``evit_deploy.onnx.hardswish``, ``int8_hardswish: int8``, the default), the u8s8 Conv+Add graph
runs at 1.20x fp32 where the same graph with ORT's float HardSwish runs at 0.74x
(``benchmarks/onnx_int8.py``: each artifact timed by ``evit profile`` in its own process, round
robin). Pixel agreement on photos the calibration never saw is unchanged by the rewrite (0.917
against 0.916, percentile ranges, another photo set); int8 weights alone kept 0.952 (the
weight-rounded bound). ``MEASURED`` carries these figures into every int8 manifest's details.

Activation ranges for dense outputs are MSE-clipped (``calib_method: auto``, ``chosen_method``),
as TFLite's are. On the photos of ``tests/conftest.py`` (28 calibration views, 6 other photos;
``benchmarks/onnx_int8.py``) plain int8 keeps 0.968 pixel agreement with seeded weights (bound
0.965) and 0.985 on the trained instrument (bound 0.995, 1.0 point under), at 1.19x and 1.22x
the fp32 artifact's speed in those runs.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.activation_ranges import clipping_pays
from evit_deploy.errors import UsageError
from evit_deploy.onnx.hardswish import OP_TYPES as HARDSWISH_OP_TYPES
from evit_deploy.onnx.hardswish import decompose_hardswish
from evit_deploy.onnx.layer_map import module_nodes

if TYPE_CHECKING:
    import onnx
    import torch

    from evit_deploy.accuracy_control import Outcome
    from evit_deploy.configs import Recipe
    from evit_deploy.contracts import ExportContext
    from evit_deploy.onnx.options import OnnxOptions
    from evit_deploy.spec import InputSpec

# speed-up over the fp32 artifact, seg-B1 512x1024, 2 threads (benchmarks/results/onnx_int8*.json;
# a shared machine: ratios from one interleaved run)
MEASURED: dict[str, Any] = {
    "benchmark": "benchmarks/onnx_int8.py, seg-B1 512x1024, ORT CPU, 2 threads",
    "speedup_over_fp32": {"int8": 1.20, "float": 0.74},  # by int8_hardswish, qdq-u8s8 Conv+Add
    "speedup_over_fp32_at_98dfb31": {"qdq-u8s8 Conv+Add": 1.35, "qdq-u8s8 Conv": 1.19,
                                     "qoperator-u8s8 Conv": 1.17, "qdq-s8s8 Conv": 0.73},
    "speedup_over_fp32_float_hardswish": {"qdq-u8s8 Conv+Add": 0.52, "qdq-u8s8 Conv": 0.65,
                                          "qoperator-u8s8 Conv": 0.55, "qdq-s8s8 Conv": 0.38},
    "chosen": "qdq-u8s8 Conv+Add, int8 HardSwish",
}


def speed_note(hardswish: str) -> str:
    """Said at every ONNX int8 export: what this graph gained on a CPU where it was measured."""
    ratio = MEASURED["speedup_over_fp32"][hardswish]
    if hardswish == "float":
        return (f"HardSwish in float (int8_hardswish: float): ONNX Runtime has no int8 HardSwish, and the float "
                f"activations between the int8 convolutions cost more than int8 saves (seg-B1 512x1024, 2 threads: "
                f"{ratio}x the fp32 artifact's speed); drop int8_hardswish: float for int8 speed")
    return (f"HardSwish in int8 as x * Clip(x + 3, 0, 6) / 6 (ONNX Runtime has no int8 HardSwish): measured at "
            f"{ratio}x the fp32 artifact's speed on seg-B1 512x1024, 2 threads, a Xeon with AVX512-VNNI "
            "(benchmarks/onnx_int8.py); profile both on your CPU (evit profile), the gain depends on its int8 units")


@dataclass
class Int8Graph:
    """The int8 graph, the manifest's details about it, the notes for the user, and, under
    ``--min-agreement``, what the accuracy control concluded (None without it)."""

    graph: onnx.ModelProto
    details: dict[str, Any]
    notes: list[str]
    control: Outcome | None = None
    scaled: dict[str, float] = field(default_factory=dict)  # tensors holding a multiple of their float value


def quantize(graph: onnx.ModelProto, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, options: OnnxOptions,
             ctx: ExportContext, upsampling: list[str]) -> Int8Graph:
    """The int8 graph in ORT's scheme. ``upsampling``: the module paths of the bicubic
    upsamplings exported as convolutions (``bicubic: exact``), which stay float with the resizes:
    quantised, their depthwise convs and the Q/DQ around the pad and pixel shuffle made seg-B1
    int8 run at 0.6x fp32 instead of 1.35x."""
    from evit_deploy.graph import islands_summary, name_nodes, select_islands
    from evit_deploy.onnx.qdq import ORT_SCHEMES, key_material, quantize_qdq

    if not ctx.image_graph:
        raise UsageError(f"int8 calibrates from images; {ctx.model_name} takes other inputs")
    name_nodes(graph)  # the names keep_float, the islands and the manifest share
    islands = select_islands(graph, options.keep_fp32)
    kept = keep_float_nodes(graph, options.keep_float)
    upsampling_nodes = [n for path in upsampling for n in module_nodes(graph, path)] \
        if "resize" in options.keep_fp32 else []
    head = [n.name for n in graph.graph.node if set(n.output) & {o.name for o in graph.graph.output}]
    exclude = list(dict.fromkeys([n for island in islands for n in island.nodes] + upsampling_nodes + head + kept))
    scheme = ORT_SCHEMES[options.int8_scheme]
    method = chosen_method(options.calib_method, ctx.task)
    op_types = list(options.quantize_ops)
    rewrite: dict[str, int] = {}
    companions: dict[str, list[str]] = {}  # a conv's int8 HardSwish goes float with it
    scaled: dict[str, float] = {}
    if options.int8_hardswish == "int8":
        decomposed = decompose_hardswish(graph, keep=exclude)
        graph, rewrite, companions, scaled = decomposed.model, decomposed.counts, decomposed.companions, \
            decomposed.scaled
        op_types = list(dict.fromkeys(op_types + list(HARDSWISH_OP_TYPES)))
    ctx.progress(f"int8 ({scheme.name}): Q/DQ on {', '.join(op_types)}; {len(exclude)} node(s) stay float")

    def quantise(float_nodes: list[str], images: Iterable[np.ndarray],
                 material: dict[str, Any]) -> tuple[onnx.ModelProto, dict[str, Any]]:
        return quantize_qdq(graph, images, input_name=spec.name, exclude=exclude + float_nodes,
                            op_types=op_types, method=method, key_material=material,
                            scheme=scheme, progress=ctx.progress)

    control = None
    if not options.controlled:
        quantized, info = quantise([], ctx.calibration_batches(spec), key_material(graph, spec, recipe))
    else:
        from evit_deploy.onnx.accuracy import controlled_int8

        quantized, info, control = controlled_int8(graph, model, spec, ctx, options, options, scheme, op_types,
                                                   quantise, key_material(graph, spec, recipe), companions)
    details = {"int8": {**info, "scheme": scheme.name, "keep_float": list(options.keep_float),
                        "keep_float_nodes": kept, "float_head": head, "float_upsampling": upsampling_nodes,
                        "hardswish": {"mode": options.int8_hardswish, **rewrite}, "measured": MEASURED},
               "fp32_islands": islands_summary(islands)}
    notes = [f"int8 ({scheme.name}): {len(islands)} float island(s) "
             f"({', '.join(sorted({i.kind for i in islands})) or 'none'}) and the output layer"
             + (f", {len(kept)} node(s) kept float by keep_float" if kept else ""),
             *([control.note] if control else []), speed_note(options.int8_hardswish)]
    return Int8Graph(quantized, details, notes, control, scaled)


def chosen_method(requested: str, task: str) -> str:
    """``auto``: MSE-clipped ranges for dense outputs (``activation_ranges.clipping_pays``), else
    onnxruntime's percentile calibration.

    Measured on seg-B1 at 512x1024 (28 calibration views of 7 photos, 6 other photos; pixel
    agreement with PyTorch, then mIoU): on the trained instrument percentile keeps 0.983 / 0.939
    and MSE 0.985 / 0.950, where int8 weights alone keep 0.995; on seeded weights percentile keeps
    0.952 / 0.51 and MSE 0.968 / 0.60, above the 0.965 int8 weights alone keep.
    """
    if requested != "auto":
        return requested
    return "mse" if clipping_pays(task) else "percentile"


def keep_float_nodes(graph: onnx.ModelProto, entries: list[str]) -> list[str]:
    """The nodes ``entries`` name: a node name, or a module path (every node the exporter traced
    inside that module, e.g. ``backbone.stages.3.op_list.1.context_module``). An entry that names
    nothing is a usage error, so a typo never silently quantises what was meant to stay float."""
    found: list[str] = []
    for entry in entries:
        hits = [n.name for n in graph.graph.node if n.name == entry] or module_nodes(graph, entry)
        if not hits:
            raise UsageError(f"keep_float: {entry!r} names no node or module of the graph; give node names "
                             "or module paths such as backbone.stages.3.op_list.1.context_module")
        found += [h for h in hits if h not in found]
    return found
