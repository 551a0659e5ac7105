"""Where evit's data folders (``models/``, ``export_configs/``) live.

An installed wheel carries them inside the package (``evit_deploy/models``); an
editable install or a source checkout keeps them at the repository root. Both work
without configuration.
"""
from __future__ import annotations

from pathlib import Path

import evit_deploy

_PACKAGE_DIR = Path(evit_deploy.__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent


def data_dir(name: str) -> Path:
    """``evit_deploy/<name>`` when the package ships it, else ``<repo root>/<name>``."""
    packaged = _PACKAGE_DIR / name
    if packaged.is_dir():
        return packaged
    return _REPO_ROOT / name
