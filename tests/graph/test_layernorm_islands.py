"""LayerNorm islands, found from structure: the fused ``LayerNormalization`` and the written-out
form SAM's ``LayerNorm2d`` exports as, in the variants exporters and simplifiers write (seconds)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evit_deploy.graph import compute_dtypes, find_fp32_islands, select_islands, to_full_fp16, to_mixed_fp16
from evit_deploy.trt.typed import emulate_fp16

C, H, W = 8, 4, 4


def layernorm_2d(*, square: str = "pow", divide: str = "div", opset: int = 18, axes_var: int = 1,
                 eps: float | None = 1e-6, affine: bool = True, output_is_norm: bool = False) -> onnx.ModelProto:
    """x -> 1x1 conv (gain 1000: outputs in the thousands) -> LayerNorm over channels -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((C, C, 1, 1)) * 1000).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(rng.standard_normal((1, C, 1, 1)).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal((1, C, 1, 1)).astype(np.float32), "beta")]
    if eps is not None:
        inits.append(numpy_helper.from_array(np.array(eps, np.float32), "eps"))
    axes = {}
    if opset >= 18:
        inits += [numpy_helper.from_array(np.array([1], np.int64), "axes"),
                  numpy_helper.from_array(np.array([axes_var], np.int64), "axes_var")]
        mean_in, var_in = ["x_conv", "axes"], ["sq", "axes_var"]
    else:
        mean_in, var_in = ["x_conv"], ["sq"]
        axes = {"mean": {"axes": [1]}, "var": {"axes": [axes_var]}}
    nodes = [helper.make_node("Conv", ["x", "w"], ["x_conv"], name="conv"),
             helper.make_node("ReduceMean", mean_in, ["mu"], name="mean", keepdims=1, **axes.get("mean", {})),
             helper.make_node("Sub", ["x_conv", "mu"], ["centred"], name="sub")]
    nodes.append(helper.make_node("Pow", ["centred", "two"], ["sq"], name="square") if square == "pow"
                 else helper.make_node("Mul", ["centred", "centred"], ["sq"], name="square"))
    nodes.append(helper.make_node("ReduceMean", var_in, ["var"], name="var", keepdims=1, **axes.get("var", {})))
    if eps is not None:
        nodes.append(helper.make_node("Add", ["var", "eps"], ["var_eps"], name="add_eps"))
    nodes.append(helper.make_node("Sqrt", ["var_eps" if eps is not None else "var"], ["std"], name="sqrt"))
    if divide == "div":
        nodes.append(helper.make_node("Div", ["centred", "std"], ["normed"], name="div"))
    else:
        nodes += [helper.make_node("Reciprocal", ["std"], ["inv"], name="reciprocal"),
                  helper.make_node("Mul", ["centred", "inv"], ["normed"], name="scale")]
    last = "normed"
    if affine:
        nodes += [helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="gain"),
                  helper.make_node("Add", ["scaled", "beta"], ["y"], name="bias")]
        last = "y"
    outputs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, C, H, W])]
    if output_is_norm and affine:
        outputs.append(helper.make_tensor_value_info("normed", TensorProto.FLOAT, [1, C, H, W]))
    graph = helper.make_graph(nodes, "ln2d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def fused_layernorm() -> onnx.ModelProto:
    """x (1, 16, C) -> MatMul -> LayerNormalization(axis -1) -> y: what nn.LayerNorm exports as."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((C, C)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(C, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(C, np.float32), "bias")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="linear"),
             helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["y"], name="norm", axis=-1,
                              epsilon=1e-6)]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, C])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, C])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


WRITTEN_OUT = ["mean", "sub", "square", "var", "add_eps", "sqrt", "div", "gain", "bias"]


def test_written_out_layernorm_is_one_island_with_its_affine():
    (island,) = find_fp32_islands(layernorm_2d())
    assert island.kind == "layernorm" and island.nodes == WRITTEN_OUT
    assert island.eps == pytest.approx(1e-6, rel=1e-6)
    assert "axes [1]" in island.reason and "65504" in island.reason


@pytest.mark.parametrize("variant, nodes", [
    ({"square": "mul"}, WRITTEN_OUT),
    ({"divide": "reciprocal"}, ["mean", "sub", "square", "var", "add_eps", "sqrt", "reciprocal", "scale", "gain",
                                "bias"]),
    ({"opset": 17}, WRITTEN_OUT),  # axes as an attribute (TorchScript exporter, opset < 18)
    ({"affine": False}, WRITTEN_OUT[:-2]),
    ({"output_is_norm": True}, WRITTEN_OUT[:-2]),  # the normalised tensor is also a graph output
], ids=["mul-square", "reciprocal", "opset17", "no-affine", "norm-is-output"])
def test_variants_of_the_pattern(variant, nodes):
    (island,) = find_fp32_islands(layernorm_2d(**variant))
    assert island.kind == "layernorm" and island.nodes == nodes


@pytest.mark.parametrize("variant", [{"axes_var": 2}, {"eps": None}], ids=["other-axes", "no-eps"])
def test_lookalikes_are_not_layernorms(variant):
    assert find_fp32_islands(layernorm_2d(**variant)) == []


def test_fused_layernormalization():
    (island,) = find_fp32_islands(fused_layernorm())
    assert island.kind == "layernorm" and island.nodes == ["norm"] and island.eps == pytest.approx(1e-6, rel=1e-6)
    assert "fused" in island.reason


def test_kinds_are_a_choice():
    graph = layernorm_2d()
    assert [i.kind for i in select_islands(graph, ["attention", "resize"])] == []
    assert [i.kind for i in select_islands(graph, ["layernorm"])] == ["layernorm"]


def _emulated(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    emulated, _ = emulate_fp16(model)
    session = ort.InferenceSession(emulated.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_island_is_what_keeps_fp16_finite():
    """Inputs in the thousands: fp16 holds them, but not their squares."""
    graph = layernorm_2d()
    x = np.random.default_rng(2).standard_normal((1, C, H, W)).astype(np.float32)
    reference = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    mixed = to_mixed_fp16(graph, find_fp32_islands(graph))
    dtypes = compute_dtypes(mixed)
    assert all(dtypes[n] == "fp32" for n in WRITTEN_OUT) and dtypes["conv"] == "fp16"
    assert np.abs(_emulated(mixed, x) - reference).max() < 1e-2 * np.abs(reference).max()
    naive = _emulated(to_full_fp16(graph), x)
    assert not np.isfinite(naive).all() or np.abs(naive - reference).max() > 0.5 * np.abs(reference).max()
