"""The pieces that need no sshd: quoting, the wire format, inventory rules, Jetson state and power parsing."""
from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import tarfile
import textwrap
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from evit_deploy import jetson
from evit_deploy import machine as state
from evit_deploy.devices import Device, is_local, parse_device_list, parse_inventory, resolve
from evit_deploy.errors import UsageError
from evit_deploy.remote import protocol
from evit_deploy.remote.ssh import SshTransport, quote_command, worker_command

NASTY = ["a b", "$(touch /tmp/x)", "; rm -rf ~", "`id`", "it's", '"q"', "x\ny", "~/p", "*", "--opt", ""]


def test_every_word_reaches_the_remote_shell_as_one_argument():
    line = quote_command(NASTY)
    assert shlex.split(line) == NASTY
    out = subprocess.run(["sh", "-c", f"printf '%s\\0' {line}"], capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [w.encode() for w in NASTY]


def test_ssh_argv_is_batch_mode_with_host_key_checking_left_on(tmp_path):
    key = tmp_path / "id"
    key.write_text("k")
    d = Device(name="orin", host="orin.lab", user="nvidia", port=2222, identity_file=str(key),
               env={"LD_LIBRARY_PATH": "/usr/lib/a b"}, evit="/opt/evit env/bin/evit --flag")
    argv = SshTransport(d).argv(["profile", "x; y"])
    assert "BatchMode=yes" in argv and "ConnectTimeout=10" in argv
    assert not any("StrictHostKeyChecking" in a for a in argv)  # the user's setting (default: refuse unknown)
    assert argv[argv.index("--") + 1] == "orin.lab"
    remote = shlex.split(argv[-1])
    assert remote == ["env", "LD_LIBRARY_PATH=/usr/lib/a b", "/opt/evit", "env/bin/evit", "--flag", "_worker",
                      "profile", "x; y"]
    assert worker_command(Device(name="p", host="h", python="/usr/bin/python3"))[-2:] == ["-m",
                                                                                        "evit_deploy.remote.worker"]


def test_missing_identity_file_is_a_usage_error(tmp_path):
    d = Device(name="x", host="h", identity_file=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="identity_file"):
        SshTransport(d).ssh_argv()


def test_messages_skip_login_noise_and_carry_arrays():
    arrays = {"input": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)}
    stream = io.BytesIO()
    stream.write(b"Welcome to Ubuntu\nlast login: never\n")
    protocol.write_message(stream, {"ok": True}, protocol.pack_arrays(arrays))
    stream.seek(0)
    header, payload = protocol.read_message(stream)
    assert header["ok"] is True
    np.testing.assert_array_equal(protocol.unpack_arrays(payload)["input"], arrays["input"])
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.read_message(io.BytesIO(b"bash: evit: command not found\n"))
    assert err.value.noise == ["bash: evit: command not found"]


def test_pickled_arrays_are_refused():
    buffer = io.BytesIO()
    np.savez(buffer, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        protocol.unpack_arrays(buffer.getvalue())


def test_local_devices_and_device_lists():
    assert all(is_local(d) for d in ("cpu", "cuda", "CUDA:1", "gpu"))
    assert not is_local("orin") and not is_local("orin:cpu")
    assert parse_device_list("a, b,c") == ["a", "b", "c"]
    with pytest.raises(UsageError):
        parse_device_list("a,,b")


def test_inventory_defaults_presets_and_runtime_suffix():
    inv = parse_inventory({"defaults": {"user": "nvidia"}, "devices": {
        "orin": {"host": "orin.lab", "preset": "jetson-orin"},
        "pi": {"host": "10.0.0.5", "user": "pi", "preset": "raspberry-pi"},
    }})
    orin, runtime = resolve("orin", inv)
    assert orin.user == "nvidia" and runtime == "cuda" and orin.default_target == "trt"
    assert resolve("orin:cpu", inv)[1] == "cpu"
    pi = inv.get("pi")
    assert pi.user == "pi" and pi.default_target == "tflite" and pi.default_threads == 4
    with pytest.raises(UsageError, match="unknown device 'nano'"):
        inv.get("nano")


def test_workdir_and_names_cannot_smuggle_options():
    for bad in ({"name": "x", "host": "-oProxyCommand=id"}, {"name": "-x", "host": "h"},
                {"name": "x", "host": "h", "user": "-l"}, {"name": "x", "host": "h", "env": {"A B": "1"}},
                {"name": "x", "host": "h", "ssh_options": {"Proxy Command": "id"}}):
        with pytest.raises(ValueError):
            Device.model_validate(bad)


# ----------------------------------------------------------------------------- Jetson state

ORIN_NANO = ("RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729,0%@729,0%@729,off,off] "
             "EMC_FREQ 0% GR3D_FREQ 0% cpu@47.5C soc2@46.5C VDD_IN 4758mW/4758mW VDD_CPU_GPU_CV 555mW/555mW "
             "VDD_SOC 1348mW/1348mW")
AGX_ORIN = ("RAM 5136/30536MB CPU [1%@1190,0%@1190] GR3D_FREQ 0% VDD_GPU_SOC 3064mW/3064mW "
            "VDD_CPU_CV 766mW/766mW VIN_SYS_5V0 3916mW/3916mW VDDQ_VDD2_1V8AO 706mW/706mW")
NANO_JP4 = ("RAM 1722/3956MB (lfb 5x2MB) CPU [9%@1479,4%@1479] EMC_FREQ 0% GR3D_FREQ 0% PLL@33C "
            "POM_5V_IN 2913/2913 POM_5V_GPU 0/0 POM_5V_CPU 414/414")


def test_tegrastats_lines_give_board_power():
    assert jetson.parse_tegrastats(ORIN_NANO) == (4.758, "VDD_IN")
    assert jetson.parse_tegrastats(NANO_JP4) == (2.913, "POM_5V_IN")
    watts, rail = jetson.parse_tegrastats(AGX_ORIN)  # module power: VDDQ_VDD2_1V8AO is inside VIN_SYS_5V0
    assert watts == pytest.approx(3.064 + 0.766 + 3.916) and rail == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"
    assert jetson.parse_tegrastats("RAM 1/2MB SWAP 0/0MB") is None


def test_nvpmodel_and_l4t_versions():
    assert state.nvpmodel_mode("NV Power Mode: MAXN\n0") == {"name": "MAXN", "id": 0}
    assert state.nvpmodel_mode("NV Fan Mode:quiet\nNV Power Mode: 15W\n2") == {"name": "15W", "id": 2}
    assert state.l4t_version("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic") == "36.3.0"
    assert state.l4t_version(None) is None
    summary = state.state_summary({"kind": "jetson", "power_mode": {"name": "MAXN"}, "clocks_locked": True})
    assert summary == "MAXN · clocks locked"


def test_power_sampler_keeps_only_the_timed_window(tmp_path):
    fake = tmp_path / "tegrastats"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, time
        for watts in range(200):
            print("RAM 1/2MB VDD_IN %dmW/%dmW VDD_SOC 1mW/1mW" % (5000, 5000), flush=True)
            time.sleep(0.01)
        """))
    fake.chmod(0o755)
    sampler = jetson.PowerSampler(command=[str(fake)], interval_ms=10).start()
    import time

    time.sleep(0.1)
    sampler.begin()
    time.sleep(0.3)
    sampler.end()
    sampler.stop()
    summary = sampler.summary(throughput_ips=100.0)
    assert summary["samples"] >= 5 and summary["mean_w"] == pytest.approx(5.0)
    assert summary["mj_per_image"] == pytest.approx(50.0)  # 5 W / 100 img/s = 50 mJ per image
    assert summary["rail"] == "VDD_IN"


def test_power_and_clocks_off_jetson_say_unsupported(monkeypatch, tmp_path):
    monkeypatch.setattr(state, "TEGRA_RELEASE", tmp_path / "absent")
    conditions = jetson.ProfileConditions(lock_clocks=False, power=True, warmup=1, on_iteration=lambda d, t: None)
    with pytest.raises(UsageError, match="supported on Jetson devices only"), conditions.applied():
        pass
    with pytest.raises(UsageError, match="Jetson devices only"), jetson.locked_clocks():
        pass


def _sysfs(root: Path, cpus: list[tuple[str, str, str]], gpu: tuple[str, str] | None) -> str:
    for index, (online, low, high) in enumerate(cpus):
        cpu = root / "devices/system/cpu" / f"cpu{index}"
        (cpu / "cpufreq").mkdir(parents=True)
        (cpu / "online").write_text(online)
        (cpu / "cpufreq/scaling_min_freq").write_text(low)
        (cpu / "cpufreq/scaling_max_freq").write_text(high)
    if gpu:
        dev = root / "class/devfreq/17000000.ga10b"
        dev.mkdir(parents=True)
        (dev / "min_freq").write_text(gpu[0])
        (dev / "max_freq").write_text(gpu[1])
    return str(root)


def test_clocks_locked_reads_min_against_max(tmp_path):
    locked = [("1", "1510400", "1510400"), ("0", "115200", "1510400")]  # an offline core does not count
    assert state.clocks_locked(_sysfs(tmp_path / "a", locked, ("624750000", "624750000"))) is True
    assert state.clocks_locked(_sysfs(tmp_path / "b", locked, ("306000000", "624750000"))) is False
    assert state.clocks_locked(_sysfs(tmp_path / "c", [("1", "115200", "1510400")], None)) is False
    assert state.clocks_locked(str(tmp_path / "none")) is None


def test_device_state_here_has_cpu_and_governor_keys():
    found = state.device_state()
    assert found["cpu"] and "cpu_governor" in found and found["kind"]


# ----------------------------------------------------------------------------- worker uploads


def _tar(entries: list[tuple[str, bytes]], links: bool = False) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if links:
            info = tarfile.TarInfo("link")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("entries,links", [([("../escape", b"x")], False), ([("/abs", b"x")], False),
                                           ([("m.evit.json", b"{}")], True)])
def test_uploads_cannot_write_outside_their_folder(tmp_path, entries, links):
    from evit_deploy.remote.worker import op_receive

    with pytest.raises(UsageError, match="refusing"):
        op_receive(Namespace(dir=str(tmp_path / "store" / "abc")), _tar(entries, links))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "store" / "abc").exists()


def test_worker_modules_do_not_import_torch():
    code = ("import sys; sys.modules['torch'] = None; "
            "import evit_deploy.remote.worker, evit_deploy.machine, evit_deploy.api, evit_deploy.profiling; "
            "from evit_deploy.targets.base import all_targets; all_targets(); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_import_of_package_and_cli_stays_cheap():
    code = "import sys, evit_deploy.devices, evit_deploy.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "False", done.stderr
    assert Path(sys.executable).exists()


@pytest.fixture
def fake_jetson(monkeypatch, tmp_path):
    """This machine dressed as a Jetson: a tegra release file, and tegrastats/jetson_clocks on PATH."""
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n")
    monkeypatch.setattr(state, "TEGRA_RELEASE", release)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "jetson_clocks.log"
    (bin_dir / "tegrastats").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys, time
        while True:
            print("RAM 1/2MB VDD_IN 7000mW/7000mW VDD_CPU_GPU_CV 2000mW/2000mW", flush=True)
            time.sleep(0.01)
        """))
    (bin_dir / "jetson_clocks").write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n")
    (bin_dir / "nvpmodel").write_text("#!/bin/sh\nprintf 'NV Power Mode: MAXN\\n0\\n'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return log


def test_power_is_sampled_during_the_timed_runs(fake_jetson, onnx_artifact):
    from evit_deploy import api

    result = api.profile(onnx_artifact, power=True, warmup=2, iters=60)
    power = result.host["power"]
    assert power["samples"] >= 1 and power["mean_w"] == pytest.approx(7.0) and power["rail"] == "VDD_IN"
    assert power["mj_per_image"] == pytest.approx(7.0 * 1e3 / result.throughput_ips, rel=1e-3)
    assert result.host["state"]["kind"] == "jetson" and result.host["state"]["l4t"] == "36.3.0"
    assert result.host["state"]["power_mode"] == {"name": "MAXN", "id": 0}
    assert not fake_jetson.exists()  # --power alone never touches the clocks


@pytest.mark.skipif(os.geteuid() != 0, reason="jetson_clocks runs through sudo -n when not root")
def test_lock_clocks_stores_locks_and_restores(fake_jetson, onnx_artifact):
    from evit_deploy import api

    result = api.profile(onnx_artifact, lock_clocks=True, warmup=1, iters=3)
    calls = fake_jetson.read_text().splitlines()
    assert [c.split()[0] if c else "" for c in calls] == ["--store", "", "--restore"]
    assert calls[0].split()[1] == calls[2].split()[1]  # restored from the file it stored
    assert result.host["state"]["clocks_locked_by_evit"] is True
