"""Where evit's data folders (``models/``, ``export_configs/``) live.

They sit at the repository root, where users read and edit them; ``evit_deploy/models``
and ``evit_deploy/export_configs`` are symlinks to them, so a wheel ships them inside
the package and an editable install finds them through the same path.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """``evit_deploy/<name>``: the model cards or the shipped recipes."""
    return _PACKAGE_DIR / name
