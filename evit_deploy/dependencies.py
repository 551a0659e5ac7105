"""One dependency probe and one version lookup, shared by every backend and target.

Optional dependencies are never imported to find out whether they exist: ``find_spec``
answers without running a converter's (slow, chatty) import.
"""
from __future__ import annotations


def missing_modules(install_hint: str, *modules: str, names: dict[str, str] | None = None) -> str | None:
    """None when every module can be imported, else one line naming what to install."""
    import importlib.util

    absent = []
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                absent.append(module)
        except (ImportError, ValueError):  # a parent package missing, or sys.modules[name] = None
            absent.append(module)
    if not absent:
        return None
    shown = ", ".join((names or {}).get(m, m) for m in absent)
    return f"{shown} {'is' if len(absent) == 1 else 'are'} not installed; {install_hint}"


def package_versions(*packages: str) -> dict[str, str]:
    """Installed versions of the given distributions, for the manifest (absent ones left out)."""
    from importlib import metadata

    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def first_version(*packages: str) -> str | None:
    """The version of the first of ``packages`` installed (one runtime ships under several names)."""
    from importlib import metadata

    for package in packages:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return None
