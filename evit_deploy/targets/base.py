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
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar, cast

from evit_deploy.accuracy_control import ControlOptions, check_control
from evit_deploy.configs import validate_options
from evit_deploy.contracts import ArtifactFacts, ExportContext, ExportOutput, Runner, TargetOptions
from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec, Precision

if TYPE_CHECKING:  # torch stays out of runner imports: devices run artifacts without it
    import torch

    from evit_deploy.configs import Recipe
    from evit_deploy.manifest import Manifest

OptionsT = TypeVar("OptionsT", bound=TargetOptions)


class Target(ABC, Generic[OptionsT]):
    """A deployment format: how to write it and how to run it.

    ``Target[XOptions]`` with ``options_model = XOptions``: ``options(recipe)`` validates the
    recipe's ``options`` section once, against that model, for every target.
    """

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]]
    precisions: ClassVar[tuple[Precision, ...]] = (Precision.FP32,)
    options_model: ClassVar[type[TargetOptions]] = TargetOptions
    description: ClassVar[str] = ""
    requires: ClassVar[str] = ""
    builds_on_device: ClassVar[bool] = False  # with export --device: the artifact is made on the device itself  # what to install or have, for the README/`evit targets` table

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

    def native_timing(self, device: str = "cpu") -> str | None:
        """None when a profile on ``device`` times the runtime this target deploys to, else why not.

        Stricter than ``timing_available``: ``profile`` may time a stand-in (TensorRT's typed ONNX
        on ONNX Runtime), but a benchmark must not put such a figure in a target's latency column.
        """
        return self.timing_available(device)

    def options_for_here(self) -> dict[str, object]:
        """Target options that let this machine export without the target's hardware (TensorRT
        without a GPU: the plan only); empty when the defaults already can."""
        return {}

    @abstractmethod
    def export(self, model: torch.nn.Module, spec: InputSpec, recipe: Recipe, ctx: ExportContext) -> ExportOutput:
        """Write the artifact's files into ``ctx.workdir``."""

    @abstractmethod
    def runner(self, manifest: Manifest, path: Path, *, device: str = "cpu", threads: int | None = None) -> Runner:
        """A Runner for an exported artifact (not yet loaded)."""

    def facts(self, manifest: Manifest, path: Path) -> ArtifactFacts:
        """What the artifact itself says (embedded metadata, its inputs), to hold against its manifest."""
        return ArtifactFacts()

    def options(self, recipe: Recipe, origin: str = "recipe") -> OptionsT:
        """The recipe's target options, validated against ``options_model`` (UsageError naming the field
        and ``origin``: a recipe file, or the manifest an artifact was recorded with)."""
        return cast(OptionsT, validate_options(recipe, self.options_model, origin))

    def check_recipe(self, recipe: Recipe) -> None:
        """Refuse recipe combinations this target cannot honour (raise UsageError)."""
        if recipe.precision not in self.precisions:
            raise UsageError(
                f"target {self.name!r} does not support precision '{recipe.precision}'; "
                f"choose one of {', '.join(self.precisions)}"
            )
        options = self.options(recipe)
        if isinstance(options, ControlOptions):  # int8 accuracy control: the same rules on every target
            check_control(recipe, options)

    def check_dims(self, recipe: Recipe, dims: dict[str, tuple[int, int]]) -> None:
        """Refuse options that name dynamic dims the exported graphs lack (``dims``: the named dims of
        inputs no image feeds, each with the range the model takes); most targets name none."""


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
