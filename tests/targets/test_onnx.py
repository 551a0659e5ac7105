"""ONNX end to end: export -> verify -> profile through the CLI, and every error path of issue 3."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

SEG = "efficientvit-seg-b1-cityscapes"
CLS = "efficientvit-b1-r224"


@pytest.fixture(scope="module")
def seg_artifact(tmp_path_factory, seeded_checkpoint) -> Path:
    from evit_deploy import api

    out = tmp_path_factory.mktemp("seg")
    weights = seeded_checkpoint("efficientvit_seg_b1_cityscapes")
    return api.export(SEG, target="onnx", weights=weights, out=out, resolution=(128, 256)).artifact


def copy_artifact(artifact: Path, dest: Path) -> Path:
    for file in artifact.parent.iterdir():
        if file.is_file():
            shutil.copy(file, dest / file.name)
    return dest / artifact.name


def test_seg_round_trip_passes_with_json_and_junit(cli, seg_artifact, tmp_path):
    result = cli("verify", seg_artifact, "--json", tmp_path / "v.json", "--junit", tmp_path / "v.xml")
    assert result.code == 0, result
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] is True
    metrics = report["outputs"]["logits"]
    assert set(metrics) >= {"max_abs", "mean_abs", "max_rel", "cosine"}
    assert metrics["max_rel"] <= 1e-4
    assert set(report["task"]) == {"pixel_agreement", "miou"}
    assert report["task"]["pixel_agreement"] >= 0.999
    assert report["weight_rounding"] is None  # fp32 rounds nothing
    suite = ET.parse(tmp_path / "v.xml").getroot().find("testsuite")
    names = {case.get("name") for case in suite.iter("testcase")}
    assert "outputs.logits.max_rel" in names and "task.pixel_agreement" in names
    assert suite.get("failures") == "0"
    manifest = json.loads(seg_artifact.with_name(f"{SEG}.evit.json").read_text())
    assert manifest["parity"]["passed"] is True  # verify records its result


def test_manifest_says_how_the_artifact_was_made(seg_artifact, seeded_checkpoint):
    import onnx

    from evit_deploy.manifest import sha256_path

    manifest = json.loads(seg_artifact.with_name(f"{SEG}.evit.json").read_text())
    assert manifest["model"] == SEG and manifest["target"] == "onnx" and manifest["precision"] == "fp32"
    assert manifest["weights"]["sha256"] == sha256_path(seeded_checkpoint("efficientvit_seg_b1_cityscapes"))
    assert manifest["files"][0]["sha256"] == sha256_path(seg_artifact)
    assert manifest["input"]["height"] == 128 and manifest["input"]["width"] == 256
    assert {"torch", "onnx", "onnxruntime", "evit-deploy"} <= set(manifest["versions"])
    props = {p.key: p.value for p in onnx.load(str(seg_artifact)).metadata_props}
    assert props["evit.model"] == SEG and props["evit.task"] == "segmentation"
    assert props["evit.input_layout"] == "NCHW"
    assert json.loads(props["evit.classes"])[0] == "road"
    assert json.loads(props["evit.mean"]) == pytest.approx([0.485, 0.456, 0.406])


def test_verify_on_real_images(cli, seg_artifact, tmp_path):
    from PIL import Image
    from skimage import data

    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(tmp_path / f"{name}.png")
    result = cli("verify", seg_artifact, "--images", tmp_path, "--json", "-")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["samples"] == 2 and report["inputs"] == str(tmp_path)


def test_perturbed_weights_fail_with_the_metric_named(cli, seg_artifact, seeded_weights, reference_dir, tmp_path):
    sd = seeded_weights.state_dict(reference_dir / "state_dict_keys" / "efficientvit_seg_b1_cityscapes.txt", 1234)
    key = "backbone.stages.3.op_list.1.context_module.main.qkv.conv.weight"
    sd[key] = sd[key] * 1.5
    seeded_weights.save(sd, tmp_path / "perturbed.safetensors")
    result = cli("verify", seg_artifact, "--weights", tmp_path / "perturbed.safetensors", "--samples", 1)
    assert result.code == 1, result
    assert result.error_lines == [result.error_lines[0]]
    assert "parity failed" in result.error_lines[0] and "outputs.logits.max_rel" in result.error_lines[0]


def test_artifact_changed_after_export_is_refused(cli, seg_artifact, tmp_path):
    artifact = copy_artifact(seg_artifact, tmp_path)
    with artifact.open("ab") as handle:
        handle.write(b"\0")
    result = cli("verify", artifact)
    assert result.code == 2
    assert "changed after export" in result.error_lines[0] and "re-export" in result.error_lines[0]


def test_artifact_without_manifest_is_refused(cli, seg_artifact, tmp_path):
    shutil.copy(seg_artifact, tmp_path / seg_artifact.name)
    for command in ("verify", "profile"):
        result = cli(command, tmp_path / seg_artifact.name)
        assert result.code == 2
        assert "no manifest" in result.error_lines[0]


def test_manifest_of_another_model_is_refused(cli, seg_artifact, tmp_path):
    artifact = copy_artifact(seg_artifact, tmp_path)
    renamed = artifact.rename(tmp_path / "other.onnx")
    shutil.copy(tmp_path / f"{SEG}.evit.json", tmp_path / "other.evit.json")
    result = cli("verify", renamed)
    assert result.code == 2
    assert f"describes {SEG}.onnx, not other.onnx" in result.error_lines[0]


def test_weights_of_another_variant_are_refused(cli, seg_artifact, seeded_checkpoint):
    result = cli("verify", seg_artifact, "--weights", seeded_checkpoint("efficientvit_seg_b0_cityscapes"))
    assert result.code == 2
    assert len(result.error_lines) == 1 and "missing" in result.error_lines[0]


@pytest.mark.parametrize("setup,message", [
    ("empty", "holds no images"),
    ("text", "is not an image"),
    ("broken", "cannot be read as an image"),
])
def test_bad_image_folders(cli, seg_artifact, tmp_path, setup, message):
    folder = tmp_path / "images"
    folder.mkdir()
    if setup == "text":
        (folder / "notes.txt").write_text("hello")
    if setup == "broken":
        (folder / "frame.png").write_bytes(b"not really a png")
    result = cli("verify", seg_artifact, "--images", folder)
    assert result.code == 2
    assert message in result.error_lines[0]


def test_zero_samples_is_a_usage_error(cli, seg_artifact):
    result = cli("verify", seg_artifact, "--samples", 0)
    assert result.code == 2
    assert "--samples must be at least 1" in result.error_lines[0]


def test_profile_reports_the_contracted_fields(cli, seg_artifact, tmp_path):
    result = cli("profile", seg_artifact, "--threads", 1, "--warmup", 1, "--iters", 3, "--per-layer",
                 "--json", tmp_path / "p.json")
    assert result.code == 0, result
    data = json.loads((tmp_path / "p.json").read_text())
    assert set(data["latency_ms"]) >= {"p50", "p90", "p99", "mean", "std", "min"}
    assert data["throughput_ips"] > 0 and data["load_s"] > 0 and data["first_inference_ms"] > 0
    assert data["peak_rss_mb"] > 0
    ops = {row["op_type"] for row in data["per_layer"]}
    assert {"Conv", "DepthToSpace"} <= ops and "Resize" not in ops  # bicubic in its exact conv form
    assert "latency p50 ms" in result.stdout


def test_profile_torch_eager(cli):
    result = cli("profile", SEG, "--target", "torch", "--resolution", "64x128", "--warmup", 0, "--iters", 2,
                 "--json", "-")
    assert result.code == 0, result
    data = json.loads(result.stdout)
    assert data["target"] == "torch" and data["input_shape"] == [1, 3, 64, 128]


@pytest.mark.parametrize("args,message", [
    (["--resolution", "100x200"], "not a multiple of 32"),
    (["--target", "openvino-nope"], "unknown target 'openvino-nope'"),
    (["--precision", "fp64"], "--precision 'fp64' is not one of 'fp32', 'fp16' or 'int8'"),
    (["--opset-typo", "18"], "unknown recipe field 'options.opset_typo'"),
    (["--precision", "int8"], "int8 needs calibration images: pass --calib DIR"),
])
def test_export_usage_errors(cli, tmp_path, args, message):
    result = cli("export", SEG, "--out", tmp_path, *args)
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and message in result.error_lines[0]
    assert not list(tmp_path.glob("*.onnx"))


def test_unknown_recipe_field_in_yaml_is_named(cli, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("target: onnx\nprecison: fp16\n")
    result = cli("export", SEG, "--config", recipe, "--out", tmp_path)
    assert result.code == 2
    assert "unknown recipe field 'precison'" in result.error_lines[0]


def test_unwritable_out_is_a_usage_error(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("export", SEG, "--out", blocker / "sub", "--resolution", "64x64")
    assert result.code == 2
    assert "cannot write to --out" in result.error_lines[0]


def test_unknown_model_suggests_names(cli, tmp_path):
    result = cli("export", "efficientvit-seg-b1-cityscape", "--out", tmp_path)
    assert result.code == 2
    assert "efficientvit-seg-b1-cityscapes" in result.error_lines[0]


def test_shipped_recipes_validate():
    from evit_deploy._resources import data_dir
    from evit_deploy.configs import load_recipe, validate_options
    from evit_deploy.targets.base import get_target

    recipes = sorted(data_dir("export_configs").glob("*.yaml"))
    assert {"onnx-fp32", "onnx-fp16", "onnx-dynamic"} <= {p.stem for p in recipes}
    for path in recipes:
        recipe = load_recipe(path)
        validate_options(recipe, get_target(recipe.target).options_model)


def test_dynamic_export_verified_at_two_resolutions(cli, seeded_checkpoint, tmp_path):
    weights = seeded_checkpoint("efficientvit_seg_b1_cityscapes")
    result = cli("export", SEG, "--config", "onnx-dynamic", "--weights", weights, "--resolution", "128x128",
                 "--out", tmp_path, "-q")
    assert result.code == 0, result
    artifact = Path(result.stdout.strip())
    for resolution in ("96x160", "160x224"):
        result = cli("verify", artifact, "--resolution", resolution, "--samples", 1, "--json", "-")
        assert result.code == 0, result
        report = json.loads(result.stdout)
        assert report["outputs"]["logits"]["max_rel"] <= 1e-4, resolution


def test_static_artifact_refuses_other_resolutions(cli, seg_artifact):
    result = cli("verify", seg_artifact, "--resolution", "256x256")
    assert result.code == 2
    assert "static input" in result.error_lines[0] and "--dynamic" in result.error_lines[0]


def test_fp16_export_passes_at_fp16_tolerances(cli, seeded_checkpoint, tmp_path):
    weights = seeded_checkpoint("efficientvit_seg_b1_cityscapes")
    result = cli("export", SEG, "--config", "onnx-fp16", "--weights", weights, "--resolution", "128x256",
                 "--out", tmp_path, "-q")
    assert result.code == 0, result
    artifact = Path(result.stdout.strip())
    import onnx

    graph = onnx.load(str(artifact))
    fp16_weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) > 50  # a real fp16 graph, not casts around fp32 weights
    result = cli("verify", artifact, "--json", "-")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["task"]["pixel_agreement"] >= 0.999
    assert report["weight_rounding"]["pixel_agreement"] >= 0.999  # what fp16 weights alone keep


def test_cls_round_trip(cli, seeded_checkpoint, tmp_path):
    weights = seeded_checkpoint("efficientvit_cls_b1")
    result = cli("export", CLS, "--weights", weights, "--out", tmp_path, "-q")
    assert result.code == 0, result
    result = cli("verify", Path(result.stdout.strip()), "--samples", 2, "--json", "-")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["outputs"]["logits"]["max_rel"] <= 1e-4
    assert report["task"] == {"top1_agreement": 1.0, "top5_agreement": 1.0}


def test_python_api_returns_result_objects(seg_artifact):
    import evit_deploy

    report = evit_deploy.verify(seg_artifact, samples=1)
    assert report.passed and report.outputs["logits"].max_rel <= 1e-4
    result = evit_deploy.profile(seg_artifact, warmup=0, iters=2, threads=1)
    assert result.latency_ms.p50 > 0 and np.isfinite(result.throughput_ips)


def test_bicubic_is_exported_in_its_exact_conv_form(seg_artifact):
    import onnx

    ops = [node.op_type for node in onnx.load(str(seg_artifact)).graph.node]
    assert "Resize" not in ops and ops.count("DepthToSpace") == 2
    manifest = json.loads(seg_artifact.with_name(f"{SEG}.evit.json").read_text())
    assert manifest["details"]["bicubic_rewrite"] == ["head.input_ops.0.op_list.1", "head.input_ops.1.op_list.1"]
    assert any("exact" in note for note in manifest["notes"])


def test_bicubic_resize_keeps_the_resize_and_verifies(cli, seeded_checkpoint, tmp_path):
    import onnx

    weights = seeded_checkpoint("efficientvit_seg_b1_cityscapes")
    result = cli("export", SEG, "--weights", weights, "--resolution", "64x128", "--out", tmp_path, "-q",
                 "--bicubic", "resize")
    assert result.code == 0, result
    artifact = Path(result.stdout.strip())
    assert [n.op_type for n in onnx.load(str(artifact)).graph.node].count("Resize") == 2
    result = cli("verify", artifact, "--samples", 1, "--json", "-")
    assert result.code == 0, result


def test_session_options_are_recorded_and_used(cli, seeded_checkpoint, tmp_path):
    weights = seeded_checkpoint("efficientvit_seg_b1_cityscapes")
    result = cli("export", SEG, "--weights", weights, "--resolution", "64x128", "--out", tmp_path, "-q",
                 "--spinning", "--graph-optimization", "extended")
    assert result.code == 0, result
    artifact = Path(result.stdout.strip())
    manifest = json.loads(artifact.with_name(f"{SEG}.evit.json").read_text())
    assert manifest["details"]["runner"] == {"graph_optimization": "extended", "spinning": True, "memory_arena": True}
    result = cli("profile", artifact, "--warmup", 0, "--iters", 1, "--json", "-")
    assert result.code == 0, result
    runner = json.loads(result.stdout)["runner"]
    assert (runner["spinning"], runner["graph_optimization"], runner["memory_arena"]) == (True, "extended", True)


def test_profile_opens_the_session_the_manifest_records(cli, seg_artifact, tmp_path):
    artifact = copy_artifact(seg_artifact, tmp_path)
    manifest_file = artifact.with_name(f"{SEG}.evit.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["details"]["runner"] == {"graph_optimization": "all", "spinning": False, "memory_arena": True}
    manifest["details"]["runner"].update(spinning=True, memory_arena=False)  # as a device's measurement chose
    manifest_file.write_text(json.dumps(manifest))
    result = cli("profile", artifact, "--warmup", 0, "--iters", 1, "--json", "-")
    assert result.code == 0, result
    runner = json.loads(result.stdout)["runner"]
    assert (runner["spinning"], runner["memory_arena"], runner["graph_optimization"]) == (True, False, "all")


def test_per_layer_profile_leaves_no_temp_folder(cli, seg_artifact, tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for _ in range(2):
        result = cli("profile", seg_artifact, "--threads", 1, "--warmup", 0, "--iters", 1, "--per-layer", "--json", "-")
        assert result.code == 0, result
        assert json.loads(result.stdout)["per_layer"]
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize("command", ["verify", "profile"])
def test_random_bytes_with_a_matching_manifest_are_one_line(cli, seg_artifact, tmp_path, command):
    from evit_deploy.manifest import sha256_path

    artifact = copy_artifact(seg_artifact, tmp_path)
    artifact.write_bytes(os.urandom(4096))
    manifest_file = artifact.with_name(f"{SEG}.evit.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["files"][0].update(sha256=sha256_path(artifact), bytes=4096)  # the manifest matches the bytes
    manifest_file.write_text(json.dumps(manifest))
    result = cli(command, artifact)
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and "Traceback" not in result.stderr
    assert f"{artifact.name}: not an ONNX model (" in result.error_lines[0] and "re-export" in result.error_lines[0]


# ------------------------------------------------------------------ deployment resolutions (issue 19)


@pytest.mark.slow
@pytest.mark.parametrize("resolution", ["512x1024", "1024x2048"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_seg_parity_at_deployment_resolutions(cli, seeded_checkpoint, tmp_path, resolution, precision):
    """The faster graph (exact bicubic conv form, NCHWc session) keeps fp32 within 1e-4 of PyTorch and fp16's
    pixel agreement where fp16 weights alone put it."""
    weights = seeded_checkpoint("efficientvit_seg_b1_cityscapes")
    result = cli("export", SEG, "--config", f"onnx-{precision}", "--weights", weights, "--resolution", resolution,
                 "--out", tmp_path, "-q")
    assert result.code == 0, result
    result = cli("verify", Path(result.stdout.strip()), "--samples", 2, "--json", "-")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["runner"]["graph_optimization"] == "all"
    if precision == "fp32":
        assert report["outputs"]["logits"]["max_rel"] <= 1e-4
        assert report["task"]["pixel_agreement"] >= 0.9999
    else:
        assert report["task"]["pixel_agreement"] >= min(0.999, report["weight_rounding"]["pixel_agreement"] - 1e-3)


@pytest.mark.slow
def test_cls_b1_512_passes_verify_with_its_defaults_on_16_samples(cli, seeded_checkpoint, tmp_path):
    """Seeded cls-B1 (seed 71) at 512x512: random sample 2 holds an attention token whose output fp32 rounding
    decides (evit_deploy.nn.ties); ONNX Runtime's NCHWc path takes the other side than PyTorch (max_rel 8.5e-4
    against PyTorch's side, 1e-6 against its own). verify judges it by the side it took, and says so."""
    weights = seeded_checkpoint("efficientvit_cls_b1", 71)
    result = cli("export", CLS, "--weights", weights, "--resolution", "512x512", "--out", tmp_path, "-q")
    assert result.code == 0, result
    result = cli("verify", Path(result.stdout.strip()), "--samples", 16, "--json", "-")
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["passed"] and report["outputs"]["logits"]["max_rel"] <= 1e-5
    assert report["runner"]["graph_optimization"] == "all"  # the fast path, not a slower one that happens to agree
    (excused,) = report["excused"]  # one token of one sample, named, ill-conditioned in float64
    (token,) = excused["tokens"]
    assert excused["sample"] == 3 and excused["max_rel_taken_side"] <= 1e-5 < excused["max_rel_reference_side"]
    assert token.startswith("backbone.stages.3.op_list.2.context_module.main head 0 token (9, 5) of image 0")
    assert "float64 denominator 0 against" in token


@pytest.mark.slow
def test_cls_b1_512_with_one_damaged_attention_weight_fails_despite_the_tie(cli, seeded_checkpoint, tmp_path):
    """The tie of the test above excuses nothing else: the same artifact with one weight of that attention's
    qkv projection doubled (a value weight of head 10: logits max_rel ~3.2e-4 on each of the first 4 samples,
    the tie's sample 3 included, measured with ONNX Runtime) fails, and no token is excused."""
    import onnx

    from evit_deploy.manifest import sha256_path

    weights = seeded_checkpoint("efficientvit_cls_b1", 71)
    result = cli("export", CLS, "--weights", weights, "--resolution", "512x512", "--out", tmp_path, "-q")
    assert result.code == 0, result
    artifact = Path(result.stdout.strip())
    graph = onnx.load(str(artifact))
    (weight,) = [t for t in graph.graph.initializer
                 if t.name == "backbone.stages.3.op_list.2.context_module.main.qkv.conv.weight"]
    values = onnx.numpy_helper.to_array(weight).copy()
    values[512, 0] *= 2.0  # qkv channel 512 = head 10 (3 x dim 16 channels each), value component 0
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(graph, str(artifact))
    manifest_file = artifact.with_name(f"{CLS}.evit.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["files"][0].update(sha256=sha256_path(artifact), bytes=artifact.stat().st_size)
    manifest_file.write_text(json.dumps(manifest))
    result = cli("verify", artifact, "--samples", 4, "--json", tmp_path / "v.json")
    assert result.code == 1, result
    report = json.loads((tmp_path / "v.json").read_text())
    assert "outputs.logits.max_rel" in report["failed"] and report["excused"] == []


def test_the_runner_refuses_random_bytes_in_one_line(tmp_path):
    """The runner's own guard (benchmarks and devices open artifacts through it, not only the CLI)."""
    from evit_deploy.errors import UsageError
    from evit_deploy.onnx.runner import OnnxRunner

    path = tmp_path / "noise.onnx"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(UsageError) as err:
        OnnxRunner(path).load()
    assert str(err.value).startswith("noise.onnx: not an ONNX model (") and str(err.value).endswith("; re-export it")
    assert "\n" not in str(err.value)
