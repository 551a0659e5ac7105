"""ONNX: torch's dynamo exporter, optional simplification, fp16 with fp32 islands, ONNX Runtime.

The exporter's optimizer stays on (it is worth ~1.7x on ORT); the LiteMLA eps survives it
because the model holds it as a 1-element tensor, not a Python scalar (DESIGN.md, traps).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from evit_deploy.configs import validate_options
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.spec import InputSpec, TensorInfo
from evit_deploy.targets.base import (
    ExportContext,
    ExportOutput,
    LayerTiming,
    Runner,
    Target,
    TargetOptions,
    missing_modules,
    package_versions,
    register,
)

if TYPE_CHECKING:
    import onnx
    import torch

    from evit_deploy.artifact import Manifest
    from evit_deploy.configs import Recipe

INSTALL_HINT = "pip install 'evit-deploy[onnx]'"
ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


class OnnxOptions(TargetOptions):
    opset: int = 18
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    simplify: Literal["onnxslim", "onnxsim", "none"] = "none"
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"  # ORT, at load time
    keep_fp32: list[Literal["attention", "resize"]] = Field(default_factory=lambda: ["attention", "resize"])




def export_onnx_graph(model: torch.nn.Module, spec: InputSpec, options: OnnxOptions, workdir: Path) -> onnx.ModelProto:
    """The fp32 graph from torch, static or with dynamic batch/height/width, checked."""
    import onnx
    import torch

    # The exporter logs registry chatter (e.g. "torchvision is not installed") at WARNING.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    example = torch.zeros(spec.shape)
    path = workdir / "raw.onnx"
    if options.exporter == "dynamo":
        dynamic_shapes = None
        if spec.dynamic:
            batch = torch.export.Dim("batch", min=1, max=256)
            # EfficientViT needs H and W divisible by 32: say so to the exporter, which
            # then keeps every stride-2 size an exact integer expression.
            # (torch specialises a size of 1, so the stride-32 map must be at least 2x2: 64x64 pixels.)
            h32, w32 = torch.export.Dim("h32", min=2, max=256), torch.export.Dim("w32", min=2, max=256)
            dynamic_shapes = ({0: batch, 2: 32 * h32, 3: 32 * w32},)
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=options.opset,
                                    input_names=[spec.name], output_names=["logits"],
                                    dynamic_shapes=dynamic_shapes, verbose=False)
        program.save(str(path))
    else:
        axes = {spec.name: {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "out_h", 3: "out_w"}}
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=options.opset,
                          input_names=[spec.name], output_names=["logits"],
                          dynamic_axes=axes if spec.dynamic else None, do_constant_folding=True)
    graph = onnx.load(str(path))
    path.unlink()
    return graph


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
            raise UsageError("onnxsim could not validate the simplified graph; use --simplify onnxslim or none")
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
        raise UsageError(f"the exported ONNX graph is invalid: {str(err).splitlines()[0]}") from None
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
    """fp16 weights and activations, with LiteMLA attention and resizes kept in fp32."""
    from evit_deploy.graph import find_fp32_islands, islands_summary, to_mixed_fp16

    # "no-fp16" islands (ops without an fp16 form) are not a choice: they always stay fp32.
    islands = [i for i in find_fp32_islands(graph) if i.kind in keep_fp32 or i.kind == "no-fp16"]
    return to_mixed_fp16(graph, islands), islands_summary(islands)


@register("ort", "onnxruntime")
class OnnxTarget(Target):
    name = "onnx"
    extensions = (".onnx",)
    precisions = ("fp32", "fp16")
    options_model = OnnxOptions
    description = "ONNX graph, run with ONNX Runtime (any platform)"
    requires = INSTALL_HINT

    def available(self) -> str | None:
        return missing_modules(INSTALL_HINT, "onnx", "onnxscript", "onnxruntime")

    def runtime_available(self, device: str = "cpu") -> str | None:
        return missing_modules(INSTALL_HINT, "onnxruntime")

    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        import onnx

        options = validate_options(recipe, OnnxOptions)
        assert isinstance(options, OnnxOptions)
        ctx.progress(f"torch.onnx.export ({options.exporter}, opset {options.opset})")
        graph = export_onnx_graph(model, spec, options, ctx.workdir)
        if options.simplify != "none":
            ctx.progress(f"simplifying with {options.simplify}")
            graph = simplify(graph, options.simplify)
        details: dict[str, Any] = {"opset": max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
                                   "nodes": len(graph.graph.node)}
        notes: list[str] = []
        if recipe.precision == "fp16":
            ctx.progress("converting to fp16 with fp32 attention/resize islands")
            graph, islands = to_fp16(graph, options.keep_fp32)
            details["fp32_islands"] = islands
            notes.append(f"{len(islands)} fp32 island(s) kept in the fp16 graph: " +
                         ", ".join(sorted({i['kind'] for i in islands})))
        add_metadata(graph, spec, ctx, recipe.precision)
        path = ctx.workdir / f"{ctx.model_name}.onnx"
        final = check_and_save(graph, path)
        return ExportOutput(
            files=[path],
            converter={"onnx": onnx.__version__, **package_versions("onnxscript", "onnxruntime", options.simplify)},
            inputs=tensor_infos(final, "input"),
            outputs=tensor_infos(final, "output"),
            notes=notes,
            details=details,
        )

    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        options = OnnxOptions.model_validate(manifest.recipe.get("options", {}))
        return OnnxRunner(path, device=device, threads=threads, graph_optimization=options.graph_optimization)



class OnnxRunner(Runner):
    """ONNX Runtime session; CPU by default, CUDA with ``device='cuda'``."""

    backend = "onnxruntime"

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None,
                 graph_optimization: str = "all", profile_dir: Path | None = None) -> None:
        super().__init__()
        self.path = path
        self.device = device
        self.threads = threads
        self.graph_optimization = graph_optimization
        self.profile_dir = profile_dir
        self.session: Any = None

    def _session(self, profiling: bool = False) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[self.graph_optimization])
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if profiling:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="evit-ort-prof-"), "ort")
        providers = ["CPUExecutionProvider"]
        if self.device in ("cuda", "gpu"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeMissing("onnxruntime here has no CUDA provider; install onnxruntime-gpu or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        elif self.device != "cpu":
            raise UsageError(f"unknown local device {self.device!r} for ONNX Runtime; use cpu or cuda")
        return ort.InferenceSession(str(self.path), options, providers=providers)

    def load(self) -> None:
        self.session = self._session()
        self.inputs = [TensorInfo(i.name, _dims(i.shape), _ort_dtype(i.type)) for i in self.session.get_inputs()]
        self.outputs = [TensorInfo(o.name, _dims(o.shape), _ort_dtype(o.type)) for o in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        info = {"backend": self.backend, "version": ort.__version__,
                "providers": self.session.get_providers() if self.session else [],
                "threads": self.threads, "graph_optimization": self.graph_optimization, "device": self.device}
        if self.device == "cpu" and _has_fp16_weights(self.path):
            info["note"] = ("ONNX Runtime's CPU provider computes most fp16 ops in fp32 without rounding between "
                            "them: this checks the graph, not fp16 arithmetic (the trt target's verify emulates it)")
        return info

    def per_layer(self, feed: dict[str, np.ndarray], iters: int) -> list[LayerTiming]:
        """Operator times from ONNX Runtime's own profiler, summed per node."""
        session = self._session(profiling=True)
        for _ in range(iters):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        totals: dict[str, list[Any]] = {}
        for event in events:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            node = event["name"][: -len("_kernel_time")]
            entry = totals.setdefault(node, [event.get("args", {}).get("op_name", "?"), 0.0, 0])
            entry[1] += event["dur"] / 1e3
            entry[2] += 1
        trace.unlink(missing_ok=True)
        whole = sum(t for _, t, _ in totals.values()) or 1.0
        rows = [LayerTiming(name, op, total / iters, calls // iters or 1, total / whole)
                for name, (op, total, calls) in totals.items()]
        return sorted(rows, key=lambda r: r.total_ms, reverse=True)


def _has_fp16_weights(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)


def _dims(shape: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)


def _ort_dtype(type_name: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
            "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}.get(type_name, "float32")
