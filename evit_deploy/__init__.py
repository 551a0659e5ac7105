"""evit: export, verify and profile EfficientViT models on ONNX Runtime, TensorRT, Core ML and LiteRT.

``export``, ``verify`` and ``profile`` are the same functions the ``evit`` CLI calls.
Importing this package stays cheap (no torch) so runners work on devices without it.
"""
from __future__ import annotations

from typing import Any

__all__ = ["export", "profile", "verify"]


def export(*args: Any, **kwargs: Any) -> Any:
    """See ``evit_deploy.api.export``."""
    from evit_deploy.api import export as _export

    return _export(*args, **kwargs)


def verify(*args: Any, **kwargs: Any) -> Any:
    """See ``evit_deploy.api.verify``."""
    from evit_deploy.api import verify as _verify

    return _verify(*args, **kwargs)


def profile(*args: Any, **kwargs: Any) -> Any:
    """See ``evit_deploy.api.profile``."""
    from evit_deploy.api import profile as _profile

    return _profile(*args, **kwargs)
