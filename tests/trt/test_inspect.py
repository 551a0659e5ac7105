"""The engine check on layer information in TensorRT 10's and 11's inspector schemas (no GPU needed)."""
from __future__ import annotations

import json

import pytest

from evit_deploy.trt.inspect import check_layers, dtype_of, main, parse_layers
from evit_deploy.trt.plan import BuildPlan, Island, expectations, weak_typing_constraints

ISLAND = Island(kind="attention", nodes=["node_view", "node_matmul", "node_matmul_1", "node_add", "node_div"],
                reason="LiteMLA")
OPS = {"node_view": "Reshape", "node_matmul": "MatMul", "node_matmul_1": "MatMul", "node_add": "Add",
       "node_div": "Div", "node_Conv_1": "Conv", "node_Conv_2": "Conv", "Cast_x_to_fp32": "Cast"}


def make_plan(typing: str = "strong") -> BuildPlan:
    expected = expectations([ISLAND], OPS, {n: [n.removeprefix("node_")] for n in ISLAND.nodes})
    plan = BuildPlan(model="m", task="segmentation", precision="fp16", trt_version="10", trt_major=10, typing=typing,
                     onnx="m.onnx", onnx_sha256="0" * 64, engine="m.engine", layer_info="m.layers.json",
                     islands=[ISLAND], expected_layers=expected,
                     island_tensors=["view", "matmul", "matmul_1", "add", "div"])
    if typing == "weak":
        plan.layer_precisions, plan.layer_output_types = weak_typing_constraints(expected, {})
    return plan


def io(name: str, kind: str, schema: int) -> dict:
    """One layer input/output as TensorRT 10 ("Format/Datatype") or 11 ("Format" + "DataType") writes it."""
    if schema == 10:
        text = {"fp32": "Row major linear FP32 format", "fp16": "Channel major FP16 format where channel % 8 == 0",
                "int8": "Row major Int8 format"}[kind]
        return {"Name": name, "Location": "Device", "Dimensions": [1, 8], "Format/Datatype": text}
    return {"Name": name, "Location": "Device", "Dimensions": [1, 8], "Format": "Row major linear (kLINEAR)",
            "DataType": {"fp32": "Float", "fp16": "Half", "int8": "Int8"}[kind]}


def layer(name: str, nodes: list[str], inputs: list[tuple[str, str]], outputs: list[tuple[str, str]], schema: int,
          kind: str = "Myelin") -> dict:
    return {"Name": name, "LayerType": kind, "Inputs": [io(n, k, schema) for n, k in inputs],
            "Outputs": [io(n, k, schema) for n, k in outputs],
            "Metadata": "\x1f".join(f"[ONNX Layer: {n}]" for n in nodes), "TacticName": "t"}


def good_engine(schema: int) -> str:
    return json.dumps({"Layers": [
        layer("node_Conv_1", ["node_Conv_1"], [("input", "fp16")], [("x", "fp16")], schema, "CaskConvolution"),
        layer("Cast_x_to_fp32 + node_view", ["Cast_x_to_fp32", "node_view"], [("x", "fp16")], [("view", "fp32")],
              schema, "Shuffle"),
        layer("node_matmul", ["node_matmul"], [("view", "fp32")], [("matmul", "fp32")], schema, "MatrixMultiply"),
        layer("{ForeignNode[node_matmul_1...node_div]}", ["node_matmul_1", "node_add", "node_div"],
              [("matmul", "fp32"), ("view", "fp32")], [("div", "fp32")], schema),
    ], ("Bindings" if schema == 10 else "I/O Tensors"): []})


@pytest.mark.parametrize("schema", [10, 11])
def test_fp32_islands_pass_in_both_schemas(schema):
    report = check_layers(make_plan(), parse_layers(good_engine(schema)))
    assert report.passed, report.violations
    assert set(report.shown_fp32) == set(ISLAND.nodes)
    assert report.layer_types == {"fp16": 1, "fp16+fp32": 1, "fp32": 2}


@pytest.mark.parametrize("schema", [10, 11])
def test_an_island_matmul_in_fp16_fails_naming_it(schema):
    engine = json.loads(good_engine(schema))
    engine["Layers"][2] = layer("node_matmul", ["node_matmul"], [("view", "fp16")], [("matmul", "fp16")], schema)
    report = check_layers(make_plan(), parse_layers(engine))
    assert not report.passed
    assert {v["node"] for v in report.violations} >= {"node_matmul", "matmul"}
    assert "node_matmul" in report.message()


def fused_with_a_conv(schema: int, out_kind: str) -> dict:
    """Myelin fused the island with an fp16 conv: the island's own tensors are no longer visible."""
    return {"Layers": [
        layer("{ForeignNode[node_Conv_1...node_div]}", ["node_Conv_1", *ISLAND.nodes, "node_Conv_2"],
              [("input", "fp16")], [("div" if out_kind != "hidden" else "y", "fp16")], schema),
    ]}


def test_weak_typing_fails_when_island_math_cannot_be_shown():
    report = check_layers(make_plan("weak"), parse_layers(fused_with_a_conv(10, "hidden")))
    assert not report.passed
    assert {v["node"] for v in report.violations} == {"node_matmul", "node_matmul_1", "node_add", "node_div"}
    assert all(v["found"] == "fused" for v in report.violations)


def test_strong_typing_reports_a_fused_island_without_failing():
    report = check_layers(make_plan("strong"), parse_layers(fused_with_a_conv(11, "hidden")))
    assert report.passed and {u["node"] for u in report.unseen} == set(ISLAND.nodes)
    assert all(u["state"] == "fused" for u in report.unseen)


def test_a_visible_island_tensor_in_fp16_fails_even_when_strongly_typed():
    report = check_layers(make_plan("strong"), parse_layers(fused_with_a_conv(10, "visible")))
    assert not report.passed and report.violations[0]["node"] == "div"


def test_foreign_node_without_metadata_gives_its_endpoints():
    engine = {"Layers": [{"Name": "{ForeignNode[node_matmul_1...node_div]}", "LayerType": "Myelin",
                          "Inputs": [], "Outputs": []}]}
    (parsed,) = parse_layers(engine)
    assert parsed.onnx_nodes == ["node_matmul_1", "node_div"] and not parsed.complete


def test_names_only_verbosity_is_refused():
    from evit_deploy.errors import UsageError

    with pytest.raises(UsageError, match="detailed profiling verbosity"):
        parse_layers(json.dumps({"Layers": ["a", "b"]}))


@pytest.mark.parametrize("entry,kind", [({"Format/Datatype": "Row major linear FP32 format"}, "fp32"),
                                        ({"Format/Datatype": "Half"}, "fp16"), ({"DataType": "Float"}, "fp32"),
                                        ({"DataType": "Int8", "Format": "Row major"}, "int8"),
                                        ({"Format/Datatype": "Row major linear INT32 format"}, "int32"),
                                        ({"DataType": "BFloat16"}, "bf16")])
def test_dtypes(entry, kind):
    assert dtype_of(entry) == kind


def test_command_line_exit_codes(tmp_path, capsys):
    plan = make_plan()
    plan.save(tmp_path / "m.trt-plan.json")
    (tmp_path / "good.json").write_text(good_engine(10))
    assert main([str(tmp_path / "m.trt-plan.json"), str(tmp_path / "good.json")]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    bad = json.loads(good_engine(11))
    bad["Layers"][2] = layer("node_matmul", ["node_matmul"], [("view", "fp16")], [("matmul", "fp16")], 11)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main([str(tmp_path / "m.trt-plan.json"), str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "node_matmul" in err[0]
    assert main([str(tmp_path / "m.trt-plan.json"), str(tmp_path / "missing.json")]) == 2
