"""The engine check on layer information in TensorRT 10's and 11's inspector schemas (no GPU needed).

The layer entries are TensorRT's own shapes, not ones made to fit the code:

* TensorRT 8.6/10: ``{"Name", "Location", "Dimensions", "Format/Datatype": "Channel major FP16 format where
  channel % 8 == 0"}`` (a ``--exportLayerInfo`` file quoted in NVIDIA/TensorRT#3876; the format strings are
  the ones NVIDIA's trt-engine-explorer maps, tools/experimental/trt-engine-explorer/trex/activations.py);
* TensorRT 11: the ``Format/DataType`` field is split (docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/
  migration/tensorrt-10x-to-11x-IEngineInspector.html); TensorRT 11.1's own layer-info parser spells the
  per-binding type key ``Datatype`` (issue 20), the migration guide's I/O tensors ``DataType``, with the
  type names TensorRT prints (``Float``, ``Half``, ``Int8``, ``UInt8``: trex's table). The layout part is
  given as TensorRT's TensorFormat names (``kLINEAR``, ``kHWC8``), i.e. with no type in it: the case in
  which reading the wrong key silently left every binding ``unknown``;
* metadata: onnx-tensorrt importerUtils.cpp ``processMetadata`` writes ``[ONNX Layer: NAME]``, with
  `` | Local Function: F`` (10.x) or doc-string lines (8.6) after the name, entries joined by ``\x1f``.
"""
from __future__ import annotations

import json
import subprocess
import sys

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


def io(name: str, kind: str, schema: int, key: str = "Datatype") -> dict:
    """One layer input/output as TensorRT 10 ("Format/Datatype") or 11 ("Format" + a type key) writes it."""
    if schema == 10:
        text = {"fp32": "Row major linear FP32 format", "fp16": "Channel major FP16 format where channel % 8 == 0",
                "int8": "Row major Int8 format", "uint8": "Row major linear UInt8 format"}[kind]
        return {"Name": name, "Location": "Device", "Dimensions": [1, 8], "Format/Datatype": text}
    return {"Name": name, "Location": "Device", "Dimensions": [1, 8],
            "Format": {"fp16": "kHWC8"}.get(kind, "kLINEAR"),
            key: {"fp32": "Float", "fp16": "Half", "int8": "Int8", "uint8": "UInt8"}[kind]}


def layer(name: str, nodes: list[str], inputs: list[tuple[str, str]], outputs: list[tuple[str, str]], schema: int,
          kind: str = "Myelin", key: str = "Datatype") -> dict:
    return {"Name": name, "LayerType": kind, "Inputs": [io(n, k, schema, key) for n, k in inputs],
            "Outputs": [io(n, k, schema, key) for n, k in outputs],
            "Metadata": "\x1f".join(f"[ONNX Layer: {n}]" for n in nodes), "TacticName": "t"}


def good_engine(schema: int, key: str = "Datatype", matmul: str = "fp32") -> str:
    return json.dumps({"Layers": [
        layer("node_Conv_1", ["node_Conv_1"], [("input", "fp16")], [("x", "fp16")], schema, "CaskConvolution", key),
        layer("Cast_x_to_fp32 + node_view", ["Cast_x_to_fp32", "node_view"], [("x", "fp16")], [("view", "fp32")],
              schema, "Shuffle", key),
        layer("node_matmul", ["node_matmul"], [("view", matmul)], [("matmul", matmul)], schema, "MatrixMultiply", key),
        layer("{ForeignNode[node_matmul_1...node_div]}", ["node_matmul_1", "node_add", "node_div"],
              [("matmul", "fp32"), ("view", "fp32")], [("div", "fp32")], schema, key=key),
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
                                        ({"Datatype": "Half", "Format": "kHWC8"}, "fp16"),
                                        ({"datatype": "Float"}, "fp32"),
                                        ({"Datatype": "Int8", "Format": "kLINEAR"}, "int8"),
                                        ({"Format/Datatype": "Row major linear INT32 format"}, "int32"),
                                        ({"DataType": "BFloat16"}, "bf16"),
                                        ({"Format": "kLINEAR"}, "unknown")])
def test_dtypes(entry, kind):
    assert dtype_of(entry) == kind


@pytest.mark.parametrize("entry", [{"Format/Datatype": "Row major linear UInt8 format"},
                                   {"Format/Datatype": "Channel major UInt8 format"},
                                   {"Datatype": "UInt8", "Format": "kLINEAR"}])
def test_uint8_is_not_read_as_int8(entry):
    """Issue 20 item 9: "uint8" contains "int8"; trex's format table has both UInt8 strings."""
    assert dtype_of(entry) == "uint8"


@pytest.mark.parametrize("metadata,nodes", [
    ("[ONNX Layer: node_matmul]", ["node_matmul"]),
    ("[ONNX Layer: node_matmul | Local Function: LiteMLA]", ["node_matmul"]),  # onnx-tensorrt 10.x
    ("[ONNX Layer: /backbone/MatMul | from torch.onnx | scope: LiteMLA]", ["/backbone/MatMul"]),  # 8.6 doc-string
    ("[ONNX Layer: node_add]\x1f[ONNX Layer: node_div | Local Function: F]", ["node_add", "node_div"]),
])
def test_onnx_layer_names_stop_at_the_first_bar(metadata, nodes):
    """Issue 20 item 6: the node name is the text before " | "."""
    engine = {"Layers": [{"Name": "x", "LayerType": "Myelin", "Inputs": [], "Outputs": [], "Metadata": metadata}]}
    (parsed,) = parse_layers(engine)
    assert parsed.onnx_nodes == nodes and parsed.complete


def test_local_function_metadata_still_shows_the_island_in_fp32():
    engine = json.loads(good_engine(10))
    for item in engine["Layers"]:
        item["Metadata"] = item["Metadata"].replace("]", " | Local Function: LiteMLA]")
    report = check_layers(make_plan(), parse_layers(engine))
    assert report.passed and set(report.shown_fp32) == set(ISLAND.nodes)


@pytest.mark.parametrize("key", ["Datatype", "DataType"])
def test_tensorrt_11_type_key_is_read(key):
    """Issue 20 item 3: with a type-free Format, only the type key tells fp16 from fp32."""
    assert check_layers(make_plan(), parse_layers(good_engine(11, key))).passed
    report = check_layers(make_plan(), parse_layers(good_engine(11, key, matmul="fp16")))
    assert not report.passed and "node_matmul" in report.message()


def test_bindings_all_unknown_fail_instead_of_passing():
    """A schema evit cannot read must not pass the check with nothing checked."""
    engine = json.loads(good_engine(11))
    for item in engine["Layers"]:
        for entry in (*item["Inputs"], *item["Outputs"]):
            entry.pop("Datatype")
    report = check_layers(make_plan(), parse_layers(engine))
    assert not report.passed and report.shown_fp32 == []
    assert report.message().startswith("the layer information cannot be read")
    assert "Dimensions, Format, Location, Name" in report.message()


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evit_deploy.trt.inspect", *map(str, args)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_tensorrt_11_layer_info_through_the_command(tmp_path):
    """Must-show: `python -m evit_deploy.trt.inspect PLAN LAYERS.json` on TensorRT 11 layer information."""
    make_plan().save(tmp_path / "m.trt-plan.json")
    (tmp_path / "fp32.json").write_text(good_engine(11))
    (tmp_path / "fp16.json").write_text(good_engine(11, matmul="fp16"))
    unknown = json.loads(good_engine(11))
    for item in unknown["Layers"]:
        for entry in (*item["Inputs"], *item["Outputs"]):
            entry.pop("Datatype")
    (tmp_path / "unknown.json").write_text(json.dumps(unknown))

    passed = _cli(tmp_path / "m.trt-plan.json", tmp_path / "fp32.json")
    assert passed.returncode == 0 and passed.stdout.startswith("ok: 5 planned fp32 island layer(s) shown in fp32")
    failed = _cli(tmp_path / "m.trt-plan.json", tmp_path / "fp16.json")
    (line,) = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and line.startswith("error: the engine does not run every planned fp32 island")
    assert "node_matmul (fp16" in line
    unreadable = _cli(tmp_path / "m.trt-plan.json", tmp_path / "unknown.json")
    (line,) = unreadable.stderr.strip().splitlines()
    assert unreadable.returncode == 1 and line.startswith("error: the layer information cannot be read")


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
