"""TensorRT wheel, cuda-python and driver must agree on the CUDA major (issue 20 items 1 and 2).

cuda-python is real here (the ``tensorrt`` extra's 12.x bindings); this machine has no NVIDIA
driver, which is what cuda-python reports on it (cudaDriverGetVersion: 0, every other call:
cudaErrorInsufficientDriver). The driver numbers in the pure cases are cudaDriverGetVersion's
encoding (12040 = CUDA 12.4); the floors are NVIDIA's minor-version-compatibility table (CUDA 12:
Linux 525.60.13, CUDA 13: 580.65.06).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from evit_deploy.trt.stack import DRIVER_FLOORS, EXTRAS, mismatch

REPO = Path(__file__).resolve().parents[2]


def test_cuda_13_bindings_on_a_cuda_12_driver_name_the_fix():
    line = mismatch(None, "13.0.3", 12040)
    assert line.startswith("cuda-python 13.0.3 needs a driver for CUDA 13 (Linux 580.65.06 or newer)")
    assert "this driver supports CUDA 12.4" in line and "pip install 'cuda-python>=12,<13'" in line
    assert "'evit-deploy[tensorrt]'" in line


def test_wheel_and_bindings_of_different_majors():
    assert mismatch(12, "13.4.4", 13000).startswith("the TensorRT wheel is built for CUDA 12 but cuda-python 13.4.4")
    assert mismatch(13, "13.4.4", 13000) is None and mismatch(12, "12.9.10", 12090) is None


def test_a_driver_too_old_for_any_wheel_and_none_at_all():
    assert "update the driver to 525.60.13 or newer" in mismatch(None, "12.9.10", 11080)
    assert mismatch(None, "12.9.10", 0) == "no NVIDIA driver is loaded here (cudaDriverGetVersion reports none)"
    assert mismatch(None, None, None) is None  # JetPack's system bindings, nothing to compare


def test_extras_pin_one_tensorrt_major_and_one_cuda_major():
    """Item 1: the default extra is the major `--trt-version` defaults to; item 2: every extra pairs the
    TensorRT wheel with cuda-python of the same CUDA major."""
    from evit_deploy.trt.options import TrtOptions

    tomllib = pytest.importorskip("tomllib", reason="tomllib arrived in Python 3.11")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert EXTRAS[(int(TrtOptions().trt_version), 12)] == "tensorrt"
    for (trt_major, cuda), name in EXTRAS.items():
        assert sorted(extras[name]) == sorted([f"tensorrt-cu{cuda}>={trt_major},<{trt_major + 1}",
                                               f"cuda-python>={cuda},<{cuda + 1}"])
        assert cuda in DRIVER_FLOORS


def test_no_driver_here_is_said_as_such():
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python (the tensorrt extra) is not installed")
    from evit_deploy.trt.cuda import cudart
    from evit_deploy.trt.stack import cuda_unavailable

    if cudart().cudaDriverGetVersion()[1]:
        pytest.skip("an NVIDIA driver is loaded here")
    assert cuda_unavailable() == "no NVIDIA driver is loaded here (cudaDriverGetVersion reports none)"
