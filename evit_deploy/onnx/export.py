"""Torch -> ONNX: the dynamo exporter, optional simplification, fp16 with fp32 islands, metadata.

The exporter's optimizer stays on (it is worth ~1.7x on ORT); the LiteMLA eps survives it
because the model holds it as a 1-element tensor, not a Python scalar (DESIGN.md, traps).
The seg head's bicubic upsampling is exported in its exact conv form unless ``bicubic:
resize`` (ORT's cubic Resize is single-threaded and took about a third of seg-B1's time).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.contracts import ArtifactFacts, ExportContext, ExportOutput
from evit_deploy.dependencies import package_versions
from evit_deploy.errors import EvitError, RuntimeMissing, UsageError
from evit_deploy.onnx.layer_map import onnx_layer_map, onnx_tensor_names
from evit_deploy.onnx.options import INSTALL_HINT, OnnxOptions
from evit_deploy.spec import GraphIO, InputSpec, TensorInfo
from evit_deploy.toolchain import first_line, toolchain_error

if TYPE_CHECKING:
    import onnx
    import torch

    from evit_deploy.configs import Recipe


def export_onnx_graph(model: torch.nn.Module, io: GraphIO, options: OnnxOptions, workdir: Path) -> onnx.ModelProto:
    """The fp32 graph from torch at ``io``'s sizes, with its dynamic dims, checked."""
    import onnx
    import torch

    if options.bicubic == "exact":
        from evit_deploy.convert.bicubic import bicubic_upsample_layers, replace_bicubic_upsampling

        if bicubic_upsample_layers(model):
            model = replace_bicubic_upsampling(copy.deepcopy(model))
    # The exporter logs registry chatter (e.g. "torchvision is not installed") at WARNING.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    examples = tuple(torch.zeros(i.shape) for i in io.inputs)
    names, outputs = io.input_names, list(io.outputs)
    dynamic = any(i.dynamic for i in io.inputs)
    path = workdir / "raw.onnx"
    try:
        if options.exporter == "dynamo":
            program = torch.onnx.export(model, examples, dynamo=True, opset_version=options.opset,
                                        input_names=names, output_names=outputs,
                                        dynamic_shapes=_dynamic_shapes(io) if dynamic else None, verbose=False)
            program.save(str(path))
        else:
            torch.onnx.export(model, examples, str(path), dynamo=False, opset_version=options.opset,
                              input_names=names, output_names=outputs,
                              dynamic_axes=_dynamic_axes(io) if dynamic else None, do_constant_folding=True)
    except EvitError:
        raise
    except Exception as err:  # noqa: BLE001 - the exporter raises many types: exit 3, the log kept
        raise toolchain_error("torch", f"to export the model to ONNX ({options.exporter}, opset {options.opset})",
                              err) from None
    graph = onnx.load(str(path))
    path.unlink()
    return graph


def _dynamic_shapes(io: GraphIO) -> tuple[dict[int, Any] | None, ...]:
    """torch.export's dims, one per name (inputs that share a dim name share the Dim).

    EfficientViT's H and W are ``32 * k``: said so, the exporter keeps every stride-2 size an
    exact integer expression (torch specialises a size of 1, so k >= 2: 64 pixels at least)."""
    import torch

    dims: dict[str, Any] = {}
    shapes = []
    for tensor in io.inputs:
        axes = {}
        for dim in tensor.dynamic:
            symbol = dims.setdefault(dim.name, torch.export.Dim(dim.name, min=dim.min, max=dim.max))
            axes[dim.axis] = symbol * dim.multiple if dim.multiple > 1 else symbol
        shapes.append(axes or None)
    return tuple(shapes)


def _dynamic_axes(io: GraphIO) -> dict[str, dict[int, str]]:
    """The TorchScript exporter's named axes: an image graph's input and its logits."""
    if len(io.inputs) != 1 or len(io.outputs) != 1:
        raise UsageError("--exporter torchscript exports dynamic shapes of one-image models only; "
                         "use the dynamo exporter (the default)")
    image, logits = io.inputs[0].name, io.outputs[0]
    return {image: {0: "batch", 2: "height", 3: "width"}, logits: {0: "batch", 2: "out_h", 3: "out_w"}}


def simplify(graph: onnx.ModelProto, how: str) -> onnx.ModelProto:
    if how == "onnxslim":
        import onnxslim

        return onnxslim.slim(graph)
    if how == "onnxsim":
        try:
            import onnxsim
        except ImportError:
            raise RuntimeMissing(f"--simplify onnxsim needs onnxsim; {INSTALL_HINT}") from None
        simplified, ok = onnxsim.simplify(graph)
        if not ok:
            raise toolchain_error("onnxsim", "to validate the simplified graph (use --simplify onnxslim or none)",
                                  RuntimeError("the simplified graph gives other outputs than the original"))
        return simplified
    return graph


def add_metadata(graph: onnx.ModelProto, spec: InputSpec, ctx: ExportContext, precision: str) -> None:
    """Metadata a deployed app reads to feed the model and name its outputs."""
    props = {
        "evit.model": ctx.model_name,
        "evit.task": ctx.task,
        "evit.precision": precision,
        "evit.input_layout": spec.layout,
        "evit.input_size": f"{spec.height}x{spec.width}",
        "evit.color": spec.color,
        "evit.mean": json.dumps(list(spec.mean)),
        "evit.std": json.dumps(list(spec.std)),
        "evit.classes": json.dumps(ctx.classes),
        "evit.output": "logits at 1/8 input resolution (NCHW)" if ctx.task == "segmentation" else "logits",
    }
    for value in graph.graph.output:  # readable names for the exporter's symbolic output sizes
        dims = value.type.tensor_type.shape.dim
        for index, label in ((0, "batch"), (2, "out_height"), (3, "out_width")):
            if len(dims) == 4 and dims[index].HasField("dim_param"):
                dims[index].dim_param = label
    del graph.metadata_props[:]
    for key, value in props.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    graph.producer_name = "evit"


def check_and_save(graph: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """onnx.checker and strict shape inference on the final graph, then save it."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True)
        onnx.checker.check_model(inferred, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise toolchain_error("onnx", "to check the exported graph", err) from None
    onnx.save(inferred, str(path))
    return inferred


def tensor_infos(graph: onnx.ModelProto, which: str) -> list[TensorInfo]:
    from onnx import helper

    infos = []
    for value in getattr(graph.graph, which):
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        infos.append(TensorInfo(value.name, shape, dtype))
    return infos


def to_fp16(graph: onnx.ModelProto, keep_fp32: list[str]) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """fp16 weights and activations, with the islands of the ``keep_fp32`` kinds kept in fp32."""
    from evit_deploy.graph import islands_summary, select_islands, to_mixed_fp16

    islands = select_islands(graph, keep_fp32)
    return to_mixed_fp16(graph, islands), islands_summary(islands)


def export_artifact(model: torch.nn.Module, spec: InputSpec, recipe: Recipe, options: OnnxOptions,
                    ctx: ExportContext) -> ExportOutput:
    """``NAME.onnx`` in ``ctx.workdir``: exported, simplified if asked, fp16 with islands or int8, checked."""
    import onnx

    from evit_deploy.convert.bicubic import bicubic_upsample_layers

    precision = recipe.precision
    ctx.progress(f"torch.onnx.export ({options.exporter}, opset {options.opset})")
    graph = export_onnx_graph(model, ctx.graph, options, ctx.workdir)
    layer_map = onnx_layer_map(graph)  # before simplifying: onnxslim drops the provenance
    if options.simplify != "none":
        ctx.progress(f"simplifying with {options.simplify}")
        graph = simplify(graph, options.simplify)
    details: dict[str, Any] = {"opset": max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
                               "nodes": len(graph.graph.node), "runner": options.runner_section()}
    notes: list[str] = []
    rewritten = bicubic_upsample_layers(model) if options.bicubic == "exact" else []
    control = None
    if rewritten:
        details["bicubic_rewrite"] = rewritten
        notes.append(f"{len(rewritten)} bicubic upsampling(s) exported as edge pad + depthwise conv + pixel "
                     "shuffle (exact; ONNX Runtime's cubic Resize is slow on CPU)")
    if precision == "fp16":
        ctx.progress(f"converting to fp16 with fp32 {'/'.join(options.keep_fp32) or 'no'} islands")
        graph, islands = to_fp16(graph, options.keep_fp32)
        details["fp32_islands"] = islands
        notes.append(f"{len(islands)} fp32 island(s) kept in the fp16 graph: " +
                     ", ".join(sorted({i['kind'] for i in islands})))
    elif precision == "int8":
        from evit_deploy.onnx.int8 import quantize

        int8 = quantize(graph, model, spec, recipe, options, ctx, rewritten)
        graph, control = int8.graph, int8.control
        layer_map = layer_map.scaled(int8.scaled)
        details.update(int8.details)
        notes += int8.notes
    add_metadata(graph, spec, ctx, precision)
    path = ctx.workdir / f"{control.stem if control else ctx.model_name}.onnx"
    final = check_and_save(graph, path)
    details["layer_map"] = layer_map.restricted_to(onnx_tensor_names(final)).to_dict()
    return ExportOutput(
        files=[path],
        converter={"onnx": onnx.__version__, **package_versions("onnxscript", "onnxruntime", options.simplify)},
        inputs=tensor_infos(final, "input"),
        outputs=tensor_infos(final, "output"),
        notes=notes,
        details=details,
        failure=control.failure if control else None,
    )


def read_facts(path: Path) -> ArtifactFacts:
    """The task, precision and inputs an exported ONNX carries (its weights are not read)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and others: the file is no ONNX
        raise UsageError(f"{path.name}: not an ONNX model ({first_line(err)}); re-export it") from None
    props = {p.key: p.value for p in graph.metadata_props}
    initializers = {t.name for t in graph.graph.initializer}
    inputs = [t for t in tensor_infos(graph, "input") if t.name not in initializers]
    return ArtifactFacts(task=props.get("evit.task"), precision=props.get("evit.precision"), inputs=inputs)
