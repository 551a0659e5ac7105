"""Device side of ``evit export --target trt --device NAME``: build the engine where it will run.

The host uploads a plan-only TensorRT artifact (typed ONNX + ``NAME.trt-plan.json``, made
for the device's TensorRT major). Here the plan is built in a fresh folder next to the
store, by, in order of preference:

1. where TensorRT's Python bindings are installed, the TensorRT target's Python-API builder,
   ``evit_deploy.trt.build.build_engine(plan_path, progress=...) -> dict`` (the contract this
   module relies on: build ``plan.engine`` beside the plan from ``plan.onnx``, write
   ``plan.layer_info``, check the engine's layer precisions against the plan, return a
   JSON-serialisable report; raise ``EvitError``: ``RuntimeMissing`` without TensorRT or a
   GPU, ``CheckFailed`` when the engine breaks the plan; never import torch);
2. the plan's own ``trtexec`` command (``evit_deploy.trt.plan.trtexec_argv``) with the
   device's trtexec (JetPack: ``/usr/src/tensorrt/bin/trtexec``), followed by
   ``python -m evit_deploy.trt.inspect PLAN LAYER_INFO`` when that checker is installed.

A build that runs and fails (TensorRT's builder returns no engine, trtexec exits non-zero or
writes none) is a ToolchainError (exit 3) carrying the builder's last error line. Every device
subprocess gets ``stdin=DEVNULL``: the worker's stdin is the SSH protocol stream.
Nothing here imports torch or, at import time, tensorrt.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evit_deploy.errors import CheckFailed, RuntimeMissing, ToolchainError, UsageError

TRTEXEC_CANDIDATES = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
BUILDER = ("evit_deploy.trt.build", "build_engine")


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return next((c for c in TRTEXEC_CANDIDATES if os.access(c, os.X_OK)), None)


def _python_builder() -> Callable[..., dict[str, Any]] | None:
    """evit's TensorRT builder, where both it and TensorRT's Python bindings are installed."""
    module_name, function = BUILDER
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec(module_name) is None:
        return None
    module = importlib.import_module(module_name)
    return getattr(module, function, None)


def build_on_device(artifact: str, out: str, options: dict[str, Any],
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Build the uploaded plan artifact's engine into ``out``; return what to fetch and record."""
    from evit_deploy.machine import device_state, gpus, tensorrt_version
    from evit_deploy.manifest import load_manifest
    from evit_deploy.trt.plan import PLAN_SUFFIX, BuildPlan

    source = Path(artifact).expanduser()
    manifest = load_manifest(source)
    plans = [f.path for f in manifest.files if f.path.endswith(PLAN_SUFFIX)]
    if not plans:
        raise UsageError(f"{source.name} carries no TensorRT build plan ({PLAN_SUFFIX}); export it with --target trt")
    dest = Path(out).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent))
    try:
        for entry in manifest.files:  # a private copy: the store stays as uploaded
            shutil.copy2(source.parent / entry.path, work / entry.path)
        plan_path = work / plans[0]
        plan = BuildPlan.load(plan_path)
        start = time.perf_counter()
        builder = _python_builder()
        if builder is not None:
            report = dict(builder(plan_path, progress=lambda message: None) or {})
            report.setdefault("builder", "evit_deploy.trt.build")
        else:
            report = _trtexec_build(plan, plan_path, timeout=float(options.get("timeout", 3600)))
        engine = work / plan.engine
        if not engine.is_file():
            raise ToolchainError(f"the build finished but wrote no {plan.engine} on the device")
        files = [plan.engine] + ([plan.layer_info] if (work / plan.layer_info).is_file() else [])
        for stray in [p for p in work.iterdir() if p.name not in files]:
            shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(work, dest)
        return {"dir": str(dest), "files": files, "report": report, "seconds": round(time.perf_counter() - start, 2),
                "tensorrt": tensorrt_version(), "gpus": gpus(), "state": device_state()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _trtexec_build(plan: Any, plan_path: Path, timeout: float) -> dict[str, Any]:
    from evit_deploy.trt.plan import trtexec_argv

    trtexec = find_trtexec()
    if trtexec is None:
        raise RuntimeMissing("no TensorRT builder on the device: neither evit's (pip install 'evit-deploy[tensorrt]') "
                             "nor trtexec (JetPack: /usr/src/tensorrt/bin/trtexec) is installed")
    argv = [trtexec, *trtexec_argv(plan)[1:]]
    try:
        done = subprocess.run(argv, cwd=plan_path.parent, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"trtexec did not finish within {timeout:g} s on the device") from None
    if done.returncode != 0:
        raise ToolchainError(f"trtexec failed on the device (exit {done.returncode}): {_cause(done.stdout + done.stderr)}")
    report: dict[str, Any] = {"builder": "trtexec", "command": argv[1:]}
    if importlib.util.find_spec("evit_deploy.trt.inspect") is not None and (plan_path.parent / plan.layer_info).is_file():
        check = subprocess.run([sys.executable, "-m", "evit_deploy.trt.inspect", plan_path.name, plan.layer_info],
                               cwd=plan_path.parent, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=600, check=False)
        last = ([line for line in (check.stdout + check.stderr).splitlines() if line.strip()] or [""])[-1]
        report["layer_check"] = {"passed": check.returncode == 0, "summary": last}
        if check.returncode == 1:
            raise CheckFailed(f"the engine built on the device breaks its plan: {last}")
    return report


def _cause(output: str) -> str:
    """The line that says why trtexec failed: the builder's first coded error, else its last line.

    trtexec ends a failed run with a summary (``[E] Engine set up failed``, ``&&&& FAILED
    TensorRT.trtexec ...``) after follow-on errors (``Assertion enginePtr != nullptr``); the first
    ``Error Code N: ...`` line names the cause.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    coded = [line for line in lines if "Error Code" in line]
    return coded[0] if coded else (lines or [""])[-1]
