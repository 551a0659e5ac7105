"""ONNX Runtime int8: export -> verify through the CLI, the float islands, the int8 file, the errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="pip install 'evit-deploy[onnx]'")

SEG = "efficientvit-seg-b1-cityscapes"  # seg-B0 at 64x128 has 8x16 logits and 2x4-token attention: too
# thin to say anything about int8 agreement
CALIB_SAMPLES = 7  # conftest.CALIB_PHOTOS


@pytest.fixture(scope="module")
def seg_int8(tmp_path_factory, seeded_checkpoint, calib_photos) -> Path:
    from evit_deploy import api

    return api.export(SEG, target="onnx", config="onnx-int8", weights=seeded_checkpoint("efficientvit_seg_b1_cityscapes"),
                      out=tmp_path_factory.mktemp("int8"), resolution=(128, 256), calib=calib_photos,
                      calib_samples=CALIB_SAMPLES).artifact


@pytest.fixture(scope="module")
def seg_int8_u8u8(tmp_path_factory, seeded_checkpoint, calib_photos) -> Path:
    from evit_deploy import api

    return api.export(SEG, target="onnx", config="onnx-int8", weights=seeded_checkpoint("efficientvit_seg_b1_cityscapes"),
                      out=tmp_path_factory.mktemp("int8-u8u8"), resolution=(128, 256), calib=calib_photos,
                      calib_samples=CALIB_SAMPLES, options={"int8_scheme": "qdq-u8u8"}).artifact


def _manifest(artifact: Path) -> dict:
    return json.loads(artifact.with_name(artifact.stem + ".evit.json").read_text())


def _producers(model) -> dict[str, object]:
    return {o: n for n in model.graph.node for o in n.output}


def test_int8_export_verifies_on_unseen_photos(cli, seg_int8, test_photos, precision_limited, request):
    """Judged with the int8 profile (pixel agreement 0.99) on photos the calibration never saw. The
    seeded weights' margins are too thin for 0.99 in int8 (the reference with int8 weights alone
    misses it too, as verify says); the artifact must stay within 6 points of that reference
    (the TensorRT Q/DQ graph's slack; this one measured 0.90 where TensorRT's gives 0.88).

    On an x86 CPU without VNNI ORT's u8s8 kernels saturate (here 0.83 where a VNNI Xeon gave 0.90):
    verify says so, and the qdq-u8u8 scheme it points to is held to the bar instead."""
    from evit_deploy import api
    from evit_deploy.machine import u8s8_saturates

    result = cli("verify", seg_int8, "--images", test_photos)
    report = api.verify(seg_int8, images=test_photos, record=False)
    assert result.code == (0 if report.passed else 1), result
    assert report.precision == "int8" and report.runner["backend"] == "onnxruntime"
    saturates = u8s8_saturates()
    assert any("this CPU has no VNNI" in note and "--int8-scheme qdq-u8u8" in note
               for note in report.notes) == saturates, report.notes
    judged = report
    if saturates:
        judged = api.verify(request.getfixturevalue("seg_int8_u8u8"), images=test_photos, record=False)
        assert not any("this CPU has no VNNI" in note for note in judged.notes), judged.notes
    precision_limited(judged, "pixel_agreement", 0.99, slack=0.06)
    assert judged.outputs["logits"].cosine >= 0.99


def test_manifest_records_the_scheme_and_the_islands(seg_int8):
    manifest = _manifest(seg_int8)
    assert manifest["precision"] == "int8"
    assert manifest["recipe"]["options"]["int8_scheme"] == "qdq-u8s8"
    assert manifest["recipe"]["options"]["quantize_ops"] == ["Conv", "Add"]
    details = manifest["details"]["int8"]
    assert details["scheme"] == "qdq-u8s8" and details["samples"] == CALIB_SAMPLES
    assert manifest["recipe"]["options"]["calib_method"] == "auto" and details["method"] == "mse"  # dense output
    assert details["quantize_nodes"] > 0 and details["excluded_nodes"] > 0
    assert {i["kind"] for i in manifest["details"]["fp32_islands"]} >= {"attention", "resize"}
    assert details["float_head"] and details["keep_float"] == [] and details["keep_float_nodes"] == []
    # the user is told what int8 gained where it was measured, and how to check on their CPU
    assert any("HardSwish in int8" in note and "1.2x the fp32 artifact's speed" in note and "evit profile" in note
               for note in manifest["notes"]), manifest["notes"]
    assert details["hardswish"]["mode"] == "int8" and details["hardswish"]["rewritten"] > 0


def test_attention_and_resize_nodes_get_no_qdq(seg_int8):
    import onnx

    model = onnx.load(str(seg_int8))
    islands = _manifest(seg_int8)["details"]["fp32_islands"]
    inside = {n for island in islands for n in island["nodes"]}
    nodes = {n.name: n for n in model.graph.node}
    assert inside <= set(nodes), "island nodes were renamed or replaced by quantised ops"
    assert all(not nodes[n].op_type.startswith("QLinear") for n in inside)
    producers = _producers(model)
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        q = producers.get(node.input[0])
        source = producers.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        readers = [r.name for r in model.graph.node if node.output[0] in r.input]
        # no tensor between two island nodes is rounded to int8
        assert not (source is not None and source.name in inside and set(readers) & inside), (node.name, readers)
    # the attention's MatMuls read float tensors; an island's own inputs may be quantised conv
    # outputs (dequantised on the way in: the conv before it is a fused QLinearConv)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(n.name in inside for n in matmuls)
    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for n in matmuls for i in n.input)


def test_file_is_int8(seg_int8):
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(seg_int8))
    producers = _producers(model)
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantised = []
    for conv in convs:
        dq = producers.get(conv.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            assert inits[dq.input[0]].data_type == TensorProto.INT8  # weights stored int8
            assert producers[conv.input[0]].op_type == "DequantizeLinear"  # activations too
            quantised.append(conv)
    details = _manifest(seg_int8)["details"]["int8"]
    floats = {c.name for c in convs} - {c.name for c in quantised}
    assert floats == {c.name for c in convs if c.name in details["float_head"] + details["float_upsampling"]}
    assert len(quantised) >= 0.9 * len(convs), (len(quantised), len(convs))
    float_values = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    int8_values = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.INT8)
    assert int8_values > 5 * float_values


def test_ort_fuses_the_qdq_convs_into_qlinearconv(seg_int8, tmp_path):
    """What the scheme was chosen for: ORT's CPU provider runs the convs as QLinearConv."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(seg_int8), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") >= 0.9 * [n.op_type for n in onnx.load(str(seg_int8)).graph.node].count("Conv")


def test_int8_without_calib_is_one_line_exit_2(cli, tmp_path):
    result = cli("export", SEG, "--target", "onnx", "--precision", "int8", "--resolution", "64x128",
                 "--out", tmp_path / "out")
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and "--calib" in result.error_lines[0], result
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_keep_float_names_must_exist(cli, seeded_checkpoint, calib_photos, tmp_path):
    result = cli("export", SEG, "--config", "onnx-int8", "--resolution", "64x128", "--calib", calib_photos,
                 "--calib-samples", CALIB_SAMPLES, "--out", tmp_path / "out", "--keep-float", "backbone.stages.9")
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and "'backbone.stages.9' names no node or module" in result.error_lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_keep_float_module_path_keeps_its_convs_float(seg_int8):
    """The handle an accuracy-control loop turns: a module path keeps every node under it float."""
    import onnx

    from evit_deploy.onnx.int8 import keep_float_nodes
    from evit_deploy.onnx.layer_map import module_scopes

    model = onnx.load(str(seg_int8))
    convs = [n for n in model.graph.node if n.op_type == "Conv" and "backbone.input_stem" in module_scopes(n)]
    assert convs
    assert set(keep_float_nodes(model, ["backbone.input_stem"])) >= {c.name for c in convs}
    assert keep_float_nodes(model, [convs[0].name]) == [convs[0].name]


@pytest.mark.parametrize(("requested", "task", "chosen"), [
    ("auto", "segmentation", "mse"), ("auto", "sam", "mse"), ("auto", "classification", "percentile"),
    ("percentile", "segmentation", "percentile"), ("mse", "classification", "mse")])
def test_auto_ranges_clip_for_dense_outputs_only(requested, task, chosen):
    from evit_deploy.onnx.int8 import chosen_method

    assert chosen_method(requested, task) == chosen
