"""The macOS Core ML runner's first contact with a Mac (issue 20 items 16-18), checked where possible here.

coremltools 9.0 is real here. On Linux it has no Core ML framework, so ``MLModel(path)`` returns a
model whose ``__proxy__`` is None and says nothing (coremltools/models/model.py ``_get_proxy_and_spec``);
on a macOS older than the artifact's Core ML specification it does exactly the same, and the first
``predict`` raises ``Exception("The specification has version 9 but the Core ML framework version
installed only supports Core ML model specification version 8 or older.")``. Versions: coremltools'
``_SPECIFICATION_VERSION_IOS_17 = 8`` (macOS 14), ``_IOS_18 = 9`` (macOS 15).
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("coremltools", reason="the Core ML target needs coremltools: pip install 'evit-deploy[coreml]'")

from evit_deploy.coreml.options import SPEC_MACOS
from evit_deploy.coreml.runner import CoreMLRunner, camera_frame, load_refusal
from evit_deploy.errors import RuntimeMissing
from evit_deploy.spec import InputSpec

SEG0 = "efficientvit-seg-b0-cityscapes"
ON_MAC = sys.platform == "darwin"


@pytest.fixture(scope="module")
def ios18(tmp_path_factory) -> Path:
    """An ML program for iOS18/macOS15 (Core ML specification 9), what coreml-palettized targets."""
    from evit_deploy import api

    return api.export(SEG0, target="coreml", out=tmp_path_factory.mktemp("ios18"), resolution=(64, 128),
                      options={"deployment_target": "iOS18"}).artifact


def spec_version(artifact: Path) -> int:
    from evit_deploy.mil.program import read_spec

    return read_spec(artifact).specificationVersion


def test_a_program_newer_than_the_os_is_refused_in_one_line(ios18):
    """Item 16: the refusal names the macOS the artifact needs (engine 8 = macOS 14's Core ML)."""
    assert spec_version(ios18) == 9
    line = load_refusal(ios18.name, spec_version(ios18), 8, "14.6", None)
    assert line.startswith(f"{ios18.name} needs macOS 15 or newer (Core ML specification 9")
    assert "macOS 14.6, whose Core ML reads specification 8 at most" in line and "EVIT_COREML_RUNNER=mil" in line
    assert "\n" not in line


@pytest.mark.skipif(ON_MAC, reason="checks coremltools without a Core ML framework (Linux)")
def test_a_model_coremltools_loaded_without_a_proxy_is_refused(ios18):
    """Item 16 for real: coremltools 9.0 hands back a proxy-less model; the runner refuses at load."""
    spec = InputSpec(batch=1, height=64, width=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    runner = CoreMLRunner(ios18, spec)
    with pytest.raises(RuntimeMissing) as err:
        runner.load()
    assert runner.model.__proxy__ is None  # what coremltools did, silently
    assert str(err.value) == (f"Core ML cannot load {ios18.name} here: coremltools found no Core ML framework "
                              "(it runs on macOS only)")


@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_the_frame_handed_to_core_ml_is_rgb_whatever_the_model_order(color, photo_folder):
    """Item 18: Core ML reorders an RGB frame to the model's color_layout; the runner must hand it RGB."""
    from PIL import Image

    photo = np.asarray(Image.open(photo_folder(("chelsea",)) / "chelsea.png").convert("RGB"))
    spec = InputSpec(batch=1, height=photo.shape[0], width=photo.shape[1], mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), color=color)
    model_order = photo.transpose(2, 0, 1)[::-1] if color == "BGR" else photo.transpose(2, 0, 1)
    x = ((model_order / 255.0 - np.reshape(spec.mean, (3, 1, 1))) / np.reshape(spec.std, (3, 1, 1)))[None]
    np.testing.assert_array_equal(camera_frame(x.astype(np.float32), spec), photo)


def test_gpu_and_neural_engine_get_their_own_fp32_tolerances():
    """Item 17: the CPU's 1e-4 for Core ML on the CPU; fp16-level criteria where fp16 arithmetic runs."""
    from evit_deploy.configs import load_recipe

    spec = InputSpec(batch=1, height=64, width=128, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert CoreMLRunner(Path("m.mlpackage"), spec, compute_units="cpu_only").tolerance_profile is None
    assert CoreMLRunner(Path("m.mlpackage"), spec, compute_units="cpu_and_ne").tolerance_profile == "accelerated"
    fp32 = load_recipe("coreml-fp32")
    assert fp32.resolved_tolerances().max_rel == 1e-4
    assert fp32.resolved_tolerances("accelerated").max_rel == 5e-2
    assert fp32.resolved_tolerances("accelerated").cosine == 0.999
    fp16 = load_recipe("coreml-fp16")
    assert fp16.resolved_tolerances("accelerated") == fp16.resolved_tolerances()
    assert load_recipe(None, {"target": "coreml"}).resolved_tolerances("accelerated").max_rel == 5e-2


# --------------------------------------------------------------------------- macOS: the real runtime


@pytest.mark.macos
@pytest.mark.skipif(not ON_MAC, reason="needs the Core ML runtime: MLModel.predict runs only on macOS")
def test_macos_reports_where_the_ops_ran(cli, ios18, tmp_path, needs_macos_for):
    """Item 17: per-device op counts from MLComputePlan in verify's runner section (the manifest keeps it)."""
    import json

    needs_macos_for(ios18)
    result = cli("verify", ios18, "--device", "cpu:all", "--json", tmp_path / "v.json")
    report = json.loads((tmp_path / "v.json").read_text())
    plan = report["runner"]["compute_plan"]
    assert set(plan) == {"cpu", "gpu", "neural_engine", "unplaced"}, plan
    assert plan["cpu"] + plan["gpu"] + plan["neural_engine"] > 0
    assert report["runner"]["tolerances"] == "accelerated" and result.code in (0, 1)


@pytest.mark.macos
@pytest.mark.skipif(not ON_MAC, reason="needs the Core ML runtime: MLModel.predict runs only on macOS")
def test_macos_older_than_the_artifact_refuses_in_one_line(cli, ios18):
    """Item 16 on a Mac: below macOS 15 an iOS18 program is refused at load, not with a traceback."""
    if int(SPEC_MACOS[spec_version(ios18)]) <= int(platform.mac_ver()[0].split(".")[0]):
        pytest.skip(f"this macOS {platform.mac_ver()[0]} runs {ios18.name}: nothing to refuse")
    result = cli("verify", ios18, "--device", "cpu:all")
    assert result.code == 2 and len(result.error_lines) == 1
    assert "needs macOS 15 or newer" in result.error_lines[0]
