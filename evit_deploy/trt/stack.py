"""Which TensorRT, cuda-python and NVIDIA driver this machine has, and whether they fit together.

Three pieces each belong to one CUDA major: a TensorRT wheel (``tensorrt-cu12`` or
``tensorrt-cu13``), cuda-python's bindings (12.x or 13.x), and the driver, which must be new
enough for that major (Linux: CUDA 12 needs 525.60.13, CUDA 13 needs 580.65.06; NVIDIA's CUDA
minor-version-compatibility table). When they disagree, every cudart call fails with
``cudaErrorInsufficientDriver``, the same error a machine without any GPU gives, so "no GPU"
would send the user looking in the wrong place. This module names the piece to change.
Nothing here needs a GPU, torch or TensorRT.
"""
from __future__ import annotations

from typing import Any

from evit_deploy.dependencies import first_version
from evit_deploy.errors import RuntimeMissing

# The oldest Linux driver each CUDA major runs on (minor-version compatibility).
DRIVER_FLOORS = {12: "525.60.13", 13: "580.65.06"}
# pyproject extras: (TensorRT major, CUDA major) -> extra. ``tensorrt`` is what the default
# ``--trt-version 10`` builds with, on the CUDA major with the oldest driver floor.
EXTRAS = {(10, 12): "tensorrt", (10, 13): "tensorrt-cu13", (11, 12): "tensorrt11", (11, 13): "tensorrt11-cu13"}


def install_hint(trt_major: int = 10, cuda_major: int = 12) -> str:
    extra = EXTRAS.get((trt_major, cuda_major), "tensorrt")
    return f"pip install 'evit-deploy[{extra}]' on a machine with an NVIDIA GPU (JetPack ships TensorRT on Jetson)"


def import_tensorrt() -> Any:
    """The tensorrt module, or one line saying which extra installs it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeMissing(f"the tensorrt package is not installed; {install_hint()}") from None
    return trt


def tensorrt_wheel_cuda() -> int | None:
    """The CUDA major of the installed TensorRT wheel; None for JetPack's system bindings or none."""
    for major in sorted({cuda for _, cuda in EXTRAS}):
        if first_version(f"tensorrt-cu{major}", f"tensorrt_cu{major}_libs"):
            return major
    return None


def bindings_version() -> str | None:
    """cuda-python's version (its bindings carry the CUDA major they were made for)."""
    return first_version("cuda-bindings", "cuda-python")


def mismatch(trt_cuda: int | None, bindings: str | None, driver: int | None) -> str | None:
    """Why these three cannot work together, or None. ``driver`` is cudaDriverGetVersion's
    number (12040 = CUDA 12.4; 0 = no driver loaded); None where it could not be asked."""
    major = int(bindings.split(".")[0]) if bindings else None
    if trt_cuda is not None and major is not None and major != trt_cuda:
        return (f"the TensorRT wheel is built for CUDA {trt_cuda} but cuda-python {bindings} is for CUDA {major}: "
                f"pip install 'cuda-python>={trt_cuda},<{trt_cuda + 1}'")
    if driver == 0:
        return "no NVIDIA driver is loaded here (cudaDriverGetVersion reports none)"
    if driver is None or major is None or driver // 1000 >= major:
        return None
    have = f"{driver // 1000}.{driver % 1000 // 10}"
    if driver // 1000 not in DRIVER_FLOORS:
        return (f"this driver supports CUDA {have}, older than any TensorRT wheel evit uses (CUDA 12 or newer): "
                f"update the driver to {DRIVER_FLOORS[12]} or newer")
    fit = driver // 1000
    return (f"cuda-python {bindings} needs a driver for CUDA {major} (Linux {DRIVER_FLOORS[major]} or newer) but "
            f"this driver supports CUDA {have}: update the driver, or install the CUDA {fit} builds "
            f"(pip install 'cuda-python>={fit},<{fit + 1}' and TensorRT for CUDA {fit}, e.g. "
            f"'evit-deploy[{EXTRAS[(10, fit)]}]')")


def _driver_version(rt: Any) -> int | None:
    err, version = rt.cudaDriverGetVersion()
    return int(version) if err == rt.cudaError_t.cudaSuccess else None


def cuda_unavailable() -> str | None:
    """None when cuda-python sees a CUDA device; else why not, naming the piece to change."""
    from evit_deploy.trt.cuda import cudart

    try:
        rt = cudart()
    except RuntimeMissing as err:
        return str(err)
    problem = mismatch(tensorrt_wheel_cuda(), bindings_version(), _driver_version(rt))
    if problem:
        return problem
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        return f"no usable CUDA device (cudaGetDeviceCount: {getattr(err, 'name', err)})"
    return None if count else "no CUDA device is visible"


def gpu_name() -> str:
    """The first CUDA device's name, or "" where there is none (informational only)."""
    try:
        from evit_deploy.trt.cuda import check, cudart

        name = check(cudart().cudaGetDeviceProperties(0)).name
    except Exception:  # noqa: BLE001 - no GPU, no driver, no cuda-python: no name
        return ""
    return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


def describe() -> dict[str, Any]:
    """What ``make test-hardware`` prints first: the TensorRT/CUDA stack found here (no GPU needed)."""
    found: dict[str, Any] = {"tensorrt": first_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-lean"),
                             "tensorrt_wheel_cuda": tensorrt_wheel_cuda(), "cuda_python": bindings_version(),
                             "driver_cuda": None, "gpu": "", "problem": cuda_unavailable()}
    try:
        from evit_deploy.trt.cuda import cudart

        driver = _driver_version(cudart())
    except RuntimeMissing:
        return found
    found["driver_cuda"] = f"{driver // 1000}.{driver % 1000 // 10}" if driver else None
    found["gpu"] = gpu_name() if found["problem"] is None else ""
    return found
