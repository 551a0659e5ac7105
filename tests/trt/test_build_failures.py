"""`python -m evit_deploy.trt.build PLAN` reports TensorRT's failures in one line (issue 20 item 4).

TensorRT cannot be installed here (its wheels download their libraries from pypi.nvidia.com), so
these run the real command in a subprocess against ``tests/fakes/tensorrt``, which does only what
TensorRT's bindings do in the two failures (see its docstring for the quoted sources): no usable
GPU (pybind11's nullptr TypeError after TensorRT's CUDA warnings) and a build that returns None.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evit_deploy.trt.plan import BuildPlan

FAKES = Path(__file__).resolve().parents[1] / "fakes"
REPO = Path(__file__).resolve().parents[2]


def _plan(folder: Path, **changes: object) -> Path:
    onnx = folder / "m.onnx"
    onnx.write_bytes(b"stands for the typed ONNX")
    from evit_deploy.manifest import sha256_path

    fields = {"model": "m", "task": "segmentation", "precision": "fp16", "trt_version": "10", "trt_major": 10,
              "typing": "strong", "onnx": onnx.name, "onnx_sha256": sha256_path(onnx), "engine": "m.engine",
              "layer_info": "m.layers.json", "timing_cache": "m.timing"}
    plan = BuildPlan(**{**fields, **changes})
    plan.save(folder / "m.trt-plan.json")
    return folder / "m.trt-plan.json"


def _build(plan: Path, mode: str, version: str = "10.3.0") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{FAKES}{os.pathsep}{REPO}", "EVIT_FAKE_TRT": mode,
           "EVIT_FAKE_TRT_VERSION": version}
    return subprocess.run([sys.executable, "-m", "evit_deploy.trt.build", str(plan)], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_no_gpu_is_one_line_and_exit_2(tmp_path):
    done = _build(_plan(tmp_path), "no-gpu")
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert line.startswith("error: TensorRT 10.3.0 cannot create its builder here (CUDA initialization failure with "
                           "error: 35."), line
    assert "--plan-only" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "m.engine").exists()


def test_a_failed_build_is_a_toolchain_failure_with_tensorrts_error(tmp_path):
    done = _build(_plan(tmp_path), "build-fails")
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 3, done.stderr
    assert line.startswith("error: TensorRT 10.3.0 could not build the engine: IBuilder::buildSerializedNetwork: "
                           "Error Code 10: Internal Error (Could not find any implementation"), line
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.timing").exists()


@pytest.mark.parametrize("version,accepted", [("11.3.0", False), ("11.4.0", False), ("11.4.1", True)])
def test_dla_on_tensorrt_11_needs_11_4_1(tmp_path, version, accepted):
    """Issue 20 item 5: 11.0-11.4.0 have no DLA; 11.4.1 brings it back (JetPack 7.2.2+, AGX Orin)."""
    plan = _plan(tmp_path, trt_version="11", trt_major=11, platform="jetson", dla_core=0)
    done = _build(plan, "build-fails", version)
    (line,) = done.stderr.strip().splitlines()
    if accepted:  # past the version check: the fake has no DLA core, as a machine without one
        assert done.returncode == 2 and "--dla-core 0: this device has 0 DLA core(s)" in line, line
    else:
        assert done.returncode == 2 and f"TensorRT {version} has no DLA" in line and "11.4.1" in line, line


def test_the_plans_major_must_be_installed(tmp_path):
    done = _build(_plan(tmp_path), "build-fails", version="11.1.0")
    (line,) = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert "the plan targets TensorRT 10 but TensorRT 11.1.0 is installed" in line
    assert "pip install 'evit-deploy[tensorrt]'" in line
