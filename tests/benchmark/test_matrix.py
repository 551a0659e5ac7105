"""The matrix and its shards, the Pareto front, and what makes two runs mergeable: small pieces, checked by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from evit_deploy.benchmark.config import differences, folder_fingerprint
from evit_deploy.benchmark.matrix import plan_matrix
from evit_deploy.benchmark.plots import Point, pareto_front
from evit_deploy.benchmark.render import short_need
from evit_deploy.benchmark.results import CHECK_FAILED, EXPORT_FAILED, OK, RUN_FAILED, Row
from evit_deploy.requests import BenchmarkRequest

SEG = "efficientvit-seg-b0-cityscapes"


def _plan(**options: object):
    return plan_matrix(BenchmarkRequest.parse(model=SEG, **options), (1024, 2048))


def test_the_default_matrix_is_every_target_at_every_precision_it_has() -> None:
    matrix = _plan()
    assert [c.key for c in matrix.cells] == [
        "onnx/fp32/1024x2048/cpu", "onnx/fp16/1024x2048/cpu", "onnx/int8/1024x2048/cpu",
        "tflite/fp32/1024x2048/cpu", "tflite/fp16/1024x2048/cpu", "tflite/int8/1024x2048/cpu",
        "coreml/fp32/1024x2048/cpu", "coreml/fp16/1024x2048/cpu",
        "trt/fp32/1024x2048/cpu", "trt/fp16/1024x2048/cpu", "trt/int8/1024x2048/cpu"]
    assert matrix.unsupported == ["coreml int8"]


def test_resolutions_and_devices_multiply_in_table_order() -> None:
    matrix = _plan(targets="trt,onnx", precisions="fp16", resolutions="128x256,64x128", device="cpu,orin")
    assert [c.key for c in matrix.cells] == [
        "onnx/fp16/64x128/cpu", "onnx/fp16/64x128/orin", "onnx/fp16/128x256/cpu", "onnx/fp16/128x256/orin",
        "trt/fp16/64x128/cpu", "trt/fp16/64x128/orin", "trt/fp16/128x256/cpu", "trt/fp16/128x256/orin"]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 12])
def test_shards_cover_the_matrix_once(count: int) -> None:
    matrix = _plan(resolutions="64x128,128x256")
    slices = [matrix.shard(index, count) for index in range(1, count + 1)]
    keys = [c.key for part in slices for c in part]
    assert sorted(keys) == sorted(c.key for c in matrix.cells) and len(keys) == len(set(keys))
    assert max(map(len, slices)) - min(map(len, slices)) <= 1  # balanced
    assert slices == [_plan(resolutions="64x128,128x256").shard(i, count) for i in range(1, count + 1)]


def test_a_shard_takes_a_share_of_every_target() -> None:
    """Every other cell, not the first half: the slow converters are not all on one runner."""
    first, second = (_plan().shard(i, 2) for i in (1, 2))
    assert {c.target for c in first} == {c.target for c in second} == {"onnx", "tflite", "coreml", "trt"}


def test_pareto_front() -> None:
    def point(name: str, ms: float, acc: float) -> Point:
        return Point(name, "onnx", ms, acc, True)

    points = [point("slow-best", 90, 80), point("fast-poor", 10, 60), point("dominated", 50, 60),
              point("middle", 40, 75), point("tie-slower", 45, 75), point("rounding-above", 60, 75.0002)]
    assert [p.label for p in pareto_front(points)] == ["fast-poor", "middle", "slow-best"]


@pytest.mark.parametrize(("reason", "short"), [
    ("Core ML latency needs macOS with the Core ML runtime; here evit can only check", "needs macOS"),
    ("TensorRT latency needs an NVIDIA GPU; here the typed ONNX runs on ONNX Runtime", "needs an NVIDIA GPU"),
    ("something else entirely", "not timed here"),
])
def test_the_latency_cell_says_what_is_needed(reason: str, short: str) -> None:
    assert short_need(reason) == short


def test_the_gravest_failure_is_the_rows_status() -> None:
    row = Row("onnx", "fp16", [64, 128], "cpu")
    row.fail(CHECK_FAILED, "verify", "parity failed")
    row.fail(RUN_FAILED, "profile", "runtime crashed")
    row.fail(CHECK_FAILED, "eval", "dropped 3 points")
    assert (row.status, row.stage, row.reason) == (RUN_FAILED, "profile", "runtime crashed")
    assert row.notes == ["verify: parity failed", "eval: dropped 3 points"]
    fresh = Row("onnx", "fp16", [64, 128], "cpu")
    fresh.fail(EXPORT_FAILED, "export", "converter crashed")
    assert fresh.status == EXPORT_FAILED and Row.from_dict(fresh.to_dict()) == fresh and OK != fresh.status


def test_folders_are_identified_by_content_not_place(tmp_path: Path) -> None:
    for place in ("runner-a", "runner-b"):
        (tmp_path / place / "val").mkdir(parents=True)
        (tmp_path / place / "val" / "x.png").write_bytes(b"12345")
    a, b = folder_fingerprint(tmp_path / "runner-a"), folder_fingerprint(tmp_path / "runner-b")
    assert a == b and a["files"] == 1
    (tmp_path / "runner-b" / "val" / "x.png").write_bytes(b"123456")
    assert folder_fingerprint(tmp_path / "runner-b") != a


def test_configurations_differ_by_content_not_paths() -> None:
    a = {"model": "m", "profile": {"iters": 20, "threads": 2}, "paths": {"data": "/home/a/data"}}
    b = {"model": "m", "profile": {"iters": 50, "threads": 2}, "paths": {"data": "/Users/b/data"}}
    assert differences(a, a | {"paths": {"data": "elsewhere"}}) == []
    assert differences(a, b) == ["profile (iters 20 vs 50)"]
