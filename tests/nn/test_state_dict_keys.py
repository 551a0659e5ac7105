"""Our module tree has exactly the official parameter names, order and shapes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from evit_deploy.nn import BACKBONES, BUILDERS, build_model, norm_eps_for

from .conftest import builder_of_key_file, key_files, read_keys


def _diff(got: list[tuple[str, list[int]]], want: list[tuple[str, list[int]]], limit: int = 5) -> str:
    lines = [f"{len(got)} keys built, {len(want)} expected"]
    for i, (g, w) in enumerate(itertools.zip_longest(got, want)):
        if g != w:
            lines.append(f"  [{i}] got {g}, expected {w}")
            if len(lines) > limit:
                break
    return "\n".join(lines)


def test_key_names_order_and_shapes(key_file: Path) -> None:
    builder, kwargs = builder_of_key_file(key_file)
    with torch.device("meta"):  # shapes only: no time spent initialising 250M parameters
        model = build_model(builder, norm_eps=norm_eps_for(builder), **kwargs)
    got = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    want = read_keys(key_file)
    assert got == want, _diff(got, want)


def test_every_builder_has_a_key_file() -> None:
    covered = {builder_of_key_file(p)[0] for p in key_files()}
    assert covered == set(BUILDERS)


def test_liteMLA_eps_is_not_a_state_dict_key() -> None:
    with torch.device("meta"):
        model = build_model("efficientvit_cls_b0", norm_eps=1e-5)
    assert not [k for k in model.state_dict() if k.endswith("eps")]


@pytest.mark.parametrize("model", ["l0", "l1", "l2", "xl0", "xl1"])
def test_large_backbones_match_sam_image_encoders(reference_dir: Path, model: str) -> None:
    """SAM-L reuses the L backbones; L0 and the six-stage XL backbones exist only in SAM."""
    prefix = "image_encoder.backbone."
    want = [
        (name[len(prefix) :], shape)
        for name, shape in read_keys(reference_dir / f"state_dict_keys/efficientvit_sam_{model}.txt")
        if name.startswith(prefix)
    ]
    with torch.device("meta"):
        backbone = BACKBONES[f"efficientvit_backbone_{model}"]()
    got = [(name, list(t.shape)) for name, t in backbone.state_dict().items()]
    assert got == want, _diff(got, want)
