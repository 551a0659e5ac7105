"""The PyTorch reference an artifact must match: the zoo model with the weights it was exported from."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from evit_deploy.errors import UsageError
from evit_deploy.manifest import Manifest, sha256_path


def reference_model(manifest: Manifest, weights: str | Path | None) -> tuple[Any, dict[str, Any], list[str]]:
    """The PyTorch module the artifact must match, and notes on where its weights came from."""
    notes: list[str] = []
    recorded = manifest.weights
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"{path}: weights file not found")
        digest = sha256_path(path)
        if recorded.sha256 and digest != recorded.sha256:
            notes.append(
                f"--weights {path.name} (sha256 {digest[:12]}…) differ from the weights the artifact was exported "
                f"from ({recorded.sha256[:12]}…): parity is checked against the given weights"
            )
        elif recorded.sha256 is None:
            notes.append("the artifact was exported from random weights; parity is checked against --weights")
    elif recorded.path is not None:
        path = Path(recorded.path)
        if not path.is_file():
            raise UsageError(f"{path}: the weights the artifact was exported from are gone; pass --weights PATH")
        digest = sha256_path(path)
        if digest != recorded.sha256:
            raise UsageError(
                f"{path}: changed since export (sha256 {digest[:12]}… vs {str(recorded.sha256)[:12]}…); "
                "pass the original file with --weights"
            )
    else:
        path, digest = None, None
    model = quiet_model(manifest.model, path, recorded.seed)
    return model, {"weights": str(path) if path else None, "sha256": digest, "seed": recorded.seed}, notes


def quiet_model(name: str, weights: Path | None, seed: int) -> Any:
    """A zoo model without the random-weights warning: here the seed is recorded, not forgotten."""
    from evit_deploy import zoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return zoo.create_model(name, weights, seed=seed)
