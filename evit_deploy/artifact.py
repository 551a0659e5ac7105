"""An exported artifact opened for use: its checked manifest, its target, and runners for it.

``open_artifact`` is the one door through which ``verify``, ``profile``, ``eval`` and the
device worker reach an artifact: it refuses files without a manifest, files changed since
export, and shapes the artifact cannot take, each in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evit_deploy.contracts import Runner
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.manifest import Manifest, load_manifest
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
    """Load and check an artifact's manifest (refusing incomplete or modified ones)."""
    artifact = Path(path)
    manifest = load_manifest(artifact)
    return ArtifactHandle(artifact, manifest, get_target(manifest.target))
