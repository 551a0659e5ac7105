"""An exported artifact opened for use: its checked manifest, its target, and runners for it.

``open_artifact`` is the one door through which ``verify``, ``profile``, ``eval`` and the
device worker reach an artifact: it refuses files without a manifest, files changed since
export, and shapes the artifact cannot take, each in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evit_deploy.contracts import ArtifactFacts, Runner
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.manifest import Manifest, load_manifest, manifest_path_for
from evit_deploy.spec import InputSpec
from evit_deploy.targets.base import Target, get_target


@dataclass
class ArtifactHandle:
    """An artifact with its manifest and target, checked and ready to run."""

    path: Path
    manifest: Manifest
    target: Target

    @property
    def spec(self) -> InputSpec:
        return self.manifest.input

    def runner(self, *, device: str = "cpu", threads: int | None = None) -> Runner:
        reason = self.target.runtime_available(device)
        if reason is not None:
            raise RuntimeMissing(f"cannot run {self.path.name} here: {reason}")
        return self.target.runner(self.manifest, self.path, device=device, threads=threads)

    def run_spec(self, resolution: tuple[int, int] | None = None, batch: int | None = None) -> InputSpec:
        """The input to run at: the export's, or another size/batch where the artifact is dynamic."""
        spec = self.spec
        height, width = resolution or (spec.height, spec.width)
        new_batch = batch or spec.batch
        if not spec.dynamic and ((height, width) != (spec.height, spec.width) or new_batch != spec.batch):
            raise UsageError(
                f"{self.path.name} was exported with a static input {spec.batch}x3x{spec.height}x{spec.width}; "
                "re-export with --dynamic (and --batch) to run other shapes"
            )
        return spec.with_resolution(height, width, new_batch)


def open_artifact(path: str | Path) -> ArtifactHandle:
    """Load and check an artifact's manifest (refusing incomplete, modified or contradicted ones)."""
    artifact = Path(path)
    manifest = load_manifest(artifact)
    handle = ArtifactHandle(artifact, manifest, get_target(manifest.target))
    contradictions = _contradictions(manifest, handle.target.facts(manifest, artifact))
    if contradictions:
        raise UsageError(f"{manifest_path_for(artifact).name} contradicts {artifact.name}: "
                         f"{'; '.join(contradictions)}; the manifest was edited after export: re-export the artifact")
    return handle


def _contradictions(manifest: Manifest, facts: ArtifactFacts) -> list[str]:
    """Each place the manifest disagrees with the zoo card it names or with the artifact itself."""
    from evit_deploy import zoo

    found = []
    card = zoo.get_card(manifest.model)
    if card.task != manifest.task:
        found.append(f"model {manifest.model} is a {card.task} model, the manifest says task {manifest.task}")
    if facts.task is not None and facts.task != manifest.task:
        found.append(f"task says {manifest.task}, the artifact was exported for {facts.task}")
    if facts.precision is not None and facts.precision != manifest.precision:
        found.append(f"precision says {manifest.precision}, the artifact is {facts.precision}")
    declared = [_static(t.shape) for t in manifest.inputs]
    actual = [_static(t.shape) for t in facts.inputs]
    if actual and declared and not all(_agree(a, d) for a, d in zip(actual, declared)):
        found.append(f"inputs say {declared}, the artifact takes {actual}")
    spec = manifest.input
    if manifest.graph is None and manifest.inputs and not spec.dynamic:
        first = manifest.inputs[0]
        shape = _in_layout(spec.shape, first.layout)
        if not _agree(_static(first.shape), list(shape)):
            found.append(f"input says {spec.batch}x3x{spec.height}x{spec.width}, the artifact takes "
                         f"{'x'.join(str(d) for d in first.shape)} ({first.layout})")
    return found


def _static(shape: tuple[int | None, ...]) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def _agree(a: list[int | None], b: list[int | None]) -> bool:
    """Same rank, and the same size wherever both are fixed."""
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _in_layout(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """An NCHW shape in ``layout``."""
    return (shape[0], shape[2], shape[3], shape[1]) if layout == "NHWC" and len(shape) == 4 else shape
