"""The one Q/DQ quantiser in its two schemes: TensorRT's graph as before, ORT's fused-conv graph."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime", reason="pip install 'evit-deploy[onnx]'")


def conv_model():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["logits"], name="conv2")]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16, 16])], [w, b, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


CALIB = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(3)]
ARGS = {"input_name": "input", "exclude": [], "op_types": ["Conv"], "method": "minmax", "key_material": {"samples": 3}}


def _by_output(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_tensorrt_keeps_its_scheme_through_trt_int8():
    """trt.int8 is the shared quantiser in the TensorRT scheme: the same bytes, Q/DQ on conv inputs
    only, symmetric int8 (zero point 0), fp32 bias."""
    from evit_deploy.onnx import qdq
    from evit_deploy.trt import int8

    model, info = int8.quantize_qdq(conv_model(), CALIB, **ARGS)
    shared, _ = qdq.quantize_qdq(conv_model(), None, scheme=qdq.TENSORRT, **ARGS)  # from the cache
    assert model.SerializeToString() == shared.SerializeToString()
    assert info["format"] == qdq.TENSORRT.description
    producer = _by_output(model)
    inits = {t.name: t for t in model.graph.initializer}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        assert producer.get(q.input[0]) is None or producer[q.input[0]].op_type != "Conv"  # no output Q
        zero = inits[q.input[2]]
        assert zero.data_type == TensorProto.INT8 and not numpy_helper.to_array(zero).any()
    conv1 = next(n for n in model.graph.node if n.op_type == "Conv" and len(n.input) == 3)
    assert conv1.input[2] == "b" and inits["b"].data_type == TensorProto.FLOAT


@pytest.mark.parametrize("name,zero_type", [("qdq-u8s8", TensorProto.UINT8), ("qdq-s8s8", TensorProto.INT8),
                                            ("qdq-u8u8", TensorProto.UINT8)])
def test_ort_schemes_quantise_outputs_and_bias_for_qlinearconv(name, zero_type, tmp_path):
    import onnx
    import onnxruntime as ort

    from evit_deploy.onnx import qdq

    model, _ = qdq.quantize_qdq(conv_model(), CALIB, scheme=qdq.ORT_SCHEMES[name], **ARGS)
    producer = _by_output(model)
    inits = {t.name: t for t in model.graph.initializer}
    outputs_quantised = [q for q in model.graph.node if q.op_type == "QuantizeLinear"
                         and producer.get(q.input[0]) is not None and producer[q.input[0]].op_type == "Conv"]
    assert len(outputs_quantised) == 2
    assert {inits[q.input[2]].data_type for q in model.graph.node if q.op_type == "QuantizeLinear"} == {zero_type}
    bias = producer[next(n for n in model.graph.node if n.op_type == "Conv" and len(n.input) == 3).input[2]]
    assert bias.op_type == "DequantizeLinear" and inits[bias.input[0]].data_type == TensorProto.INT32
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node].count("QLinearConv") == 2


def test_ort_schemes_share_one_calibration_apart_from_tensorrt(tmp_path, monkeypatch):
    from evit_deploy.onnx import qdq

    monkeypatch.setenv(qdq.CACHE_ENV, str(tmp_path))

    _, first = qdq.quantize_qdq(conv_model(), CALIB, scheme=qdq.ORT_SCHEMES["qdq-u8s8"], **ARGS)
    _, second = qdq.quantize_qdq(conv_model(), None, scheme=qdq.ORT_SCHEMES["qoperator-u8s8"], **ARGS)
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert second["cache_key"] == first["cache_key"]
    _, trt = qdq.quantize_qdq(conv_model(), CALIB, scheme=qdq.TENSORRT, **ARGS)
    assert trt["cache_key"] != first["cache_key"]


def test_u8u8_weights_are_uint8_where_u8s8_weights_are_int8():
    """The only difference: the weights' type (u8u8 exists for x86 CPUs without VNNI, where u8s8 saturates)."""
    from evit_deploy.onnx import qdq

    def weight_types(name: str) -> set[int]:
        model, _ = qdq.quantize_qdq(conv_model(), CALIB, scheme=qdq.ORT_SCHEMES[name], **ARGS)
        inits = {t.name: t for t in model.graph.initializer}
        return {inits[n.input[0]].data_type for n in model.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) == 4}

    assert weight_types("qdq-u8s8") == {TensorProto.INT8} and weight_types("qdq-u8u8") == {TensorProto.UINT8}
