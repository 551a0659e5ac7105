"""`evit targets` lists every registered target with what it needs and whether it works here."""
from __future__ import annotations

import json


def test_targets_lists_every_target_with_its_needs(cli):
    result = cli("targets", "--json")
    assert result.code == 0, result
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"onnx", "tflite", "coreml", "trt"} <= set(rows)
    assert rows["onnx"]["extensions"] == [".onnx"] and "fp16" in rows["onnx"]["precisions"]
    assert "evit-deploy[tflite]" in rows["tflite"]["requires"]
    assert rows["onnx"]["export_here"] == "yes"  # the dev install has the onnx extra


def test_targets_table(cli):
    result = cli("targets")
    assert result.code == 0 and "coreml" in result.stdout
