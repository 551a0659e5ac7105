"""Reading the user's own text and YAML files (recipes, inventories) with one-line errors.

A recipe saved by a Windows editor in UTF-16 or Latin-1, or a file without read permission, is
input the user can fix: it must never surface as a ``UnicodeDecodeError`` traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evit_deploy.errors import UsageError


def read_text(path: Path, what: str) -> str:
    """``path`` decoded as UTF-8 (a byte-order mark is allowed); ``what`` names it in messages."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: the {what} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                         "save it as UTF-8") from None


def load_yaml(path: Path, what: str) -> Any:
    """``yaml.safe_load`` of a UTF-8 file; malformed or absurdly nested YAML is one line, not a traceback."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{path}: the {what} is not valid YAML ({first})") from None
    except RecursionError:
        raise UsageError(f"{path}: the {what} nests too deeply to read; is it the right file?") from None
