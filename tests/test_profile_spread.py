"""`profile` says when the timed runs disagree too much for p50 to mean anything (issue 17: p50 684 ms with
min 299 ms and std 167 ms went out without a word), in the table, the JSON and a warning line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evit_deploy.profiling import SPREAD_LIMITS, LatencyStats, ProfileResult


def _result(samples: list[float]) -> ProfileResult:
    return ProfileResult(artifact="out/m.onnx", model="m", target="onnx", precision="fp32", batch=1,
                         input_shape=[1, 3, 64, 128], threads=2, warmup=1, iters=len(samples),
                         latency_ms=LatencyStats.of(samples), throughput_ips=1.0, load_s=0.1, first_inference_ms=1.0,
                         peak_rss_mb=1.0, rss_before_load_mb=1.0, runner={"backend": "onnxruntime"})


def test_the_issues_busy_machine_is_flagged() -> None:
    """Runs like the issue's: most near 684 ms, some near the 299 ms the model really needs."""
    samples = [299.0, 305.0, 420.0] + [684.0 + d for d in range(-30, 31, 5)] + [900.0, 980.0]
    stats = LatencyStats.of(samples)
    spread = stats.spread()
    assert not spread.trustworthy
    assert spread.p50_over_min == pytest.approx(stats.p50 / 299.0, rel=1e-3) and spread.p50_over_min > 2
    assert any(r.startswith("p50 is 2.") and r.endswith("x the fastest run") for r in spread.reasons)
    assert any(r.startswith("std is ") for r in spread.reasons)


def test_steady_runs_are_trusted() -> None:
    rng = np.random.default_rng(0)
    samples = list(20.0 + rng.normal(0, 0.4, 50))
    spread = LatencyStats.of(samples).spread()
    assert spread.trustworthy and spread.reasons == [] and spread.summary() == "ok"


@pytest.mark.parametrize(("samples", "reason"), [
    ([10.0] * 8 + [14.0, 14.0], "p90 is 1.40x p50"),  # a tail: a fifth of the runs 40% slower
    ([10.0] * 9 + [6.0], "p50 is 1.67x the fastest run"),  # one run much faster than the rest
])
def test_each_limit_on_its_own(samples: list[float], reason: str) -> None:
    spread = LatencyStats.of(samples).spread()
    assert reason in spread.reasons


def test_limits_are_what_the_json_says() -> None:
    data = _result([10.0] * 9 + [6.0]).to_dict()
    assert data["spread"]["trustworthy"] is False and data["spread"]["limits"] == SPREAD_LIMITS
    assert data["spread"]["p50_over_min"] == pytest.approx(10 / 6, rel=1e-3)
    json.dumps(data)  # the JSON contract stays serialisable


def test_the_table_and_the_warning_say_it(capsys) -> None:
    from rich.console import Console

    from evit_deploy.cli.profile import _warn_unstable
    from evit_deploy.report import profile_table

    unsteady, steady = _result([10.0] * 9 + [6.0]), _result([10.0] * 10)
    console = Console(width=200, record=True)
    console.print(profile_table([unsteady, steady]))
    row = next(line for line in console.export_text().splitlines() if " spread " in line)
    assert "unstable: p50 is 1.67x the fastest run" in row and row.rstrip(" │").endswith(" ok")
    _warn_unstable([unsteady, steady])
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("warning: m.onnx on cpu: latency unstable: p50 is 1.67x")
