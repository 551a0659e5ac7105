"""Hand-built ONNX graphs with the shape of one LiteMLA block, for fast edge-case tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DIM = 4  # per-head dim; one head, no aggregation branch: qkv has 3*DIM channels
C, H, W = 8, 4, 4


def attention_block(*, named: bool = True, eps: float | None = 1e-15, quadratic: bool = False,
                    share_pad_value: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x -> qkv conv -> ReLU linear (or quadratic) attention -> proj conv + residual ->
    bicubic Resize x2 -> Mul by a constant -> y. With ``share_pad_value`` the Mul reads the
    same initializer (1.0) as the attention's Pad, so it is needed in fp32 and fp16."""
    rng = np.random.default_rng(seed)
    n = H * W
    inits = [
        numpy_helper.from_array(rng.standard_normal((3 * DIM, C, 1, 1)).astype(np.float32) / 2, "qkv_w"),
        numpy_helper.from_array(rng.standard_normal((C, DIM, 1, 1)).astype(np.float32) / 2, "proj_w"),
        numpy_helper.from_array(np.array([1, 1, 3 * DIM, n], np.int64), "view_shape"),
        numpy_helper.from_array(np.array([1, DIM, H, W], np.int64), "out_shape"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([DIM], np.int64), "s1"),
        numpy_helper.from_array(np.array([2 * DIM], np.int64), "s2"),
        numpy_helper.from_array(np.array([3 * DIM], np.int64), "s3"),
        numpy_helper.from_array(np.array([DIM + 1], np.int64), "s4"),
        numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 0], np.int64), "pads"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales"),
    ]
    if eps is not None:
        inits.append(numpy_helper.from_array(np.array([eps], np.float32), "eps"))
    if not share_pad_value:
        inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "gain"))

    def node(op, ins, outs, name, **attrs):
        return helper.make_node(op, ins, outs, name=name if named else "", **attrs)

    nodes = [
        node("Conv", ["x", "qkv_w"], ["qkv"], "qkv_conv"),
        node("Reshape", ["qkv", "view_shape"], ["view"], "view"),
        node("Slice", ["view", "s0", "s1", "axis2"], ["q0"], "slice_q"),
        node("Slice", ["view", "s1", "s2", "axis2"], ["k0"], "slice_k"),
        node("Slice", ["view", "s2", "s3", "axis2"], ["v"], "slice_v"),
        node("Relu", ["q0"], ["q"], "relu_q"),
        node("Relu", ["k0"], ["k"], "relu_k"),
        node("Transpose", ["k"], ["kT"], "transpose_k", perm=[0, 1, 3, 2]),
    ]
    normaliser = "den_eps" if eps is not None else "den"
    if quadratic:
        nodes += [
            node("MatMul", ["kT", "q"], ["att"], "matmul_kq"),
            node("ReduceSum", ["att", "axis2"], ["den"], "sum", keepdims=1),
        ]
        if eps is not None:
            nodes.append(node("Add", ["den", "eps"], ["den_eps"], "add_eps"))
        nodes += [
            node("Div", ["att", normaliser], ["att_n"], "div"),
            node("MatMul", ["v", "att_n"], ["att_out"], "matmul_va"),
        ]
        attended = "att_out"
    else:
        nodes += [
            node("Pad", ["v", "pads", "one"], ["v1"], "pad_ones", mode="constant"),
            node("MatMul", ["v1", "kT"], ["vk"], "matmul_vk"),
            node("MatMul", ["vk", "q"], ["o"], "matmul_o"),
            node("Slice", ["o", "s0", "s1", "axis2"], ["num"], "slice_num"),
            node("Slice", ["o", "s1", "s4", "axis2"], ["den"], "slice_den"),
        ]
        if eps is not None:
            nodes.append(node("Add", ["den", "eps"], ["den_eps"], "add_eps"))
        nodes.append(node("Div", ["num", normaliser], ["att_out"], "div"))
        attended = "att_out"
    nodes += [
        node("Reshape", [attended, "out_shape"], ["att_map"], "view_back"),
        node("Conv", ["att_map", "proj_w"], ["proj"], "proj_conv"),
        node("Add", ["x", "proj"], ["res"], "residual"),
        node("Resize", ["res", "", "scales"], ["up"], "upsample", mode="cubic", cubic_coeff_a=-0.75,
             coordinate_transformation_mode="half_pixel"),
        node("Mul", ["up", "one" if share_pad_value else "gain"], ["y"], "gain_mul"),
    ]
    graph = helper.make_graph(
        nodes, "toy_litemla",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 2 * H, 2 * W])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def gelu_like_div() -> onnx.ModelProto:
    """A Div by a constant after a MatMul (an erf-GELU / scaled matmul): not attention."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "tiny"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Div", ["h", "sqrt2"], ["h2"], name="div_const"),
        helper.make_node("Add", ["h", "tiny"], ["h3"], name="add_tiny"),
        helper.make_node("Div", ["h2", "h3"], ["y"], name="div_same_matmul_no_selection"),
    ]
    graph = helper.make_graph(
        nodes, "not_attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def depthwise_pixel_shuffle(*, interpolating: bool, edge_pad: bool, channels: int = 2, factor: int = 2,
                            seed: int = 0) -> onnx.ModelProto:
    """x -> Pad(2) -> depthwise conv 5x5 with factor**2 outputs per channel -> DepthToSpace -> y.

    ``interpolating``: every filter sums to 1 (as bicubic's do), else random filters;
    ``edge_pad``: Pad mode=edge (bicubic's border clamp), else zero padding."""
    rng = np.random.default_rng(seed)
    weight = rng.random((channels * factor * factor, 1, 5, 5)).astype(np.float32)
    if interpolating:
        weight /= weight.sum(axis=(1, 2, 3), keepdims=True)
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(np.array([0, 0, 2, 2, 0, 0, 2, 2], np.int64), "pads")]
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad", mode="edge" if edge_pad else "constant"),
        helper.make_node("Conv", ["padded", "w"], ["phases"], name="conv", group=channels, kernel_shape=[5, 5]),
        helper.make_node("DepthToSpace", ["phases"], ["y"], name="shuffle", blocksize=factor, mode="CRD"),
    ]
    graph = helper.make_graph(
        nodes, "depthwise_pixel_shuffle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, H * factor, W * factor])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
