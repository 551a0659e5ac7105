"""cuda-python's runtime bindings, found under either of their layouts, and their error convention."""
from __future__ import annotations

from typing import Any

from evit_deploy.errors import RuntimeMissing

_CUDART: Any = None


def cudart() -> Any:
    """cuda-python's runtime module (12.x/13.x layout first, then the pre-12.6 one)."""
    global _CUDART
    if _CUDART is None:
        try:
            from cuda.bindings import runtime as module
        except ImportError:
            try:
                from cuda import cudart as module  # type: ignore[no-redef]
            except ImportError:
                raise RuntimeMissing("cuda-python is not installed; pip install 'evit-deploy[tensorrt]'") from None
        _CUDART = module
    return _CUDART


def check(result: Any) -> Any:
    """cuda-python calls return (error, *values): raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    rt = cudart()
    if err != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error {getattr(err, 'name', err)} ({int(err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
