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

Failures are one line each: no usable GPU (TensorRT's ``Builder``/``Runtime`` then raise
``TypeError: pybind11::init(): factory function returned nullptr``, NVIDIA/TensorRT#2913) is
RuntimeMissing (exit 2); a parse or build that TensorRT refuses is ToolchainError (exit 3) with
TensorRT's last error lines; an engine that breaks the plan is CheckFailed (exit 1).
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

from evit_deploy.errors import CheckFailed, EvitError, RuntimeMissing, ToolchainError, UsageError
from evit_deploy.trt.inspect import PrecisionReport, check_layers, onnx_nodes_in, parse_layers
from evit_deploy.trt.plan import PLAN_SUFFIX, BuildPlan
from evit_deploy.trt.stack import cuda_unavailable, gpu_name, import_tensorrt, install_hint

# TensorRT releases that changed what a plan may ask for.
WEAK_TYPING_DEPRECATED = (10, 12)  # trtexec --fp16/--int8 and ILayer.precision warn from here on
DLA_ON_11 = (11, 4, 1)  # DLA is back on TensorRT 11 from 11.4.1 (JetPack 7.2.2+, AGX Orin only)


def gpu_unavailable() -> str | None:
    """None when TensorRT can build and run here, else why not (cheap; creates no context)."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed here"
    return cuda_unavailable()


def start(trt: Any, factory: Any, logger: _Logger, what: str) -> Any:
    """``trt.Builder``/``trt.Runtime`` that says in one line why it cannot start here.

    Without a usable GPU the bindings' factory returns nullptr, which pybind11 raises as a
    TypeError after TensorRT logged the cause ("CUDA initialization failure with error: 35").
    """
    try:
        made = factory(logger.logger)
    except TypeError as err:
        if "nullptr" not in str(err):
            raise
        made = None
    if made is None:
        cause = logger.messages[-1] if logger.messages else "no usable NVIDIA GPU"
        import importlib.util

        found = cuda_unavailable() if importlib.util.find_spec("cuda") else None
        raise RuntimeMissing(f"TensorRT {trt.__version__} cannot create its {what} here ({cause})"
                             + (f": {found}" if found else "") + "; it needs an NVIDIA GPU with a working driver "
                             "(build on the device with --device NAME, or export with --plan-only)")
    return made


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
    """Forwards TensorRT's log to ``log`` and keeps errors (and warnings) for the failure message."""

    def __init__(self, trt: Any, log: Any) -> None:
        self.errors: list[str] = []
        self.messages: list[str] = []  # errors and warnings, in order
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
                    outer.messages.append(msg)
                    log(f"tensorrt: {msg}")

        self.logger = Logger()


def _version(trt: Any) -> tuple[int, ...]:
    return tuple(int(p) for p in str(trt.__version__).split(".")[:3] if p.isdigit())


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
    version = _version(trt)
    notes: list[str] = []
    _check_installed(trt, version, plan)
    if not onnx_path.is_file():
        raise UsageError(f"{onnx_path}: the plan's ONNX is missing")

    logger = _Logger(trt, log)
    builder = start(trt, trt.Builder, logger, "builder")
    flags = 0
    if plan.typing == "strong" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if version[0] < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or logger.errors
        raise ToolchainError(f"TensorRT {trt.__version__} could not parse {onnx_path.name}: {'; '.join(errors[:3])}")

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
        if version >= WEAK_TYPING_DEPRECATED:
            notes.append(f"weak typing is deprecated in TensorRT {trt.__version__} (its precision requests print "
                         "deprecation warnings; 11 removed them): re-export with --typing strong")
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for name, shapes in plan.profiles.items():
            profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        _use_dla(trt, builder, config, plan)
    cache_path = timing_cache or plan.timing_cache_path(onnx_path.parent)
    if cache_path is not None:
        config.set_timing_cache(config.create_timing_cache(_read_cache(cache_path, notes)), False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise ToolchainError(f"TensorRT {trt.__version__} could not build the engine: "
                             f"{' | '.join(logger.errors[-3:]) or 'it logged no error (rerun with --verbose)'}")
    data = bytes(serialized)
    _write_atomic(engine_path, data)
    if cache_path is not None:
        _write_cache(cache_path, bytes(config.get_timing_cache().serialize()), notes)

    runtime = start(trt, trt.Runtime, logger, "runtime")
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ToolchainError(f"TensorRT {trt.__version__} cannot load the engine it just built: "
                             f"{' | '.join(logger.errors[-3:]) or 'no error logged'}")
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
                         precision=report.to_dict(), timing_cache=cache_path.name if cache_path else None,
                         device=gpu_name(), notes=notes)
    if not report.passed:
        raise CheckFailed(report.message())
    return result


def _check_installed(trt: Any, version: tuple[int, ...], plan: BuildPlan) -> None:
    """Refuse a plan this TensorRT cannot build as planned, naming the fix."""
    major = version[0]
    if (major >= 10) != (plan.trt_major >= 10) or (plan.trt_major >= 10 and major != plan.trt_major):
        fix = f"re-export with --trt-version {major if major >= 10 else '8.6'}"
        if plan.trt_major >= 10:
            fix += f", or install TensorRT {plan.trt_major}: {install_hint(plan.trt_major)}"
        raise UsageError(f"the plan targets TensorRT {plan.trt_version} but TensorRT {trt.__version__} is installed; {fix}")
    if plan.typing == "weak" and major >= 11:
        raise UsageError("TensorRT 11 has no weak typing; re-export with --typing strong")
    if plan.dla_core is not None and major >= 11 and version < DLA_ON_11:
        raise UsageError(f"TensorRT {trt.__version__} has no DLA (11.0-11.4.0 dropped it; 11.4.1 brings it back on "
                         "Jetson AGX Orin with JetPack 7.2.2+): install 11.4.1 or newer, or re-export without --dla-core")


def _use_dla(trt: Any, builder: Any, config: Any, plan: BuildPlan) -> None:
    cores = int(getattr(builder, "num_DLA_cores", 0))
    if plan.dla_core is None or plan.dla_core >= cores:
        raise UsageError(f"--dla-core {plan.dla_core}: this device has {cores} DLA core(s)"
                         + ("; DLA exists on Jetson AGX Orin and Xavier only" if not cores else ""))
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = plan.dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def _read_cache(path: Path, notes: list[str]) -> bytes:
    try:
        return path.read_bytes() if path.is_file() else b""
    except OSError as err:
        notes.append(f"timing cache {path.name} unreadable ({err.strerror}); built without it")
        return b""


def _write_cache(path: Path, data: bytes, notes: list[str]) -> None:
    try:
        _write_atomic(path, data)
    except OSError as err:
        notes.append(f"timing cache {path.name} not saved ({err.strerror})")


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
        nodes = {layer.name} | set(onnx_nodes_in(str(getattr(layer, "metadata", "") or "")))
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
    from evit_deploy.manifest import sha256_path

    if onnx_path.is_file() and sha256_path(onnx_path) != plan.onnx_sha256:
        raise UsageError(f"{onnx_path}: not the ONNX this plan was made for (sha256 differs); re-export")
    engine_path = engine or folder / plan.engine
    report = build_engine(plan, onnx_path, engine_path, timing_cache=timing_cache, progress=log)
    _record_in_manifest(folder, plan, engine_path, report)
    return report


def _record_in_manifest(folder: Path, plan: BuildPlan, engine_path: Path, report: dict[str, Any]) -> None:
    """Add the engine to the export's manifest (if it is beside the plan), written atomically."""
    from evit_deploy.manifest import (
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
    """``python -m evit_deploy.trt.build PLAN``: exit 0 built and checked, 1 the engine breaks the plan,
    2 bad input or no usable GPU/TensorRT here, 3 TensorRT failed to parse or build."""
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
