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
    assert len(rows) == 32
    b1 = next(r for r in rows if r["name"] == "efficientvit-b1-r224")
    assert b1 == {"name": "efficientvit-b1-r224", "task": "classification", "family": "B", "variant": "b1",
                  "dataset": "imagenet", "input_size": [224, 224], "params": 9102024, "macs": b1["macs"],
                  "published": {"top1": 79.39, "top5": 94.346, "miou": None, "params": "9.1M", "macs": "0.52G",
                                "source": "R"},
                  "checkpoint": "efficientvit_b1_r224.pt",
                  "checkpoint_url": "https://huggingface.co/han-cai/efficientvit-cls/resolve/main/efficientvit_b1_r224.pt"}
    assert abs(b1["macs"] / 0.52e9 - 1) < 0.05


def test_list_filters() -> None:
    seg = json.loads(invoke("models", "--task", "seg", "--json").stdout)
    assert len(seg) == 11 and {r["task"] for r in seg} == {"segmentation"}
    ade = json.loads(invoke("models", "--dataset", "ade20k", "--json").stdout)
    assert [r["name"] for r in ade] == [f"efficientvit-seg-{v}-ade20k" for v in ("b1", "b2", "b3", "l1", "l2")]
    bad = invoke("models", "--task", "detection")
    assert bad.exit_code == 2 and "error: unknown task 'detection'; choose cls or seg" in bad.stderr


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
