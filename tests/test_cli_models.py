"""``evit models`` and ``evit models show``."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evit_deploy.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


def test_list_table() -> None:
    result = invoke("models")
    assert result.exit_code == 0, result.output
    for expected in ("efficientvit-b0-r224", "efficientvit-l3-r384", "efficientvit-seg-l2-ade20k",
                     "1024x2048", "9.1M", "0.519G", "396G", "top-1 79.39", "mIoU 80.55"):
        assert expected in result.stdout
    assert result.stdout.index("efficientvit-b1-r224") < result.stdout.index("efficientvit-seg-b0-cityscapes")


def test_list_json() -> None:
    result = invoke("models", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert len(rows) == 37
    b1 = next(r for r in rows if r["name"] == "efficientvit-b1-r224")
    assert b1 == {"name": "efficientvit-b1-r224", "task": "classification", "family": "B", "variant": "b1",
                  "dataset": "imagenet", "input_size": [224, 224], "params": 9102024, "macs": b1["macs"],
                  "published": {"top1": 79.39, "top5": 94.346, "miou": None, "coco_map": None, "lvis_map": None,
                                "params": "9.1M", "macs": "0.52G", "source": "R"},
                  "checkpoint": "efficientvit_b1_r224.pt",
                  "checkpoint_url": "https://huggingface.co/han-cai/efficientvit-cls/resolve/main/efficientvit_b1_r224.pt",
                  "graphs": []}
    assert abs(b1["macs"] / 0.52e9 - 1) < 0.05


def test_list_filters() -> None:
    seg = json.loads(invoke("models", "--task", "seg", "--json").stdout)
    assert len(seg) == 11 and {r["task"] for r in seg} == {"segmentation"}
    ade = json.loads(invoke("models", "--dataset", "ade20k", "--json").stdout)
    assert [r["name"] for r in ade] == [f"efficientvit-seg-{v}-ade20k" for v in ("b1", "b2", "b3", "l1", "l2")]
    sam = json.loads(invoke("models", "--task", "sam", "--json").stdout)
    assert [r["name"] for r in sam] == [f"efficientvit-sam-{v}" for v in ("l0", "l1", "l2", "xl0", "xl1")]
    assert json.loads(invoke("models", "--dataset", "sa-1b", "--json").stdout) == sam
    bad = invoke("models", "--task", "detection")
    assert bad.exit_code == 2 and "error: unknown task 'detection'; choose cls, seg or sam" in bad.stderr


def test_sam_rows_and_json() -> None:
    result = invoke("models")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "efficientvit-sam-xl0" in line)
    assert row.split() == ["efficientvit-sam-xl0", "sam", "1024x1024", "117M", "185G", "COCO", "mAP", "47.5"]
    l0 = next(r for r in json.loads(invoke("models", "--json").stdout) if r["name"] == "efficientvit-sam-l0")
    assert (l0["family"], l0["dataset"], l0["graphs"], l0["published"]["lvis_map"]) == ("L", "sa-1b",
                                                                                       ["encoder", "decoder"], 41.8)
    assert l0["macs"] == 34_774_974_464  # the image encoder at 512x512, as published (35G)


def test_show_sam() -> None:
    result = invoke("models", "show", "efficientvit-sam-xl1")
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    expected_parts = [
        "family / variant XL / xl1", "dataset sa-1b", "long side -> 1024, zero pad bottom/right to 1024x1024",
        "prompt frame 1024x1024",
        "graph encoder input_image [batch, 3, 1024, 1024] -> image_embeddings [batch, 256, 64, 64]",
        "has_mask_input [num_prompts] (--mask-input)", "options --single-mask, --mask-input",
        "1.81G MACs at image_embeddings [1, 256, 64, 64], point_coords [1, 2, 2]",
        "efficientvit_sam_xl1.pt (also released as xl1.pt)", "322G at 1024x1024 (encoder) counted",
        "COCO 47.8, LVIS 44.4 [R]",
    ]
    for expected in expected_parts:
        assert expected in out, expected
    assert "classes" not in out and "output" not in out.replace("outputs", "")
    card = json.loads(invoke("models", "show", "efficientvit-sam-l0", "--json").stdout)
    assert card["num_classes"] is None and card["classes"] is None and card["output_shape"] is None
    assert card["computed"]["graphs"]["decoder"]["inputs"]["point_labels"] == [1, 2]
    at = json.loads(invoke("models", "show", "efficientvit-sam-l0", "--input-size", "1024", "--json").stdout)
    assert at["macs_at"]["macs"] > 2.5 * card["computed"]["graphs"]["encoder"]["macs"]  # the encoder, at 4x pixels


def test_show() -> None:
    result = invoke("models", "show", "efficientvit-seg-b1-cityscapes")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in ("segmentation", "B / b1", "19: road, sidewalk, building", "1024x2048 (HxW)",
                     "resize to 1024x2048", "logits [1, 19, 128, 256]", ("efficientvit_seg_b1(dataset='cityscapes'), "
                     "norm eps 1e-05"), "efficientvit_seg_b1_cityscapes.pt", "4,803,443 counted", "published 4.8M",
                     "25.1G at 1024x2048", "published 25G", "mIoU 80.547", ("24.3 ms on jetson-agx-orin (tensorrt fp16, "
                     "bs1) [R]"), "819 ms on jetson-nano"):
        assert expected in out, expected


def test_show_json_has_every_field() -> None:
    result = invoke("models", "show", "efficientvit-b1-r288", "--json")
    assert result.exit_code == 0
    card = json.loads(result.stdout)
    assert set(card) >= {"name", "task", "family", "variant", "dataset", "builder", "builder_kwargs", "norm_eps",
                         "num_classes", "classes", "classes_file", "input_size", "preprocessing", "checkpoint",
                         "output", "published", "computed", "output_shape"}
    assert len(card["classes"]) == 1000 and card["preprocessing"]["resize_shorter"] == 304
    assert card["published"]["latency"][0] == {"device": "jetson-nano", "runtime": "tensorrt", "precision": "fp16",
                                               "batch": 1, "value": 34.5, "unit": "ms", "source": "R"}


def test_show_counts_macs_at_another_size() -> None:
    result = invoke("models", "show", "efficientvit-seg-b0-cityscapes", "--input-size", "512x1024", "--json")
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["macs_at"]["input_size"] == [512, 1024]
    assert abs(card["macs_at"]["macs"] * 4 / card["computed"]["macs"] - 1) < 0.01  # MACs scale with pixels
    bad = invoke("models", "show", "efficientvit-seg-b0-cityscapes", "--input-size", "big")
    assert bad.exit_code == 2 and "input size 'big' is not HxW" in bad.stderr


@pytest.mark.parametrize(("name", "message"), [
    ("nosuchmodel", "error: unknown model 'nosuchmodel' (evit models lists all)\n"),
    ("efficientvit-l2", ("error: unknown model 'efficientvit-l2'; did you mean: efficientvit-l2-r224, "
                        "efficientvit-l2-r256, efficientvit-l2-r288? (evit models lists all)\n")),
])
def test_show_unknown_model(name: str, message: str) -> None:
    result = invoke("models", "show", name)
    assert result.exit_code == 2
    assert result.stderr == message  # one line, no traceback
    assert result.stdout == ""


def test_evit_models_is_snappy() -> None:
    exe = Path(sys.executable).with_name("evit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from evit_deploy.cli import main; main()"]
    # CPU seconds of the child, not wall time: the bound must hold on a loaded CI machine too
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([*cmd, "models"], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "120"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 0, proc.stderr
    assert "efficientvit-seg-l2-ade20k" in proc.stdout
    assert cpu < 3.0, f"evit models took {cpu:.2f} s of CPU"
    # and it never needed torch
    check = subprocess.run([sys.executable, "-c", ("import sys; from evit_deploy.cli.models import models_app; "
                            "from evit_deploy.zoo import list_cards; list_cards(); print('torch' in sys.modules)")],
                           check=False, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "False", check.stderr
