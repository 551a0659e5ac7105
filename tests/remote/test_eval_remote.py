"""`evit eval --device NAME`: the artifact runs on the device, images and the PyTorch reference stay here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _cityscapes(root: Path, count: int = 2) -> Path:
    """A tiny Cityscapes layout: random frames, labels of a few label ids (some ignored)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        image = root / "leftImg8bit" / "val" / "ulm" / f"ulm_{i:06d}_000019_leftImg8bit.png"
        label = root / "gtFine" / "val" / "ulm" / f"ulm_{i:06d}_000019_gtFine_labelIds.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)).save(image)
        Image.fromarray(rng.choice(np.array([0, 7, 8, 11, 21, 23, 26], dtype=np.uint8), (128, 256))).save(label)
    return root


def test_eval_on_device_equals_eval_here(cli, inventory, onnx_artifact, tmp_path):
    data = _cityscapes(tmp_path / "cityscapes")
    here = cli("eval", onnx_artifact, "--data", data, "--json", tmp_path / "here.json")
    there = cli("eval", onnx_artifact, "--data", data, "--device", "loop", "--inventory", inventory(),
                "--json", tmp_path / "there.json")
    assert here.code == 0 and there.code == 0, (here, there)
    local, remote = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("here", "there"))
    assert remote["runner"]["remote"]["device"] == "loop" and "remote" not in local["runner"]
    assert remote["artifact"]["metrics"] == local["artifact"]["metrics"]  # same runtime, same tensors
    assert remote["reference"]["metrics"] == local["reference"]["metrics"]
