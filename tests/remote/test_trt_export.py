"""`evit export --target trt --device NAME`: plan here, engine built on the device, engine + manifest back.

The loopback device has no GPU: it gets a TensorRT version (a dist-info) and a ``trtexec``
that writes an engine file, both on its PYTHONPATH/PATH through the inventory's ``env``.
The plan-only export is the TensorRT target's (another module); where that target is not
in this checkout yet, a stand-in writes a plan artifact of the same shape.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from evit_deploy.manifest import load_manifest

MODEL = "efficientvit-seg-b0-cityscapes"


def _fake_trt_device(root: Path, version: str = "10.3.0") -> dict:
    site = root / "site"
    dist = site / f"tensorrt-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tensorrt\nVersion: {version}\n")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    trtexec = bin_dir / "trtexec"
    trtexec.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
        open(args["saveEngine"], "wb").write(b"fake engine for " + args["onnx"].encode())
        print("&&&& PASSED TensorRT.trtexec")
        """))
    trtexec.chmod(0o755)
    return {"env": {"PYTHONPATH": str(site), "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"},
            "preset": "jetson-orin-nano"}


def test_trt_export_builds_the_engine_on_the_device(cli, inventory, tmp_path):
    inv = inventory(orin=_fake_trt_device(tmp_path / "fake-trt"))
    out = tmp_path / "out"
    result = cli("export", MODEL, "--device", "orin", "--inventory", inv, "--resolution", "64x128", "--out", out,
                 "--json")
    assert result.code == 0, result
    manifest = json.loads(result.stdout)
    engine = out / f"{MODEL}.engine"
    assert manifest["files"][0]["path"] == engine.name and engine.read_bytes().startswith(b"fake engine")
    assert {f["path"] for f in manifest["files"]} >= {f"{MODEL}.trt-plan.json", engine.name}
    build = manifest["details"]["device_build"]
    assert build["device"] == "orin" and build["tensorrt"] == "10.3.0" and build["builder"] == "trtexec"
    assert manifest["versions"]["tensorrt"] == "10.3.0"
    assert load_manifest(engine).target == "trt"  # every file's hash checks out: a complete artifact
    assert not any(n.startswith("plan only") for n in manifest["notes"])
    assert list((tmp_path / "device-work" / "builds").iterdir()) == []  # the device keeps no build leftovers
    plan = json.loads((out / f"{MODEL}.trt-plan.json").read_text())
    assert plan["trt_version"] == "10"  # the plan follows the device's TensorRT


def test_trt_export_needs_tensorrt_on_the_device(cli, inventory, tmp_path):
    inv = inventory(pi={"preset": "raspberry-pi"})
    result = cli("export", MODEL, "--target", "trt", "--device", "pi", "--inventory", inv, "--out", tmp_path / "o")
    assert result.code == 2, result
    assert len(result.error_lines) == 1 and "has no TensorRT" in result.error_lines[0]


def test_trt_version_flag_must_match_the_device(cli, inventory, tmp_path):
    inv = inventory(orin=_fake_trt_device(tmp_path / "fake-trt", version="8.6.2.3"))
    result = cli("export", MODEL, "--device", "orin", "--inventory", inv, "--out", tmp_path / "o",
                 "--trt-version", "10")
    assert result.code == 2, result
    assert "has TensorRT 8.6.2.3" in result.error_lines[0]


@pytest.mark.parametrize("found,option", [("8.5.2.2", "8.5"), ("8.6.2", "8.6"), ("10.3.0", "10"), ("11.0.1", "11")])
def test_device_tensorrt_picks_the_plan_version(found, option):
    from evit_deploy.remote.export import trt_option_version

    assert trt_option_version(found) == option


# ----------------------------------------------------------------------------- device-side failures

FAKES = Path(__file__).resolve().parents[1] / "fakes"
REPO = Path(__file__).resolve().parents[2]
# trtexec's own failing run (NVIDIA/TensorRT#2035, TensorRT 8.2): the builder's coded error, then the summary.
TRTEXEC_FAILURE = """\
[06/07/2022-19:05:53] [I] [TRT] Local timing cache in use. Profiling results in this builder pass will not be stored.
[06/07/2022-19:05:53] [E] Error[10]: [optimizer.cpp::computeCosts::2011] Error Code 10: Internal Error (Could not find any implementation for node {ForeignNode[onnx::Gather_72...ScatterND_170]}.)
[06/07/2022-19:05:53] [E] Error[2]: [builder.cpp::buildSerializedNetwork::609] Error Code 2: Internal Error (Assertion enginePtr != nullptr failed. )
[06/07/2022-19:05:53] [E] Engine could not be created from network
[06/07/2022-19:05:53] [E] Building engine failed
[06/07/2022-19:05:53] [E] Failed to create engine from model.
[06/07/2022-19:05:53] [E] Engine set up failed
&&&& FAILED TensorRT.trtexec [TensorRT v8205] # ./trtexec --onnx=debug.onnx --saveEngine=debug.trt
"""


@pytest.fixture(scope="module")
def plan_artifact(tmp_path_factory) -> Path:
    """A plan-only TensorRT export, as the host uploads it to the device."""
    from evit_deploy import api

    out = tmp_path_factory.mktemp("plan")
    return api.export(MODEL, target="trt", out=out, resolution=(64, 128),
                      options={"plan_only": True, "trt_version": "10", "platform": "jetson"}).artifact


def _device_build(artifact: Path, out: Path, env: dict[str, str]) -> tuple[dict, str]:
    """The device's half of `evit export --device`: the worker's build-trt, its reply and stderr."""
    import io
    import subprocess

    from evit_deploy.remote.protocol import read_message

    done = subprocess.run([sys.executable, "-m", "evit_deploy.remote.worker", "build-trt", str(artifact), "--out",
                           str(out)], capture_output=True, env={**os.environ, **env}, timeout=300, check=False)
    header, _ = read_message(io.BytesIO(done.stdout))
    return header, done.stderr.decode()


def test_a_failing_trtexec_is_one_line_and_exit_3(plan_artifact, tmp_path):
    """Issue 20 item 4: a failed device build is a toolchain failure naming trtexec's coded error."""
    device = tmp_path / "device"
    device.mkdir()
    (device / "trtexec").write_text(f"#!/bin/sh\ncat <<'EOF'\n{TRTEXEC_FAILURE}EOF\nexit 1\n")
    (device / "trtexec").chmod(0o755)
    header, stderr = _device_build(plan_artifact, tmp_path / "build", {"PATH": f"{device}:/usr/bin:/bin"})
    assert header["ok"] is False and header["exit_code"] == 3 and header["kind"] == "ToolchainError"
    assert header["error"].startswith("trtexec failed on the device (exit 1): [06/07/2022-19:05:53] [E] Error[10]: "
                                      "[optimizer.cpp::computeCosts::2011] Error Code 10: Internal Error (Could not "
                                      "find any implementation for node"), header["error"]
    assert "\n" not in header["error"] and "Traceback" not in stderr
    assert not (tmp_path / "build").exists() and [p.name for p in tmp_path.iterdir()] == ["device"]


def test_tensorrt_without_a_gpu_on_the_device_is_runtime_missing(plan_artifact, tmp_path):
    """Issue 20 item 4: TensorRT's bindings installed but no usable GPU: one line, exit 2, no traceback."""
    header, stderr = _device_build(plan_artifact, tmp_path / "build",
                                   {"PYTHONPATH": f"{FAKES}{os.pathsep}{REPO}", "EVIT_FAKE_TRT": "no-gpu"})
    assert header["ok"] is False and header["exit_code"] == 2 and header["kind"] == "runtime_missing"
    assert header["error"].startswith("TensorRT 10.3.0 cannot create its builder here (CUDA initialization failure")
    assert "Traceback" not in stderr and not (tmp_path / "build").exists()
