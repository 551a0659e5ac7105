"""fp32 islands are found from the graph's structure: one per LiteMLA block, plus each upsampling
(a Resize, or the exact conv form of bicubic upsampling the ONNX target exports)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from evit_deploy.graph import Island, find_fp32_islands, islands_summary, node_names, to_mixed_fp16
from evit_deploy.nn import LiteMLA

from .conftest import litemla_count
from .toy_graphs import attention_block, depthwise_pixel_shuffle, gelu_like_div


def quadratic_blocks(model: torch.nn.Module, height: int, width: int) -> int:
    """LiteMLA blocks that take the quadratic path at this input size (tokens <= dim)."""
    tokens: list[tuple[int, int]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: tokens.append((args[0].shape[-2] * args[0].shape[-1],
                                                                           mod.dim)))
             for m in model.modules() if isinstance(m, LiteMLA)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        for h in hooks:
            h.remove()
    return sum(n <= dim for n, dim in tokens)


def check_islands(graph: onnx.ModelProto, islands: list[Island], expected_attention: int,
                  expected_quadratic: int | None = None) -> None:
    names = node_names(graph)
    ops = {name: node.op_type for name, node in zip(names, graph.graph.node)}
    position = {name: i for i, name in enumerate(names)}
    attention = [i for i in islands if i.kind == "attention"]
    resize = [i for i in islands if i.kind == "resize"]
    assert len(attention) == expected_attention
    assert len(resize) == sum(op in ("Resize", "DepthToSpace") for op in ops.values())
    assert {i.kind for i in islands} <= {"attention", "resize"}
    members = [n for i in islands for n in i.nodes]
    assert len(members) == len(set(members)), "islands overlap"
    for island in islands:
        assert all(n in ops for n in island.nodes)
        assert [position[n] for n in island.nodes] == sorted(position[n] for n in island.nodes)
        assert island.reason
    quadratic = 0
    for island in attention:
        kinds = [ops[n] for n in island.nodes]
        assert kinds.count("MatMul") == 2 and kinds.count("Div") == 1 and kinds.count("Add") == 1, kinds
        assert kinds.count("Relu") == 2 and "Reshape" in kinds and kinds.count("Slice") >= 3
        assert island.eps == pytest.approx(float(np.float32(1e-15)), rel=1e-6)
        if "ReduceSum" in kinds:
            quadratic += 1
            assert "Pad" not in kinds
        else:
            assert kinds.count("Pad") == 1
        assert not set(kinds) - {"Reshape", "Slice", "Relu", "Transpose", "Pad", "MatMul", "ReduceSum", "Add",
                                 "Div", "Cast"}
    if expected_quadratic is not None:
        assert quadratic == expected_quadratic


@pytest.mark.parametrize(
    "builder, height, width, dynamic",
    [
        ("efficientvit_seg_b1", 64, 128, False),  # stage 3 linear, stage 4 quadratic
        ("efficientvit_seg_b1", 128, 256, False),
        ("efficientvit_seg_b1", 128, 256, True),
        ("efficientvit_cls_b1", 224, 224, False),
    ],
    ids=["seg_b1-64x128", "seg_b1-128x256", "seg_b1-dynamic", "cls_b1-224"],
)
def test_one_attention_island_per_litemla_block(exports, builder, height, width, dynamic):
    model = exports.model(builder)
    graph = exports.graph(builder, height, width, dynamic)
    expected_quadratic = 0 if dynamic else quadratic_blocks(model, height, width)
    check_islands(graph, find_fp32_islands(graph), litemla_count(model), expected_quadratic)
    if (builder, height) == ("efficientvit_seg_b1", 64):
        assert 0 < expected_quadratic < litemla_count(model)  # both paths covered


@pytest.mark.parametrize("simplifier", ["onnxslim", "onnxsim"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_islands_survive_simplifiers(exports, simplifier, dynamic):
    tool = pytest.importorskip(simplifier)
    graph = exports.graph("efficientvit_seg_b1", 128, 256, dynamic)
    simple = tool.slim(graph) if simplifier == "onnxslim" else tool.simplify(graph)[0]
    check_islands(simple, find_fp32_islands(simple), litemla_count(exports.model("efficientvit_seg_b1")), 0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_islands_on_the_torchscript_exporter(exports, tmp_path):
    model = exports.model("efficientvit_seg_b1")
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 128),), str(tmp_path / "ts.onnx"), dynamo=False, opset_version=17)
    graph = onnx.load(str(tmp_path / "ts.onnx"))
    # (under TorchScript tracing the token count is traced, so LiteMLA takes its linear form)
    check_islands(graph, find_fp32_islands(graph), litemla_count(model))


def test_islands_do_not_depend_on_node_names(exports):
    graph = exports.graph("efficientvit_seg_b1", 64, 128)
    named = find_fp32_islands(graph)
    for node in graph.graph.node:
        node.name = ""
    anonymous = find_fp32_islands(graph)
    assert [(i.kind, len(i.nodes)) for i in anonymous] == [(i.kind, len(i.nodes)) for i in named]
    # generated names are deterministic and written into the rewritten graph
    mixed = to_mixed_fp16(graph, anonymous)
    present = {n.name for n in mixed.graph.node}
    assert all(n in present for i in anonymous for n in i.nodes)


def test_toy_linear_and_quadratic_blocks():
    for quadratic in (False, True):
        islands = find_fp32_islands(attention_block(quadratic=quadratic))
        assert [i.kind for i in islands] == ["attention", "resize"]
        expected = {"view", "slice_q", "slice_k", "slice_v", "relu_q", "relu_k", "transpose_k", "add_eps", "div"}
        expected |= {"matmul_kq", "sum", "matmul_va"} if quadratic else {"pad_ones", "matmul_vk", "matmul_o",
                                                                          "slice_num", "slice_den"}
        assert set(islands[0].nodes) == expected
        assert islands[1].nodes == ["upsample"]


def test_unnamed_nodes_get_stable_names():
    graph = attention_block(named=False)
    islands = find_fp32_islands(graph)
    assert islands[0].nodes[0] == "Reshape_1" and "Div_" in " ".join(islands[0].nodes)
    assert islands == find_fp32_islands(graph)
    mixed = to_mixed_fp16(graph, islands)
    present = {n.name for n in mixed.graph.node}
    assert all(n in present for i in islands for n in i.nodes)
    assert len(present) == len(mixed.graph.node)


def test_missing_eps_is_still_an_island_and_reported():
    islands = find_fp32_islands(attention_block(eps=None))
    assert islands[0].kind == "attention" and islands[0].eps is None
    assert "NO eps" in islands[0].reason


def test_other_divisions_are_not_attention():
    assert find_fp32_islands(gelu_like_div()) == []


def test_summary_is_json_ready(exports):
    islands = find_fp32_islands(exports.graph("efficientvit_seg_b1", 64, 128))
    summary = islands_summary(islands)
    assert json.loads(json.dumps(summary)) == summary
    assert [s["kind"] for s in summary] == [i.kind for i in islands]
    assert all(set(s) == ({"kind", "nodes", "reason", "eps"} if s["kind"] == "attention"
                          else {"kind", "nodes", "reason"}) for s in summary)
    assert all(s["nodes"] == i.nodes for s, i in zip(summary, islands))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_exact_bicubic_upsampling_is_a_resize_island(exports, dynamic):
    model = exports.model("efficientvit_seg_b1", "exact_bicubic")
    graph = exports.graph("efficientvit_seg_b1", 128, 256, dynamic, variant="exact_bicubic")
    ops = {name: node.op_type for name, node in zip(node_names(graph), graph.graph.node)}
    assert "Resize" not in ops.values()
    islands = find_fp32_islands(graph)
    check_islands(graph, islands, litemla_count(model), 0 if dynamic else quadratic_blocks(model, 128, 256))
    resize = [i for i in islands if i.kind == "resize"]
    assert len(resize) == 2  # the stride-16 and stride-32 projections of the seg head
    for island in resize:
        kinds = [ops[n] for n in island.nodes]
        assert kinds.count("Conv") == 1 and kinds[-1] == "DepthToSpace"
        assert set(kinds) <= {"Slice", "Concat", "Conv", "DepthToSpace"} and "Concat" in kinds  # the edge pad
        assert "exact bicubic" in island.reason


def test_exact_bicubic_upsampling_survives_onnxslim(exports):
    onnxslim = pytest.importorskip("onnxslim")
    graph = onnxslim.slim(exports.graph("efficientvit_seg_b1", 128, 256, variant="exact_bicubic"))
    islands = find_fp32_islands(graph)
    assert sum(i.kind == "resize" for i in islands) == 2
    assert sum(i.kind == "attention" for i in islands) == litemla_count(exports.model("efficientvit_seg_b1"))


@pytest.mark.parametrize("interpolating, edge", [(True, True), (False, True), (True, False)],
                         ids=["bicubic", "filters-not-summing-to-1", "zero-padding"])
def test_only_interpolating_edge_padded_pixel_shuffles_are_upsampling(interpolating, edge):
    islands = find_fp32_islands(depthwise_pixel_shuffle(interpolating=interpolating, edge_pad=edge))
    if interpolating and edge:
        assert [(i.kind, i.nodes) for i in islands] == [("resize", ["pad", "conv", "shuffle"])]
    else:
        assert islands == []  # a learned depthwise conv before a pixel shuffle computes in fp16
