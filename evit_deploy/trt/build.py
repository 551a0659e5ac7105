"""Build a TensorRT engine from a plan with the TensorRT Python API, then check it.

``build_engine(plan, onnx, engine)`` is the one entry point: ``evit export --target trt``
calls it on a GPU machine, and ``python -m evit_deploy.trt.build NAME.trt-plan.json`` runs it
on the device itself (a Jetson, a Triton host) from the files a ``--plan-only`` export wrote.
Neither path imports torch. Written against the TensorRT 10 and 11 Python APIs:

* network: strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10; every
  network is strongly typed on 11, where the flag is accepted and ignored); weak typing only
  on the legacy path (8.x, or ``typing: weak`` on 10): ``BuilderFlag.FP16``/``INT8`` plus
  ``OBEY_PRECISION_CONSTRAINTS`` and fp32 precision/output types on the island layers;
* config: workspace pool limit, optimization profile, builder optimization level, timing
  cache (read, then written back), DLA core with GPU fallback, detailed profiling verbosity;
* after the build: the engine inspector's layer information is checked against the plan
  (``evit_deploy.trt.inspect``); a planned island layer not in fp32 fails the build.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evit_deploy.errors import CheckFailed, EvitError, RuntimeMissing, UsageError
from evit_deploy.trt.inspect import PrecisionReport, check_layers, parse_layers
from evit_deploy.trt.plan import PLAN_SUFFIX, BuildPlan

INSTALL_HINT = "pip install 'evit-deploy[tensorrt]' on a machine with an NVIDIA GPU (JetPack ships it on Jetson)"


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeMissing(f"the tensorrt package is not installed; {INSTALL_HINT}") from None
    return trt


def gpu_unavailable() -> str | None:
    """None when TensorRT can build and run here, else why not (cheap; creates no context)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed here"
    try:
        from evit_deploy.trt.runtime import cudart

        count = cudart_call(cudart().cudaGetDeviceCount())
    except RuntimeMissing as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - any CUDA failure means no usable GPU
        return f"no usable CUDA device ({err})"
    return None if count else "no CUDA device is visible"


def cudart_call(result: Any) -> Any:
    from evit_deploy.trt.runtime import check

    return check(result)


@dataclass
class BuildReport:
    engine: str
    trt_version: str
    typing: str
    seconds: float
    engine_bytes: int
    layer_info: str
    precision: dict[str, Any]
    timing_cache: str | None = None
    device: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Logger:
    """Forwards TensorRT's log to ``log`` and keeps the errors for the failure message."""

    def __init__(self, trt: Any, log: Any) -> None:
        self.errors: list[str] = []
        outer = self
        errors = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)
        shown = (*errors, trt.ILogger.Severity.WARNING)

        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if severity in errors:
                    outer.errors.append(msg)
                if severity in shown:
                    log(f"tensorrt: {msg}")

        self.logger = Logger()


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def build_engine(plan: BuildPlan | str | Path, onnx_path: Path | None = None, engine_path: Path | None = None, *,
                 timing_cache: Path | None = None, layer_info_path: Path | None = None,
                 progress: Any = lambda message: None) -> dict[str, Any]:
    """Plan + ONNX -> serialized engine (+ the inspector's layer information JSON); returns the
    build report as a JSON-ready dict.

    ``plan`` is a ``BuildPlan`` or the path of ``NAME.trt-plan.json``; with a path, the ONNX,
    engine and layer information default to the plan's file names beside it (what the remote
    device build calls). Raises CheckFailed (exit 1) when the build fails or the engine does
    not run every planned island layer in fp32; RuntimeMissing/UsageError (exit 2) when
    TensorRT or a GPU is missing here or this TensorRT cannot honour the plan. No torch.
    """
    if not isinstance(plan, BuildPlan):
        plan_path = Path(plan)
        plan = BuildPlan.load(plan_path)
        folder = plan_path.parent
        onnx_path = onnx_path or folder / plan.onnx
        engine_path = engine_path or folder / plan.engine
    if onnx_path is None or engine_path is None:
        raise ValueError("build_engine(BuildPlan, ...) needs onnx_path and engine_path")
    return _build(plan, Path(onnx_path), Path(engine_path), timing_cache=timing_cache,
                  layer_info_path=layer_info_path, log=progress).to_dict()


def _build(plan: BuildPlan, onnx_path: Path, engine_path: Path, *, timing_cache: Path | None,
           layer_info_path: Path | None, log: Any) -> BuildReport:
    trt = import_tensorrt()
    major = _major(trt)
    notes: list[str] = []
    if (major >= 10) != (plan.trt_major >= 10) or (plan.trt_major >= 10 and major != plan.trt_major):
        raise UsageError(f"the plan targets TensorRT {plan.trt_version} but TensorRT {trt.__version__} is installed; "
                         f"re-export with --trt-version {major if major >= 10 else '8.6'}")
    if plan.typing == "weak" and major >= 11:
        raise UsageError("TensorRT 11 has no weak typing; re-export with --typing strong")
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path}: the plan's ONNX is missing")

    logger = _Logger(trt, log)
    builder = trt.Builder(logger.logger)
    flags = 0
    if plan.typing == "strong" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or logger.errors
        raise CheckFailed(f"TensorRT {trt.__version__} could not parse {onnx_path.name}: {'; '.join(errors[:3])}")

    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the layer types the check reads
    if plan.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace_gib * (1 << 30)))
    if plan.builder_optimization_level is not None:
        config.builder_optimization_level = plan.builder_optimization_level
    if not plan.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if plan.typing == "weak":
        _weak_typing(trt, network, config, plan, notes)
    if plan.profile is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, plan.profile["min"], plan.profile["opt"], plan.profile["max"])
        config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        if major >= 11:
            raise UsageError("TensorRT 11 does not support DLA; re-export without --dla-core")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_path = timing_cache or (Path(plan.timing_cache) if plan.timing_cache else None)
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise CheckFailed(f"TensorRT {trt.__version__} could not build the engine: "
                          f"{'; '.join(logger.errors[-3:]) or 'see the TensorRT log above'}")
    data = bytes(serialized)
    _write_atomic(engine_path, data)
    if cache_path is not None:
        _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))

    runtime = trt.Runtime(logger.logger)
    engine = runtime.deserialize_cuda_engine(data)
    inspector = engine.create_engine_inspector()
    info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    layer_info_path = layer_info_path or engine_path.with_name(plan.layer_info)
    layer_info_path.write_text(info)
    report: PrecisionReport = check_layers(plan, parse_layers(info))
    if report.unseen:
        notes.append(f"{len(report.unseen)} planned island node(s) are fused into larger layers or folded away; "
                     + ("strong typing binds their ONNX types" if plan.typing == "strong" else "their key ops were shown"))
    result = BuildReport(engine=engine_path.name, trt_version=str(trt.__version__), typing=plan.typing,
                         seconds=round(seconds, 2), engine_bytes=len(data), layer_info=layer_info_path.name,
                         precision=report.to_dict(), timing_cache=str(cache_path) if cache_path else None,
                         device=_device_name(), notes=notes)
    if not report.passed:
        raise CheckFailed(report.message())
    return result


def _weak_typing(trt: Any, network: Any, config: Any, plan: BuildPlan, notes: list[str]) -> None:
    """Legacy path: reduced precision allowed everywhere, fp32 requested (and obeyed) on the islands."""
    if plan.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # the Q/DQ nodes carry the scales: no calibrator
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    wanted = plan.layer_precisions
    matched: set[str] = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        metadata = str(getattr(layer, "metadata", "") or "")
        nodes = {layer.name} | {n for n in wanted if f"[ONNX Layer: {n}]" in metadata}
        hits = nodes & wanted.keys()
        if not hits:
            continue
        matched |= hits
        layer.precision = trt.float32
        for k in range(layer.num_outputs):
            if layer.get_output_type(k) in (trt.float32, trt.float16):
                layer.set_output_type(k, trt.float32)
    missing = sorted(set(wanted) - matched)
    if missing:
        notes.append(f"{len(missing)} island node(s) matched no network layer by name: {', '.join(missing[:5])}")


def _device_name() -> str:
    try:
        from evit_deploy.trt.runtime import check, cudart

        props = check(cudart().cudaGetDeviceProperties(0))
        name = props.name
        return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - informational only
        return ""


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_from_plan_file(plan_path: Path, *, engine: Path | None = None, onnx: Path | None = None,
                         timing_cache: Path | None = None, log: Any = lambda m: None) -> dict[str, Any]:
    """The device-side command: files beside the plan, manifest updated when there is one."""
    plan = BuildPlan.load(plan_path)
    folder = plan_path.parent
    onnx_path = onnx or folder / plan.onnx
    from evit_deploy.artifact import sha256_path

    if onnx_path.is_file() and sha256_path(onnx_path) != plan.onnx_sha256:
        raise UsageError(f"{onnx_path}: not the ONNX this plan was made for (sha256 differs); re-export")
    engine_path = engine or folder / plan.engine
    report = build_engine(plan, onnx_path, engine_path, timing_cache=timing_cache, progress=log)
    _record_in_manifest(folder, plan, engine_path, report)
    return report


def _record_in_manifest(folder: Path, plan: BuildPlan, engine_path: Path, report: dict[str, Any]) -> None:
    """Add the engine to the export's manifest (if it is beside the plan), written atomically."""
    from evit_deploy.artifact import (
        FileEntry,
        load_manifest,
        manifest_path_for,
        sha256_path,
        size_of,
        write_json_atomic,
    )

    primary = folder / plan.onnx
    if not manifest_path_for(primary).is_file() or engine_path.parent != folder:
        return
    manifest = load_manifest(primary)
    entries = [f for f in manifest.files if f.path not in (engine_path.name, report["layer_info"])]
    for path in (engine_path, folder / report["layer_info"]):
        entries.append(FileEntry(path=path.name, sha256=sha256_path(path), bytes=size_of(path)))
    manifest.files = entries
    manifest.details = {**manifest.details, "engine": report}
    write_json_atomic(manifest_path_for(primary), manifest.model_dump(mode="json"))


def main(argv: list[str] | None = None) -> int:
    """``python -m evit_deploy.trt.build PLAN``: exit 0 built and checked, 1 failed, 2 bad input."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m evit_deploy.trt.build",
                                     description="Build and check a TensorRT engine from an evit build plan "
                                                 f"(NAME{PLAN_SUFFIX}); needs TensorRT and an NVIDIA GPU, not torch.")
    parser.add_argument("plan", type=Path)
    parser.add_argument("--engine", type=Path, help="where to write the engine (default: the plan's)")
    parser.add_argument("--onnx", type=Path, help="the ONNX to build (default: the plan's, beside it)")
    parser.add_argument("--timing-cache", type=Path, help="timing cache file (read, then updated)")
    parser.add_argument("--json", action="store_true", help="print the build report as JSON")
    parser.add_argument("--verbose", action="store_true", help="print TensorRT's warnings")
    args = parser.parse_args(argv)
    log = (lambda m: print(m, file=sys.stderr)) if args.verbose else (lambda m: None)
    try:
        report = build_from_plan_file(args.plan, engine=args.engine, onnx=args.onnx,
                                      timing_cache=args.timing_cache, log=log)
    except EvitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"built {report['engine']} with TensorRT {report['trt_version']} in {report['seconds']:.0f} s "
              f"({report['engine_bytes'] / 2**20:.1f} MiB); island layers checked: "
              f"{len(report['precision']['shown_fp32'])} shown fp32, {len(report['precision']['unseen'])} fused/folded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
