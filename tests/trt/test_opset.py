"""The opset the TensorRT target writes (issue 14): TensorRT 8.5/8.6's ONNX parser takes opsets up to
17, torch's dynamo exporter writes 18 at the least, and onnx's version converter cannot go 18 -> 17
(no Pad adapter). ``onnx.opset.to_opset_17`` writes the opset-18 forms back; these tests check each
form on small graphs, the flags, and that a real export computes the same at 17 as at 18."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evit_deploy.errors import UsageError
from evit_deploy.trt.options import PARSER_OPSET, TrtOptions

onnx = pytest.importorskip("onnx", reason="pip install 'evit-deploy[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="pip install 'evit-deploy[onnx]'")
helper, numpy_helper = onnx.helper, onnx.numpy_helper

from evit_deploy.onnx.opset import to_opset_17


def model18(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def tensor(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def run(model: onnx.ModelProto, **feed: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def same_at_17(model: onnx.ModelProto, **feed: np.ndarray) -> onnx.ModelProto:
    """``model`` written for 17: checked there, IR 8, and computing exactly what it computed at 18."""
    onnx.checker.check_model(model, full_check=True)
    written = to_opset_17(model)
    assert [o.version for o in written.opset_import] == [17] and written.ir_version == 8
    onnx.checker.check_model(onnx.shape_inference.infer_shapes(written, strict_mode=True), full_check=True)
    for a, b in zip(run(model, **feed), run(written, **feed)):
        np.testing.assert_array_equal(a, b)
    return written


X = np.random.default_rng(0).standard_normal((1, 6, 4, 4)).astype(np.float32)


def test_split_num_outputs_becomes_sizes():
    model = model18([helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)],
                    [tensor("x", [1, 6, 4, 4])], [tensor(n, [1, 2, 4, 4]) for n in "abc"])
    written = same_at_17(model, x=X)
    (split,) = written.graph.node
    sizes = next(i for i in written.graph.initializer if i.name == split.input[1])
    assert numpy_helper.to_array(sizes).tolist() == [2, 2, 2] and not split.attribute[1:]


def test_uneven_split_cuts_like_opset_18():
    model = model18([helper.make_node("Split", ["x"], ["a", "b", "c", "d"], axis=1, num_outputs=4)],
                    [tensor("x", [1, 6, 4, 4])], [tensor("a", [1, 2, 4, 4]), tensor("b", [1, 2, 4, 4]),
                                                  tensor("c", [1, 2, 4, 4]), tensor("d", [1, 0, 4, 4])])
    same_at_17(model, x=X)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceL2", "ReduceSumSquare"])
def test_reduce_axes_input_becomes_the_attribute(op):
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    model = model18([helper.make_node(op, ["x", "axes"], ["y"], keepdims=1)], [tensor("x", [1, 6, 4, 4])],
                    [tensor("y", [1, 6, 1, 1])], [axes])
    written = same_at_17(model, x=X)
    (node,) = written.graph.node
    assert list(node.input) == ["x"] and helper.get_attribute_value(node.attribute[-1]) == [2, 3]
    assert not written.graph.initializer  # the axes tensor went with its input


def test_pad_and_resize_drop_their_opset_18_defaults():
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = model18([helper.make_node("Pad", ["x", "pads", ""], ["p"], mode="constant"),
                     helper.make_node("Resize", ["p", "", "scales"], ["y"], mode="cubic", antialias=0,
                                      keep_aspect_ratio_policy="stretch")],
                    [tensor("x", [1, 6, 4, 4])], [tensor("y", [1, 6, 12, 12])], [pads, scales])
    written = same_at_17(model, x=X)
    assert {a.name for a in written.graph.node[1].attribute} == {"mode"}


@pytest.mark.parametrize("node,why", [
    (helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"]), "padding chosen axes"),
    (helper.make_node("Resize", ["x", "", "scales"], ["y"], antialias=1), "antialias=1"),
    (helper.make_node("ReduceMean", ["x", "dyn"], ["y"]), "axes computed at run time"),
    (helper.make_node("Gelu", ["x"], ["y"]), "Gelu, which does not exist in ONNX opset 17"),
    (helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2), "does not exist in ONNX opset 17"),
], ids=["pad-axes", "antialias", "dynamic-axes", "gelu", "groupnorm"])
def test_what_opset_17_cannot_say_is_refused_by_name(node, why):
    node.name = "the_node"
    model = model18([node], [tensor("x", [1, 6, 4, 4]), tensor("dyn", [2])], [tensor("y", [1, 6, 4, 4])])
    with pytest.raises(UsageError, match=f"node 'the_node' .*{why}"):
        to_opset_17(model)


def test_only_opset_18_is_written_down():
    model = model18([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1])], [tensor("y", [1])])
    model.opset_import[0].version = 20
    with pytest.raises(UsageError, match="not opset 20"):
        to_opset_17(model)


# ----------------------------------------------------------------------------- flags and exports


@pytest.mark.parametrize("version,expected", [("8.5", 17), ("8.6", 17), ("10", 18), ("11", 18)])
def test_default_opset_per_major(version, expected):
    assert TrtOptions(trt_version=version).onnx_opset == expected
    assert PARSER_OPSET[version] >= expected


@pytest.mark.parametrize("args,message", [
    (["--trt-version", "8.5", "--opset", "18"], ("error: --opset 18: TensorRT 8.5's ONNX parser takes opsets up to 17 "
                                                "and torch's exporter writes up to 23; drop --opset (evit writes 17)")),
    (["--trt-version", "10", "--opset", "21"], "error: --opset 21: TensorRT 10's ONNX parser takes opsets up to 20"),
    (["--trt-version", "11", "--opset", "24"], ("error: --opset 24: TensorRT 11's ONNX parser takes opsets up to 24 "
                                               "and torch's exporter writes up to 23")),
])
def test_an_opset_above_the_parser_is_one_line(cli, tmp_path, args, message):
    out = tmp_path / "o"
    result = cli("export", "efficientvit-b0-r224", "--target", "trt", "--plan-only", "--resolution", "64x64",
                 "--out", out, *args)
    assert result.code == 2, result
    (line,) = result.error_lines
    assert line.startswith(message), line
    assert not out.exists() or not any(out.iterdir())


def _onnx_of(out: Path) -> onnx.ModelProto:
    (path,) = out.glob("*.onnx")
    return onnx.load(str(path))


@pytest.mark.filterwarnings("ignore:efficientvit-seg-b0-cityscapes has random weights")
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_trt8_onnx_computes_what_the_opset_18_one_does(tmp_path, calib_photos, precision):
    """The issue's reproduction (``--trt-version 8.5`` wrote opset 18), and the same graph at 17 and
    at 18 (TensorRT 10's plan) gives the same outputs on ONNX Runtime, Q/DQ included."""
    from evit_deploy import api

    calib = {"calib": calib_photos, "calib_samples": 3} if precision == "int8" else {}
    made = {}
    for version in ("8.5", "10"):
        result = api.export("efficientvit-seg-b0-cityscapes", target="trt", out=tmp_path / version,
                            resolution=(64, 128), precision=precision, **calib,
                            options={"plan_only": True, "trt_version": version, "typing": "weak" if version == "10" else None})
        made[version] = _onnx_of(tmp_path / version)
        assert result.manifest.details["opset"] == (17 if version == "8.5" else 18)
    low, high = made["8.5"], made["10"]
    assert [o.version for o in low.opset_import if o.domain == ""] == [17] and low.ir_version == 8
    onnx.checker.check_model(low, full_check=True)
    plan = json.loads((tmp_path / "8.5" / "efficientvit-seg-b0-cityscapes.trt-plan.json").read_text())
    assert (plan["opset"], plan["parser_opset"]) == (17, 17)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 128)).astype(np.float32)
    (a,), (b,) = run(low, input=x), run(high, input=x)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
