"""The mixed fp16 rewrite: real fp16 graph, fp32 islands behind Casts, valid, and accurate.

About the agreement thresholds at 128x256: with the fixtures' seeded weights and random
inputs, about 1% of the 16x32 output pixels have a top-2 logit margin below 0.01 (logits are
~8, where fp16's spacing is 0.004-0.008). Rounding the *weights* to fp16 and computing in
fp32 already flips ~0.25% of pixels (measured: 99.76%), so no fp16-weight graph reaches 99.9%
raw agreement there. The tests therefore require (1) the rewrite to be as good as that
weights-only floor, (2) >= 99.9% on pixels whose reference margin exceeds fp16's error, and
(3) >= 99.5% raw. The raw >= 99.9% check runs at 512x1024 and 1024x2048 (slow tests), where
margins are larger (measured 99.99%).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from evit_deploy.graph import (
    Island,
    compute_dtypes,
    find_fp32_islands,
    node_names,
    to_full_fp16,
    to_mixed_fp16,
)

from .conftest import inputs, ort_run, torch_run
from .toy_graphs import attention_block

SEG, CLS = "efficientvit_seg_b1", "efficientvit_cls_b1"
MARGIN = 0.1  # ~1% of the logits' scale; measured fp16 max abs error at 128x256: 0.015-0.05


def check_valid(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


def seg_agreement(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(raw pixel-argmax agreement, agreement where the reference's top-2 margin > MARGIN)."""
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > MARGIN
    same = ref.argmax(1) == out.argmax(1)
    return float(same.mean()), float(same[clear].mean())


def weights_rounded_to_fp16(graph: onnx.ModelProto) -> onnx.ModelProto:
    """The fp32 graph with its float weights rounded to fp16: the precision floor of any fp16 graph."""
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    for init in out.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype == np.float32 and value.size > 1:
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float16).astype(np.float32), init.name))
    return out


# ------------------------------------------------------------------------------------ types


@pytest.mark.parametrize("builder, height, width, variant",
                         [(SEG, 64, 128, "seeded"), (SEG, 64, 128, "exact_bicubic"), (CLS, 224, 224, "seeded")],
                         ids=["seg_b1", "seg_b1-exact_bicubic", "cls_b1"])
def test_islands_compute_fp32_everything_else_fp16(exports, builder, height, width, variant):
    graph = exports.graph(builder, height, width, variant=variant)
    islands = find_fp32_islands(graph)
    mixed = to_mixed_fp16(graph, islands)
    check_valid(mixed)
    dtypes = compute_dtypes(mixed)
    ops = {n.name: n.op_type for n in mixed.graph.node}
    in_island = {n for i in islands for n in i.nodes}

    for island in islands:
        assert all(dtypes[n] == "fp32" for n in island.nodes), island.kind
        if island.kind == "attention":
            assert sum(ops[n] in ("MatMul", "Div") for n in island.nodes) == 3
    assert all(dtypes[n] == "fp16" for n, op in ops.items() if op == "Conv" and n not in in_island)
    outside = {n: d for n, d in dtypes.items() if n not in in_island}
    assert set(outside.values()) <= {"fp16", "cast", None}, {n: d for n, d in outside.items() if d == "fp32"}
    assert sum(d == "fp16" for d in outside.values()) > 100

    types = elem_types(mixed)
    assert all(types[v.name] == TensorProto.FLOAT for v in [*mixed.graph.input, *mixed.graph.output])
    conv_weights = {n.input[1] for n in mixed.graph.node if n.op_type == "Conv" and n.name not in in_island}
    assert conv_weights and all(types[w] == TensorProto.FLOAT16 for w in conv_weights)
    # the eps stays 1e-15 in fp32
    eps_inputs = {t for n in mixed.graph.node if n.name in in_island and n.op_type == "Add" for t in n.input}
    inits = {t.name: t for t in mixed.graph.initializer}
    eps = [numpy_helper.to_array(inits[t]) for t in eps_inputs if t in inits]
    assert eps and all(e.dtype == np.float32 and np.all(e == np.float32(1e-15)) for e in eps)


def test_casts_on_every_island_edge(exports):
    graph = exports.graph(SEG, 64, 128)
    islands = find_fp32_islands(graph)
    mixed = to_mixed_fp16(graph, islands)
    in_island = {n for i in islands for n in i.nodes}
    producer = {o: n for n in mixed.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in mixed.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    types = elem_types(mixed)
    entering = leaving = 0
    for node in mixed.graph.node:
        if node.name not in in_island:
            continue
        for t in node.input:
            src = producer.get(t)
            if src is not None and src.name not in in_island and types[t] in (TensorProto.FLOAT, TensorProto.FLOAT16):
                assert src.op_type == "Cast" and onnx.helper.get_attribute_value(src.attribute[0]) == TensorProto.FLOAT
                entering += 1
        for t in node.output:
            for reader in consumers.get(t, []):
                if reader.name not in in_island:
                    assert reader.op_type == "Cast", (node.name, reader.name)
                    leaving += 1
    n_islands = len(islands)
    assert entering >= n_islands and leaving >= n_islands
    # edges between island nodes stay fp32: no Cast sits between two nodes of an island
    for cast in (n for n in mixed.graph.node if n.op_type == "Cast"):
        src = producer.get(cast.input[0])
        readers = consumers.get(cast.output[0], [])
        assert not (src is not None and src.name in in_island and any(r.name in in_island for r in readers))


def test_resize_inputs_and_shape_math_untouched(exports):
    graph = exports.graph(SEG, 128, 256, dynamic=True)
    for model in (to_mixed_fp16(graph), to_full_fp16(graph)):
        check_valid(model)
        types = elem_types(model)
        for node in model.graph.node:
            if node.op_type == "Resize":
                roi, scales = node.input[1], node.input[2] if len(node.input) > 2 else ""
                assert roi == "" or types[roi] == TensorProto.FLOAT
                assert scales == "" or types[scales] == TensorProto.FLOAT
                assert len(node.input) < 4 or not node.input[3] or types[node.input[3]] == TensorProto.INT64
        before = {n.name: n for n in graph.graph.node}
        dtypes = compute_dtypes(model)
        shape_math = [n for n, d in dtypes.items() if d is None and n in before]
        assert shape_math, "the dynamic graph has shape arithmetic"
        for name in shape_math:  # shape arithmetic nodes are unchanged, inputs included
            after = next(n for n in model.graph.node if n.name == name)
            assert after == before[name]


def test_full_fp16_is_fp16_everywhere(exports):
    graph = exports.graph(SEG, 64, 128)
    full = to_full_fp16(graph)
    check_valid(full)
    dtypes = compute_dtypes(full)
    assert set(dtypes.values()) <= {"fp16", "cast", None}
    types = elem_types(full)
    assert all(types[v.name] == TensorProto.FLOAT for v in [*full.graph.input, *full.graph.output])


def test_io_fp16(exports):
    graph = exports.graph(SEG, 64, 128)
    mixed = to_mixed_fp16(graph, io_fp16=True)
    check_valid(mixed)
    types = elem_types(mixed)
    assert all(types[v.name] == TensorProto.FLOAT16 for v in [*mixed.graph.input, *mixed.graph.output])
    assert [v.name for v in mixed.graph.output] == [v.name for v in graph.graph.output]
    x = inputs(64, 128, 1)[0]
    ref = torch_run(exports.model(SEG), x)
    out = ort_run(mixed, x)
    assert seg_agreement(ref, out)[1] >= 0.999


def test_input_model_is_not_modified(exports):
    graph = exports.graph(SEG, 64, 128)
    before = graph.SerializeToString()
    to_mixed_fp16(graph)
    to_full_fp16(graph)
    assert graph.SerializeToString() == before


def test_unknown_island_nodes_are_refused():
    with pytest.raises(ValueError, match="not in the graph"):
        to_mixed_fp16(attention_block(), [Island("attention", ["no_such_node"], "test")])


def test_toy_constant_shared_by_island_and_fp16_nodes():
    graph = attention_block(share_pad_value=True)
    mixed = to_mixed_fp16(graph)
    check_valid(mixed)
    inits = {t.name: t for t in mixed.graph.initializer}
    assert inits["one"].data_type == TensorProto.FLOAT  # read by the island's Pad
    assert inits["one__fp16"].data_type == TensorProto.FLOAT16  # read by the fp16 Mul
    assert inits["eps"].data_type == TensorProto.FLOAT and numpy_helper.to_array(inits["eps"])[0] == np.float32(1e-15)
    assert inits["scales"].data_type == TensorProto.FLOAT
    assert inits["qkv_w"].data_type == TensorProto.FLOAT16 and inits["proj_w"].data_type == TensorProto.FLOAT16
    x = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ort_run(mixed, x), ort_run(graph, x), rtol=1e-2, atol=1e-2)


def test_toy_names_and_value_info_are_consistent():
    graph = attention_block(named=False, quadratic=True)
    mixed = to_mixed_fp16(graph)
    check_valid(mixed)
    names = node_names(mixed)
    assert names == [n.name for n in mixed.graph.node] and len(set(names)) == len(names)


# ------------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("variant", ["seeded", "exact_bicubic"])
def test_seg_mixed_fp16_agrees_with_torch(exports, variant):
    model, graph = exports.model(SEG), exports.graph(SEG, 128, 256, variant=variant)
    mixed = to_mixed_fp16(graph)
    floor = weights_rounded_to_fp16(graph)
    raw, clear, floor_raw = [], [], []
    for x in inputs(128, 256, 4):
        ref = torch_run(model, x)
        out = ort_run(mixed, x)
        assert np.isfinite(out).all()
        r, c = seg_agreement(ref, out)
        raw.append(r)
        clear.append(c)
        floor_raw.append(seg_agreement(ref, ort_run(floor, x))[0])
    assert np.mean(clear) >= 0.999, clear
    assert np.mean(raw) >= 0.995, raw
    assert np.mean(raw) >= np.mean(floor_raw) - 0.001, (raw, floor_raw)


def test_cls_mixed_fp16_top1_equal(exports):
    model, graph = exports.model(CLS), exports.graph(CLS, 224, 224)
    mixed = to_mixed_fp16(graph)
    for x in inputs(224, 224, 3):
        ref, out = torch_run(model, x), ort_run(mixed, x)
        assert out.argmax() == ref.argmax()
        assert np.abs(out - ref).max() < 0.02


def test_dynamic_mixed_fp16_at_two_resolutions(exports):
    model, graph = exports.model(SEG), exports.graph(SEG, 128, 256, dynamic=True)
    mixed = to_mixed_fp16(graph)
    check_valid(mixed)
    for height, width in [(128, 256), (96, 160)]:
        x = inputs(height, width, 1)[0]
        ref, out = torch_run(model, x), ort_run(mixed, x)
        assert out.shape == ref.shape
        raw, clear = seg_agreement(ref, out)
        assert clear >= 0.999 and raw >= 0.99, (height, width, raw, clear)


def test_naive_fp16_fails_on_seeded_weights(exports):
    """The eps trap: 1e-15 is 0 in fp16; where ReLU(q) meets no key mass, 0/0 = NaN spreads."""
    graph = exports.graph(SEG, 128, 256)
    out = ort_run(to_full_fp16(graph), inputs(128, 256, 1)[0])
    assert not np.isfinite(out).all()


def test_overflow_needs_the_matmuls_in_the_island(exports):
    """Weights whose attention sums pass fp16's 65504: torch fp32 is finite and unchanged,
    full fp16 fails, an island with only the division fails (the MatMuls overflow), the
    mixed graph agrees."""
    seeded, big = exports.model(SEG), exports.model(SEG, "overflow")
    graph = exports.graph(SEG, 128, 256, variant="overflow")
    islands = find_fp32_islands(graph)
    x = inputs(128, 256, 1, seed=7)[0]
    ref = torch_run(big, x)
    assert np.isfinite(ref).all()
    assert (ref.argmax(1) == torch_run(seeded, x).argmax(1)).mean() > 0.99  # ReLU attention is scale-invariant

    # the normalisers (the eps Adds' outputs) really exceed fp16's range in the fp32 graph
    probe = onnx.ModelProto()
    probe.CopyFrom(graph)
    names = node_names(graph)
    adds = [n.output[0] for n, name in zip(graph.graph.node, names)
            if n.op_type == "Add" and any(name in i.nodes for i in islands if i.kind == "attention")]
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in adds)
    assert max(float(np.abs(v).max()) for v in ort_run_all(probe, x)) > 65504

    full = ort_run(to_full_fp16(graph), x)
    assert not np.isfinite(full).all() or seg_agreement(ref, full)[0] < 0.5

    matmuls_fp16 = ort_run(to_mixed_fp16(graph, division_only(graph, islands)), x)
    assert not np.isfinite(matmuls_fp16).all()
    # ... while with the ordinary seeded weights the same division-only islands suffice
    plain = exports.graph(SEG, 128, 256)
    assert np.isfinite(ort_run(to_mixed_fp16(plain, division_only(plain, find_fp32_islands(plain))), x)).all()

    mixed = ort_run(to_mixed_fp16(graph, islands), x)
    raw, clear = seg_agreement(ref, mixed)
    assert np.isfinite(mixed).all() and clear >= 0.999 and raw >= 0.995, (raw, clear)


def division_only(graph: onnx.ModelProto, islands: list[Island]) -> list[Island]:
    """The attention islands cut down to the eps Add and the Div (MatMuls left in fp16)."""
    ops = dict(zip(node_names(graph), (n.op_type for n in graph.graph.node)))
    return [Island(i.kind, [n for n in i.nodes if ops[n] in ("Add", "Div")], i.reason) if i.kind == "attention"
            else i for i in islands]


def ort_run_all(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})
