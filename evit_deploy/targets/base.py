"""The one interface every deployment target implements.

A target turns a PyTorch module into files (``Target.export``) and loads those files
back as a ``Runner``. ``verify`` and ``profile`` only ever talk to Runners, so adding
a target means adding one module to this package and nothing else: modules here are
discovered and registered on first use.
"""
from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec, Layout, TensorInfo, to_layout

if TYPE_CHECKING:  # torch stays out of runner imports: devices run artifacts without it
    import torch
    from typing_extensions import Self

    from evit_deploy.artifact import Manifest
    from evit_deploy.configs import Recipe


class TargetOptions(BaseModel):
    """Per-target recipe options; each target subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class ExportContext:
    """What a target's export needs besides the module: where to write, what to report."""

    model_name: str
    task: str
    classes: list[str]
    workdir: Path  # a private staging folder; the caller moves results into place
    calibration: Callable[[InputSpec], list[np.ndarray]] | None = None
    progress: Callable[[str], None] = lambda message: None


@dataclass
class ExportOutput:
    """The files a target wrote into ``workdir`` (the first is the primary artifact)."""

    files: list[Path]
    converter: dict[str, str] = field(default_factory=dict)  # package -> version
    outputs: list[TensorInfo] = field(default_factory=list)
    inputs: list[TensorInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # target-specific manifest section


@dataclass
class LayerTiming:
    """One row of a per-operator profile."""

    name: str
    op_type: str
    total_ms: float
    calls: int
    share: float  # of the summed operator time


class Runner(ABC):
    """Loads an artifact and maps named arrays to named arrays.

    Subclasses implement ``load``, ``infer`` and declare ``inputs``/``outputs``;
    ``run`` converts from and to evit's canonical layout (NCHW) so callers never
    special-case a runtime.
    """

    backend: ClassVar[str] = "runner"

    def __init__(self) -> None:
        self.inputs: list[TensorInfo] = []
        self.outputs: list[TensorInfo] = []

    @abstractmethod
    def load(self) -> None:
        """Load the artifact; called once by ``__enter__``."""

    @abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on arrays already in this runner's declared layouts and dtypes."""

    def close(self) -> None:
        """Release the runtime's resources."""

    def describe(self) -> dict[str, Any]:
        """Which runtime ran, for reports (name, version, device, options)."""
        return {"backend": self.backend}

    def per_layer(self, feed: dict[str, np.ndarray], iters: int) -> list[LayerTiming]:
        raise UsageError(f"--per-layer is not supported by the {self.backend} runner")

    def __enter__(self) -> Self:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, feed: dict[str, np.ndarray], layout: Layout = "NCHW") -> dict[str, np.ndarray]:
        """Canonical arrays -> this runner's layouts and dtypes."""
        prepared = {}
        for info in self.inputs:
            if info.name not in feed:
                raise UsageError(f"input {info.name!r} missing; the artifact takes {[i.name for i in self.inputs]}")
            array = to_layout(feed[info.name], layout, info.layout)
            prepared[info.name] = array.astype(info.dtype, copy=False)
        return prepared

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Canonical (NCHW, float32) in, canonical out."""
        raw = self.infer(self.prepare(feed))
        layouts = {o.name: o.layout for o in self.outputs}
        return {
            name: to_layout(np.asarray(value), layouts.get(name, "NCHW"), "NCHW").astype(np.float32, copy=False)
            for name, value in raw.items()
        }


class Target(ABC):
    """A deployment format: how to write it and how to run it."""

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    options_model: ClassVar[type[TargetOptions]] = TargetOptions
    description: ClassVar[str] = ""
    requires: ClassVar[str] = ""  # what to install or have, for the README/`evit targets` table

    @abstractmethod
    def available(self) -> str | None:
        """None when this target can export here, else the reason it cannot."""

    def runtime_available(self, device: str = "cpu") -> str | None:
        """None when artifacts of this target can run here, else the reason."""
        return self.available()

    def timing_available(self, device: str = "cpu") -> str | None:
        """None when ``profile`` can time artifacts of this target here, else the reason.

        A target may run (``verify``) where its timings mean nothing, e.g. Core ML through a
        numpy MIL interpreter on Linux; ``profile`` asks this before timing anything.
        """
        return None

    @abstractmethod
    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        """Write the artifact's files into ``ctx.workdir``."""

    @abstractmethod
    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        """A Runner for an exported artifact (not yet loaded)."""

    def check_recipe(self, recipe: Recipe) -> None:
        """Refuse recipe combinations this target cannot honour (raise UsageError)."""
        if recipe.precision not in self.precisions:
            raise UsageError(
                f"target {self.name!r} does not support precision {recipe.precision!r}; "
                f"choose one of {', '.join(self.precisions)}"
            )


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


_REGISTRY: dict[str, type[Target]] = {}
_ALIASES: dict[str, str] = {}


def register(*aliases: str) -> Callable[[type[Target]], type[Target]]:
    """Class decorator: make a target known under its ``name`` and any aliases."""

    def wrap(cls: type[Target]) -> type[Target]:
        _REGISTRY[cls.name] = cls
        for alias in aliases:
            _ALIASES[alias] = cls.name
        return cls

    return wrap


def _discover() -> None:
    import evit_deploy.targets as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def all_targets() -> dict[str, type[Target]]:
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_target(name: str) -> Target:
    targets = all_targets()
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in targets:
        raise UsageError(f"unknown target {name!r}; choose one of {', '.join(targets)}")
    return targets[key]()


def target_for_file(path: Path) -> Target:
    """The target whose artifacts end like ``path`` (used when no manifest says)."""
    name = path.name.lower()
    for cls in all_targets().values():
        if any(name.endswith(ext) for ext in cls.extensions):
            return cls()
    raise UsageError(f"{path}: not an artifact evit knows (extension {path.suffix!r})")
