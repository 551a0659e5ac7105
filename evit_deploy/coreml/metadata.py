"""What an ``.mlpackage`` written by evit says about itself: its metadata and its own inputs."""
from __future__ import annotations

from pathlib import Path

from evit_deploy.contracts import ArtifactFacts
from evit_deploy.errors import UsageError
from evit_deploy.spec import TensorInfo


def read_facts(path: Path) -> ArtifactFacts:
    """The task, precision and inputs in the ML program's description (no runtime, no torch)."""
    from evit_deploy.mil import load_program

    try:
        program = load_program(path)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"{path.name}: not a Core ML package evit can read ({err}); re-export it") from None
    inputs = [TensorInfo(name, tuple(ttype.shape)) for name, ttype in program.inputs]
    return ArtifactFacts(task=program.metadata.get("evit.task"), precision=program.metadata.get("evit.precision"),
                         inputs=inputs)
