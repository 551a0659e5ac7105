"""`evit benchmark` end to end at the fast suite's size (seg-B0 at 64x128, seeded weights): every target that
runs here at fp16 and int8, one whose converter fails, scored on a Cityscapes-layout set; its outputs; the
same matrix as two shards, merged; and artifacts reused or, with --force, rebuilt."""
from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from .conftest import BROKEN, MODEL, matrix_args

EXPECTED = [f"{t}/{p}/64x128/cpu" for t, p in (("onnx", "fp16"), ("onnx", "int8"), ("tflite", "fp16"), ("tflite", "int8"),
                                                ("coreml", "fp16"), ("trt", "fp16"), ("trt", "int8"),
                                                (BROKEN, "fp16"), (BROKEN, "int8"))]
FAILING = {f"{BROKEN}/fp16/64x128/cpu", f"{BROKEN}/int8/64x128/cpu"}


def _load(out: Path) -> dict:
    return json.loads((out / "benchmark.json").read_text())


def _exit_code(rows: list[dict]) -> int:
    """1 when any row failed (export, run or a check), else 0."""
    return int(any(r["status"] not in ("ok", "skipped") for r in rows))


@pytest.fixture(scope="module")
def full(run_cli, broken_target, seg_weights, cityscapes, calib_photos, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("benchmark") / "full"
    code, stdout, stderr = run_cli("benchmark", *matrix_args(seg_weights, cityscapes, calib_photos, out))
    return SimpleNamespace(code=code, stdout=stdout, stderr=stderr, out=out, data=_load(out),
                           rows={r["key"]: r for r in _load(out)["rows"]})


def test_every_row_runs_and_the_failing_converter_fails_alone(full) -> None:
    assert list(full.rows) == EXPECTED, full.stderr
    for key in FAILING:
        row = full.rows[key]
        assert row["status"] == "export failed" and row["stage"] == "export"
        assert row["reason"].startswith(f"litert-torch {metadata.version('litert-torch')} failed to convert")
        assert "erfinv" in row["reason"] and row["artifact"] is None
    for key in set(EXPECTED) - FAILING:
        row = full.rows[key]
        assert row["status"] in ("ok", "check failed"), row
        assert (full.out / row["artifact"]).exists() and row["size_bytes"] > 0 and row["export_s"] > 0
        assert row["parity"]["samples"] == 2 and row["metric"]["images"] == 6
        metric = row["metric"]
        assert metric["drop"] == pytest.approx(metric["reference"] - metric["artifact"], abs=1e-9)
        if row["status"] == "check failed":  # only parity can fail here (no --max-drop)
            assert row["stage"] == "verify" and row["reason"].startswith("parity failed: ")
    # one PyTorch reference per resolution: every row's drop is against the same figure
    assert len({full.rows[k]["metric"]["reference"] for k in set(EXPECTED) - FAILING}) == 1
    # exit 1: rows failed; the line names them, the table and files were still written
    failed = [f"{k} ({full.rows[k]['status']})" for k in EXPECTED if full.rows[k]["status"] != "ok"]
    assert full.code == 1
    assert full.stderr.strip().splitlines()[-1] == (f"error: {len(failed)} of {len(EXPECTED)} row(s) failed: "
                                                    + "; ".join(failed))


def test_each_row_is_timed_where_its_runtime_runs(full) -> None:
    eager = [b for b in full.data["baselines"] if b["resolution"] == [64, 128]]
    assert len(eager) == 1 and eager[0]["latency"]["p50_ms"] > 0
    for key in ("onnx/fp16/64x128/cpu", "tflite/fp16/64x128/cpu", "tflite/int8/64x128/cpu"):
        row = full.rows[key]
        assert row["latency"]["p50_ms"] > 0 and row["latency"]["throughput_ips"] > 0
        assert row["speedup"] == pytest.approx(eager[0]["latency"]["p50_ms"] / row["latency"]["p50_ms"], rel=1e-2)
        assert isinstance(row["latency"]["trustworthy"], bool)
        assert row["latency"]["trustworthy"] == (not row["latency"]["spread"])
    coreml = full.rows["coreml/fp16/64x128/cpu"]
    assert coreml["latency"] is None and "needs macOS" in coreml["latency_note"]
    assert coreml["parity"]["runner"] == "mil-interpreter"  # checked here through evit's MIL interpreter
    for key in ("trt/fp16/64x128/cpu", "trt/int8/64x128/cpu"):
        row = full.rows[key]
        assert row["latency"] is None and "needs an NVIDIA GPU" in row["latency_note"]
        assert row["parity"]["runner"] == "onnxruntime" and row["artifact"].endswith(".onnx")


def test_a_rows_metric_is_what_evit_eval_says(full, cityscapes) -> None:
    from evit_deploy.evaluation import evaluate

    row = full.rows["tflite/int8/64x128/cpu"]
    result = evaluate(full.out / row["artifact"], cityscapes)
    assert row["metric"]["name"] == "mIoU"
    assert row["metric"]["artifact"] == pytest.approx(result.artifact.metrics["miou"], abs=1e-9)
    assert row["metric"]["reference"] == pytest.approx(result.reference.metrics["miou"], abs=1e-9)


def test_table_json_csv_markdown_junit_and_both_plots(full) -> None:
    for key in EXPECTED:
        target, precision = key.split("/")[:2]
        assert any(target in line and precision in line for line in full.stdout.splitlines()), key
    assert "torch (eager)" in full.stdout and "export failed" in full.stdout
    with (full.out / "benchmark.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [(r["key"], r["status"]) for r in table] == [(k, full.rows[k]["status"]) for k in EXPECTED]
    markdown = (full.out / "benchmark.md").read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 1 + len(EXPECTED)  # header, PyTorch eager, the rows
    assert "seeded" not in markdown and f"sha256 {full.data['config']['weights']['sha256'][:12]}" in markdown
    suite = ET.parse(full.out / "benchmark.junit.xml").getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == EXPECTED
    failed = {name for name, case in cases.items() if case.find("failure") is not None}
    assert failed == {k for k, r in full.rows.items() if r["status"] != "ok"} and FAILING <= failed
    assert suite.get("failures") == str(len(failed))
    for name in ("latency_vs_accuracy.png", "latency.png"):
        with Image.open(full.out / name) as image:
            assert image.format == "PNG" and image.width > 500 and image.height > 200


def test_two_shards_merged_give_the_table_of_one_run(full, run_cli, seg_weights, cityscapes, calib_photos,
                                                     tmp_path) -> None:
    """Each shard on its own folder (its own machine in CI), the artifacts of the whole run copied in: every
    row is reused, and the merge has the one run's rows and statuses."""
    shards = []
    for index in (1, 2):
        out = tmp_path / f"shard{index}"
        shutil.copytree(full.out / "artifacts", out / "artifacts")
        code, _, stderr = run_cli("benchmark", *matrix_args(seg_weights, cityscapes, calib_photos, out,
                                                            "--shard", f"{index}/2"))
        data = _load(out)
        assert data["shards"] == [[index, 2]] and code == _exit_code(data["rows"]), stderr
        shards.append(data)
    halves = [[r["key"] for r in data["rows"]] for data in shards]
    assert halves == [EXPECTED[0::2], EXPECTED[1::2]]
    assert all(r["reused"] for data in shards for r in data["rows"] if r["key"] not in FAILING)
    merged_out = tmp_path / "merged"
    code, stdout, _ = run_cli("benchmark", "merge", tmp_path / "shard2", tmp_path / "shard1", "--out", merged_out)
    merged = _load(merged_out)
    assert code == _exit_code(merged["rows"]) == 1 and merged["shards"] == [[1, 2], [2, 2]]
    assert [(r["key"], r["status"]) for r in merged["rows"]] == [(k, full.rows[k]["status"]) for k in EXPECTED]
    for row in merged["rows"]:
        before = full.rows[row["key"]]
        assert row["metric"] == before["metric"] and row["parity"] == before["parity"]  # same artifacts, same inputs
    assert all((merged_out / name).is_file() for name in ("benchmark.csv", "benchmark.md", "benchmark.junit.xml",
                                                          "latency.png", "latency_vs_accuracy.png"))
    assert "shard(s) 1/2, 2/2" in stdout


def test_force_rebuilds_what_would_be_reused(full, run_cli, seg_weights, cityscapes, calib_photos, tmp_path) -> None:
    key = "onnx/fp16/64x128/cpu"
    out = tmp_path / "again"
    shutil.copytree(full.out / "artifacts", out / "artifacts")
    manifest = out / full.rows[key]["artifact"].replace(".onnx", ".evit.json")
    made = json.loads(manifest.read_text())["created"]
    args = [MODEL, "--weights", seg_weights, "--targets", "onnx", "--precisions", "fp16", "--resolution", "64x128",
            "--calib", calib_photos, "--samples", 1, "--threads", 1, "--warmup", 0, "--iters", 2, "--out", out]
    code, _, _ = run_cli("benchmark", *args)
    (row,) = _load(out)["rows"]
    assert code == 0 and row["reused"] and row["export_s"] == full.rows[key]["export_s"]
    code, _, _ = run_cli("benchmark", *args, "--calib-samples", 6)  # another recipe: rebuilt, and said why
    (row,) = _load(out)["rows"]
    assert code == 0 and not row["reused"] and "rebuilt: the artifact there was made with another recipe" in row["notes"]
    code, _, _ = run_cli("benchmark", *args, "--calib-samples", 6)
    assert _load(out)["rows"][0]["reused"]
    code, _, _ = run_cli("benchmark", *args, "--calib-samples", 6, "--force")
    (row,) = _load(out)["rows"]
    assert code == 0 and not row["reused"] and json.loads(manifest.read_text())["created"] != made
    assert json.loads(manifest.read_text())["export_seconds"] == pytest.approx(row["export_s"], abs=0.01)
