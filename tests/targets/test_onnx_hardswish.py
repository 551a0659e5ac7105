"""ORT int8's HardSwish: ``x * Clip(x + 3, 0, 6) / 6``, the ``/ 6`` folded into the convolutions reading it.

The rewrite must compute what HardSwish computes (in float, before any quantisation), fold only
where every reader is a convolution with weights of its own, leave the nodes it is told to keep,
and, quantised, leave ONNX Runtime no float HardSwish to run between the int8 convolutions.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("onnxruntime", reason="pip install 'evit-deploy[onnx]'")


def _graph(seed: int):
    """conv -> HardSwish -> (conv, and conv + residual Add) -> HardSwish -> conv: one HardSwish read by
    convolutions only, one by a convolution and an Add."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    def w(name, o, i):
        return numpy_helper.from_array(rng.normal(0, 0.5, (o, i, 3, 3)).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c0"], ["h0"], name="hs0"),
             helper.make_node("Conv", ["h0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c1", "h0"], ["s"], name="residual"),
             helper.make_node("HardSwish", ["s"], ["h1"], name="hs1"),
             helper.make_node("Conv", ["h1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [w("w0", 4, 4), w("w1", 4, 4), w("w2", 4, 4)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _input(seed: int, scale: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((1, 4, 8, 8)) * scale).astype(np.float32)


def _run_to(model, tensor: str, x: np.ndarray) -> np.ndarray:
    """``tensor``'s value on ``x`` (made a graph output)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    exposed = type(model)()
    exposed.CopyFrom(model)
    exposed.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([tensor], {"x": x})[0]


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 20.0))
def test_the_rewrite_computes_hardswish(seed, scale):
    """Inputs spanning the flat parts, the ramp (-3..3) and beyond: the same values, in float."""
    from evit_deploy.onnx.hardswish import decompose_hardswish

    model = _graph(seed)
    decomposed = decompose_hardswish(model)
    rewritten = decomposed.model
    assert decomposed.counts == {"rewritten": 2, "sixth_in_convs": 1}  # hs0 is read by the residual Add too
    # each HardSwish's new nodes go with what computes its input, for accuracy control to keep float together
    assert decomposed.companions == {"conv0": ["hs0_add", "hs0_clip", "hs0_mul", "hs0_sixth"],
                                     "residual": ["hs1_add", "hs1_clip", "hs1_mul"]}
    # the folded HardSwish's tensor now holds six times its value: the layer map must know (evit debug)
    assert decomposed.scaled == {"h1": 6.0}
    x = _input(seed, scale)
    h1 = _run_to(model, "h1", x)
    np.testing.assert_allclose(_run_to(rewritten, "h1", x) / 6, h1, rtol=1e-5, atol=1e-5 * float(np.abs(h1).max()))
    expected = _run(model, x)
    np.testing.assert_allclose(_run(rewritten, x), expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))


def test_the_sixth_is_folded_only_where_convolutions_alone_read():
    import onnx

    from evit_deploy.onnx.hardswish import decompose_hardswish

    model = _graph(0)
    rewritten = decompose_hardswish(model).model
    ops = {n.name: n.op_type for n in rewritten.graph.node}
    assert "HardSwish" not in ops.values()
    assert "hs0_sixth" in ops and "hs1_sixth" not in ops  # hs1 feeds conv2 only: its weights took the 1/6
    before = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in rewritten.graph.initializer}
    np.testing.assert_allclose(after["w2"], before["w2"] / 6, rtol=1e-7)
    np.testing.assert_array_equal(after["w1"], before["w1"])  # read after hs0, which kept its Mul
    kept = decompose_hardswish(model, keep=["hs1"])
    assert kept.counts["rewritten"] == 1 and "HardSwish" in {n.op_type for n in kept.model.graph.node}
    assert kept.scaled == {}  # hs0 kept its Mul by 1/6: every tensor holds its own value


def test_the_rewritten_hardswish_is_read_through_as_one():
    """MSE ranges take a tensor's error after the activation that alone reads it: ``x + 3`` and
    ``x * Clip(that)`` are one HardSwish; a tensor read by a conv and an Add is read as it is."""
    from evit_deploy.activation_ranges import HARDSWISH, IDENTITY
    from evit_deploy.onnx.calibrate import read_through
    from evit_deploy.onnx.hardswish import decompose_hardswish

    model = _graph(0)
    rewritten = decompose_hardswish(model).model
    assert read_through(model, "c0") is HARDSWISH and read_through(rewritten, "c0") is HARDSWISH
    assert read_through(rewritten, "h0") is IDENTITY and read_through(rewritten, "s") is HARDSWISH


def test_the_int8_graph_leaves_no_float_hardswish_to_ort(tmp_path, seeded_checkpoint, calib_photos):
    """seg-B0 at 64x128, ORT's own optimised graph: no HardSigmoid (its float HardSwish) remains outside
    the islands, QLinearMul runs in its place; ``--int8-hardswish float`` keeps ORT's float one."""
    import onnx
    import onnxruntime as ort

    from evit_deploy import api
    from evit_deploy.manifest import load_manifest

    found = {}
    for mode in ("int8", "float"):
        artifact = api.export("efficientvit-seg-b0-cityscapes", target="onnx", precision="int8",
                              weights=seeded_checkpoint("efficientvit_seg_b0_cityscapes"), out=tmp_path / mode,
                              resolution=(64, 128), calib=calib_photos, calib_samples=3,
                              options={"int8_hardswish": mode}).artifact
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{mode}-optimised.onnx")
        ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        found[mode] = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        recorded = load_manifest(artifact).details["int8"]["hardswish"]
        assert recorded["mode"] == mode and (recorded.get("rewritten", 0) >= 20) == (mode == "int8"), recorded
    assert "HardSigmoid" not in found["int8"] and "QLinearMul" in found["int8"]
    assert found["float"].count("HardSigmoid") >= 20 and "QLinearMul" not in found["float"]
