"""fp16 emulation, the overflow scan and the int8 calibration cache, on toy graphs (seconds)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evit_deploy.trt.typed import emulate_fp16, scan_fp16


def chain(dtype: int, first: float = 1.0, second: float = 0.001) -> onnx.ModelProto:
    """input -> Cast -> MatMul (a sum of 256 values) -> MatMul (x0.001 x4) -> Cast -> output."""
    np_type = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    w1 = numpy_helper.from_array(np.full((256, 4), first, np_type), "w1")
    w2 = numpy_helper.from_array(np.full((4, 4), second, np_type), "w2")
    nodes = [helper.make_node("Cast", ["input"], ["x"], name="cast_in", to=dtype),
             helper.make_node("MatMul", ["x", "w1"], ["sum"], name="big_sum"),
             helper.make_node("MatMul", ["sum", "w2"], ["small"], name="scale_down"),
             helper.make_node("Cast", ["small"], ["out"], name="cast_out", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_emulation_rounds_where_the_cpu_provider_does_not():
    x = np.full((1, 256), 300.0, np.float32)  # the sum is 76800: past fp16's 65504
    emulated, fp16 = emulate_fp16(chain(TensorProto.FLOAT16))
    assert fp16 == ["x", "sum", "small"]
    assert np.isinf(run(emulated, x)).all()  # what fp16 storage (and TensorRT) gives
    assert np.isfinite(run(chain(TensorProto.FLOAT), x)).all()
    small = np.full((1, 256), 0.1, np.float32)
    np.testing.assert_allclose(run(emulated, small), run(chain(TensorProto.FLOAT), small), rtol=2e-3)


def test_scan_names_the_first_overflowing_tensor():
    model = chain(TensorProto.FLOAT16)
    scan = scan_fp16(model, [np.full((1, 256), 300.0, np.float32)])
    assert not scan.ok and scan.first_bad.tensor == "sum" and scan.first_bad.node == "big_sum"
    scan = scan_fp16(model, [np.full((1, 256), 100.0, np.float32)])
    assert scan.ok and scan.worst[0].tensor == "sum" and scan.worst[0].max_abs == pytest.approx(25600, rel=1e-3)
    assert scan.to_dict()["headroom"] == pytest.approx(65504 / 25600, rel=1e-2)


def test_overflow_message_is_one_line():
    from evit_deploy.errors import CheckFailed
    from evit_deploy.trt.typed import raise_on_overflow

    scan = scan_fp16(chain(TensorProto.FLOAT16), [np.full((1, 256), 300.0, np.float32)])
    with pytest.raises(CheckFailed) as err:
        raise_on_overflow(scan, "--max-shape")
    assert "\n" not in str(err.value) and "tensor 'sum' (output of MatMul node 'big_sum')" in str(err.value)
    assert err.value.exit_code == 1


# ------------------------------------------------------------------------------------- int8


def conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["input", "w"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"], name="relu"),
             helper.make_node("Conv", ["b", "w2"], ["logits"], name="conv2")]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16, 16])], [w, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_int8_cache_is_keyed_and_reused(tmp_path, monkeypatch):
    from evit_deploy.trt import int8

    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    calib = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    material = {"images": [["a.png", "0" * 64]], "samples": 4, "preprocessing": {"size": [16, 16]}, "model": "m"}
    kwargs = {"input_name": "input", "exclude": ["conv2"], "op_types": ["Conv"], "method": "minmax"}
    model, info = int8.quantize_qdq(conv_model(), calib, key_material=material, **kwargs)
    assert info["cache_hit"] is False and (tmp_path / "cache" / f"{info['cache_key']}.json").is_file()
    meta = json.loads((tmp_path / "cache" / f"{info['cache_key']}.meta.json").read_text())
    assert meta["images"] == material["images"] and meta["method"] == "minmax"
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and info["excluded_nodes"] == 1  # conv1's input only: conv2 excluded
    again, info2 = int8.quantize_qdq(conv_model(), None, key_material=material, **kwargs)  # no data needed
    assert info2["cache_hit"] is True and info2["cache_key"] == info["cache_key"]
    assert again.SerializeToString() == model.SerializeToString()
    for change in ({"images": [["a.png", "1" * 64]]}, {"preprocessing": {"size": [32, 32]}}, {"samples": 3}):
        assert int8.cache_key({**material, **change, "method": "minmax"}) != int8.cache_key({**material, "method": "minmax"})


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    from evit_deploy.trt import int8

    monkeypatch.delenv(int8.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert int8.cache_dir() == tmp_path / "evit" / "calib"
    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert int8.cache_dir() == tmp_path / "elsewhere"


def test_calibration_keeps_stdout_clean(tmp_path, monkeypatch, capsys):
    """onnxruntime's histogram calibrators print progress; `evit export --json` must stay JSON."""
    from evit_deploy.trt import int8

    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path))
    calib = [np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    int8.quantize_qdq(conv_model(), calib, input_name="input", exclude=[], op_types=["Conv"], method="percentile",
                      key_material={"samples": 2})
    assert capsys.readouterr().out == ""


def tanh_gelu(cube_elsewhere: bool = False) -> onnx.ModelProto:
    """fp16 ``x * (1 + tanh(0.798 * (x + 0.0447 * x**3))) / 2``, as the exporter writes tanh-GELU below
    opset 20; with ``cube_elsewhere`` the cube also feeds a ReduceSum (no saturation to save it)."""
    consts = [numpy_helper.from_array(np.array(v, np.float16), n)
              for n, v in (("three", 3.0), ("c", 0.044715), ("k", 0.7978845608), ("one", 1.0), ("half", 0.5))]
    nodes = [helper.make_node("Cast", ["input"], ["x"], name="cast_in", to=TensorProto.FLOAT16),
             helper.make_node("Pow", ["x", "three"], ["cube"], name="cube"),
             helper.make_node("Mul", ["cube", "c"], ["scaled"], name="scale"),
             helper.make_node("Add", ["x", "scaled"], ["inner"], name="inner"),
             helper.make_node("Mul", ["inner", "k"], ["arg"], name="arg"),
             helper.make_node("Tanh", ["arg"], ["t"], name="tanh"),
             helper.make_node("Add", ["t", "one"], ["t1"], name="plus_one"),
             helper.make_node("Mul", ["x", "t1"], ["xt"], name="times_x"),
             helper.make_node("Mul", ["xt", "half"], ["gelu"], name="half"),
             helper.make_node("Cast", ["gelu"], ["out"], name="cast_out", to=TensorProto.FLOAT)]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])]
    if cube_elsewhere:
        nodes += [helper.make_node("ReduceSum", ["cube"], ["sum"], name="sum", keepdims=0),
                  helper.make_node("Cast", ["sum"], ["total"], name="cast_sum", to=TensorProto.FLOAT)]
        outputs.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              outputs, consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_an_inf_that_saturates_a_tanh_is_no_overflow():
    """tanh-GELU's cube passes 65504 for |x| > 40 in fp16; tanh(+-inf) = +-1 is exact, so the scan
    names those tensors as saturated and passes; the same cube read elsewhere is an overflow."""
    x = np.array([[-300.0, -41.0, 50.0, 2.0]], np.float32)
    scan = scan_fp16(tanh_gelu(), [x])
    assert scan.ok and scan.saturated == ["cube", "scaled", "inner", "arg"]
    gelu = 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x.astype(np.float64) ** 3)))
    np.testing.assert_allclose(run(emulate_fp16(tanh_gelu())[0], x), gelu, rtol=1e-3)
    bad = scan_fp16(tanh_gelu(cube_elsewhere=True), [x])
    assert not bad.ok and bad.first_bad.tensor == "cube"
