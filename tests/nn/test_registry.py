"""official_registry() covers exactly the zoo names of the spec (architecture.md, section 11)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evit_deploy.errors import UsageError
from evit_deploy.nn import BUILDERS, build_model, norm_eps_for, official_registry


def _spec_rows(reference_dir: Path) -> dict[str, tuple[str, str, float]]:
    """Zoo name -> (builder, dataset or "", eps) from the cls, seg and SAM tables of section 11.

    Rows may list several names as ``efficientvit-b1-r224 / -r256 / -r288``; SAM builder cells
    read ``efficientvit_sam_l0 (image_size 512)`` (the builder's default, so no kwargs).
    """
    text = (reference_dir / "architecture.md").read_text()
    section = text[text.index("### 11.1") : text.index("## 12.")]
    rows: dict[str, tuple[str, str, float]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("efficientvit-"):
            continue
        call = re.fullmatch(r'(efficientvit_\w+?)(?:\("(\w+)"\)| \(image_size \d+\))?', cells[1])
        assert call, f"unparsed builder cell {cells[1]!r}"
        names = [n.strip() for n in cells[0].split("/")]
        base = names[0].rsplit("-", 1)[0]
        for name in names:
            full = base + name if name.startswith("-") else name
            rows[full] = (call.group(1), call.group(2) or "", float(cells[2]))
    return rows


def test_registry_matches_spec_tables(reference_dir: Path) -> None:
    spec = _spec_rows(reference_dir)
    registry = official_registry()
    assert set(registry) == set(spec), (
        f"missing {sorted(set(spec) - set(registry))}, extra {sorted(set(registry) - set(spec))}"
    )
    for name, (builder, dataset, eps) in spec.items():
        got_builder, kwargs, got_eps = registry[name]
        assert (got_builder, kwargs.get("dataset", ""), got_eps) == (builder, dataset, eps), name
        assert got_builder in BUILDERS


def test_registry_size() -> None:
    # 7 bare classifier names + 21 with a resolution, 11 segmenters, 5 SAM models. (The spec's
    # prose says "30 names: 7 bare + 23"; its table lists 28 classifier names, as does zoo_facts.md.)
    names = official_registry()
    assert sum(not n.startswith(("efficientvit-seg-", "efficientvit-sam-")) for n in names) == 28
    assert sum(n.startswith("efficientvit-seg-") for n in names) == 11
    assert sum(n.startswith("efficientvit-sam-") for n in names) == 5


def test_norm_eps_per_family() -> None:
    assert norm_eps_for("efficientvit_cls_b3") == 1e-5
    assert norm_eps_for("efficientvit_seg_b0") == 1e-5
    assert norm_eps_for("efficientvit_cls_l3") == 1e-7
    assert norm_eps_for("efficientvit_seg_l2") == 1e-7
    # SAM: 1e-6 for every model, including SAM-L whose backbone is an L backbone
    assert {norm_eps_for(f"efficientvit_sam_{m}") for m in ("l0", "l1", "l2", "xl0", "xl1")} == {1e-6}
    assert norm_eps_for("efficientvit_backbone_xl1") == 1e-6


def test_unknown_names_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        build_model("efficientvit_cls_l0", norm_eps=1e-7)
    with pytest.raises(UsageError):
        norm_eps_for("resnet50")
    with pytest.raises(UsageError):
        build_model("efficientvit_seg_b0", norm_eps=1e-5, dataset="ade20k")
