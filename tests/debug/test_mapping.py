"""The layer map: which artifact tensor is which module's output, from the converter's provenance."""
from __future__ import annotations

import json

import pytest

from evit_deploy.layer_map import LayerMap, Scope, TracedNode, map_modules

ROOT = Scope("", "m.Net")
BLOCK = Scope("block", "m.Block")
CONV = Scope("block.conv", "m.ConvLayer")
NORM = Scope("block.conv.norm", "torch.nn.modules.batchnorm.BatchNorm2d")
ACT = Scope("block.conv.act", "torch.nn.modules.activation.Hardswish")


def _map(nodes: list[TracedNode], outputs=("y",), constants=("w",)) -> dict[str, tuple[str, tuple[str, ...]]]:
    layer_map = map_modules(nodes, outputs, constants, "toy")
    return {e.module: (e.tensor, e.inputs) for e in layer_map.layers}


def test_a_module_maps_to_the_one_tensor_that_leaves_it_and_the_tensors_that_enter_it():
    nodes = [
        TracedNode(("x", "w"), ("c",), (ROOT, BLOCK, CONV, NORM)),  # Conv with its BatchNorm folded in
        TracedNode(("c",), ("a",), (ROOT, BLOCK, CONV, ACT)),
        TracedNode(("a", "x"), ("y",), (ROOT, BLOCK)),  # the residual add
    ]
    mapped = _map(nodes)
    assert mapped["block.conv.norm"] == ("c", ("x",))  # the weight is a constant, not an input
    assert mapped["block.conv.act"] == ("a", ("c",))
    assert mapped["block.conv"] == ("a", ("x",))
    assert mapped["block"] == ("y", ("x",))
    assert mapped[""] == ("y", ("x",))
    assert "block.conv.conv" not in mapped  # fused away: no op carries its scope


def test_a_module_with_two_outputs_is_not_mapped():
    nodes = [
        TracedNode(("x",), ("p", "q"), (ROOT, BLOCK)),  # a split whose halves leave the block
        TracedNode(("p", "q"), ("y",), (ROOT,)),
    ]
    mapped = _map(nodes)
    assert "block" not in mapped and mapped[""] == ("y", ("x",))


def test_restricting_to_a_rewritten_graph_keeps_what_survived():
    nodes = [TracedNode(("x",), ("c",), (ROOT, CONV)), TracedNode(("c",), ("y",), (ROOT, BLOCK))]
    layer_map = map_modules(nodes, ["y"], [], "toy")
    kept = layer_map.restricted_to({"y", "x"})
    assert [e.module for e in kept.layers] == ["block", ""] and kept.layers[0].inputs == ()
    assert LayerMap.from_dict(json.loads(json.dumps(kept.to_dict()))) == kept  # survives the manifest


def test_scales_survive_the_manifest_and_go_with_their_tensor():
    nodes = [TracedNode(("x",), ("c",), (ROOT, CONV)), TracedNode(("c",), ("y",), (ROOT, BLOCK))]
    layer_map = map_modules(nodes, ["y"], [], "toy").scaled({"c": 6.0})
    assert layer_map.scale("c") == 6.0 and layer_map.scale("y") == 1.0
    assert LayerMap.from_dict(json.loads(json.dumps(layer_map.to_dict()))) == layer_map
    assert layer_map.restricted_to({"x", "y"}).scales == {}  # "c" is gone, and its scale with it
    assert "scales" not in map_modules(nodes, ["y"], [], "toy").to_dict()  # maps without any read as before


@pytest.fixture(scope="module")
def seg_map(export_seg) -> dict:
    from evit_deploy.layer_map import LayerMap

    manifest = json.loads(export_seg("onnx").with_name("efficientvit-seg-b0-cityscapes.evit.json").read_text())
    return {e.module: e for e in LayerMap.from_dict(manifest["details"]["layer_map"]).layers}


def test_onnx_export_records_module_paths_users_know(seg_map, export_seg):
    import onnx

    qkv = seg_map["backbone.stages.3.op_list.1.context_module.main.qkv"]
    assert qkv.cls == "evit_deploy.nn.layers.ConvLayer"
    graph = onnx.load(str(export_seg("onnx")))
    (producer,) = [n for n in graph.graph.node if qkv.tensor in n.output]
    assert producer.op_type == "Conv"
    assert "backbone.stages.3.op_list.1.context_module.main.qkv.conv.weight" in producer.input
    # the LiteMLA block runs from its input to proj's output, the same tensor as proj
    attention = seg_map["backbone.stages.3.op_list.1.context_module.main"]
    assert attention.tensor == seg_map["backbone.stages.3.op_list.1.context_module.main.proj"].tensor
    assert seg_map[""].tensor == "logits"
    orders = [e.order for e in seg_map.values()]
    assert orders == sorted(orders)  # depth order


def test_map_survives_a_simplifier_that_drops_node_metadata(tmp_path, seg_weights):
    """onnxslim keeps tensor names but not the exporter's metadata: the map is read before it runs."""
    import onnx

    from evit_deploy import api
    from evit_deploy.layer_map import LayerMap

    result = api.export("efficientvit-seg-b0-cityscapes", target="onnx", weights=seg_weights, out=tmp_path,
                        resolution=(64, 128), options={"simplify": "onnxslim"})
    graph = onnx.load(str(result.artifact))
    assert not any(p.key.startswith("pkg.torch.onnx") for n in graph.graph.node for p in n.metadata_props)
    layer_map = LayerMap.from_dict(result.manifest.details["layer_map"])
    made = {o for n in graph.graph.node for o in n.output}
    assert len(layer_map.layers) > 100 and all(e.tensor in made for e in layer_map.layers)


def test_conversions_are_placed_with_the_layer_that_reads_them():
    """A DEQUANTIZE named after the qkv conv's output but feeding the attention belongs to the
    attention, so the conv keeps one output."""
    from evit_deploy.layer_map import scoped_by_consumers

    qkv = Scope("att.qkv", "m.ConvLayer")
    att = Scope("att", "m.LiteMLA")
    nodes = [
        TracedNode(("x", "w"), ("q8",), (ROOT, att, qkv)),
        TracedNode(("q8",), ("qf",), (ROOT, att, qkv)),  # DEQUANTIZE, named after its input
        TracedNode(("q8",), ("agg",), (ROOT, att, Scope("att.aggreg", "m.Conv"))),
        TracedNode(("qf", "agg"), ("y",), (ROOT, att)),
    ]
    assert "att.qkv" not in _map(nodes)  # two outputs: int8 to aggreg, float to the core
    fixed = {e.module: (e.tensor, e.inputs) for e in
             map_modules(scoped_by_consumers(nodes, [1]), ["y"], ["w"], "toy").layers}
    assert fixed["att.qkv"] == ("q8", ("x",))


def test_litert_tensor_names_give_the_first_location():
    from evit_deploy.tflite.layer_map import location

    fused = "W/a.Net_wrapped/a.Block_0/t.BatchNorm2d_norm;;W/a.Net_wrapped/a.Block_0/t.Conv2d_conv;2"
    assert location(fused) == ["W", "a.Net_wrapped", "a.Block_0", "t.BatchNorm2d_norm"]
    assert location("W/a.Net_wrapped/a.Block_0/t.Hardswish_act;/evit_float_quantized")[-1] == "t.Hardswish_act"
    assert location("serving_default_args_0_quantized") == []


def _onnx_shapes(artifact) -> dict[str, tuple[int, ...]]:
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(artifact))).graph
    return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
            for v in [*graph.value_info, *graph.output]}


@pytest.mark.parametrize("target", ["tflite", "coreml"])
def test_maps_of_other_converters_agree_with_onnx(export_seg, target):
    """Every module both maps name has the same output shape in both artifacts (TFLite: NHWC
    allowed), the seg head's alike subtrees (input_ops.0 vs output_ops.0) included."""
    from evit_deploy.layer_map import LayerMap

    def read(artifact):
        manifest = json.loads(artifact.with_name("efficientvit-seg-b0-cityscapes.evit.json").read_text())
        return {e.module: e for e in LayerMap.from_dict(manifest["details"]["layer_map"]).layers}

    onnx_map, other = read(export_seg("onnx")), read(export_seg(target))
    onnx_shapes = _onnx_shapes(export_seg("onnx"))
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        details = Interpreter(model_path=str(export_seg(target))).get_tensor_details()
        shapes = {str(d["index"]): tuple(int(x) for x in d["shape"]) for d in details}
    else:
        from evit_deploy.mil import load_program

        program = load_program(export_seg(target))
        shapes = {name: tuple(t.shape) for op in program.operations for name, t in op.outputs}
    common = [m for m in other if m in onnx_map and not other[m].is_torch_primitive]
    assert len(common) > 90 and "head.output_ops.0.op_list.0" in common and "head.input_ops.0.op_list.0" in common
    for module in common:
        n, c, h, w = onnx_shapes[onnx_map[module].tensor]
        assert shapes[other[module].tensor] in ((n, c, h, w), (n, h, w, c)), (module, other[module], onnx_map[module])
