"""Jetson power, clocks and GPU facts against what the device's own tools print (issue 20 items 11-15).

No Jetson exists here. The device's programs (tegrastats, jetson_clocks, nvidia-smi, sudo) are
stand-ins on PATH that print what the real ones print, each quoted from its source:

* tegrastats, AGX Orin as root (JetPack 5, L4T R35; a `sudo tegrastats` transcript in a public Jetson
  setup guide): ``... VDD_GPU_SOC 2399mW/2399mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 4032mW/4032mW NC 0mW/0mW
  VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW``; AGX Orin on JetPack 7.2 (rbonghi/jetson_stats
  jtop/tests/test_06_tegra_parse.py, "Real tegrastats line from a Jetson AGX Orin Developer Kit running
  JetPack 7.2"), whose rails carry three values;
* tegrastats as a normal user without rails: jetson_stats' emulator (rbonghi/jetson_stats tests/tegrastats,
  ``tegrastats_out``, its random CPU loads fixed here); its maintainer: tegrastats "require[s] the sudo
  elevation" for all information (rbonghi/jetson_stats#52);
* jetson_clocks: NVIDIA's script (``Copyright (c) 2015-2020, NVIDIA CORPORATION``): ``--store`` asks
  "Can I overwrite it? Y/N:" on stdin when the file exists, the lock pins every CPU's
  scaling_min_freq to its max *before* looking up the GPU ("Error! Unknown GPU!", exit 1), and
  ``--restore`` prints "Error: Failed to restore FILE" yet exits 0;
* nvidia-smi on JetPack 6: ``Orin (nvgpu)`` with ``[N/A]`` fields (driver 540.4.0), as quoted in public
  Jetson Orin reports.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evit_deploy import jetson as jetson_tools
from evit_deploy import machine as state
from evit_deploy.errors import UsageError

AGX_ORIN_ROOT = ("04-24-2023 00:01:24 RAM 1282/62795MB (lfb 15152x4MB) SWAP 0/31398MB (cached 0MB) "
                 "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] "
                 "EMC_FREQ 0%@2133 GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0 VIC_FREQ 729 APE 174 CV0@-256C CPU@42.593C "
                 "Tboard@32C SOC2@39.343C Tdiode@33.25C SOC0@39.375C CV1@-256C GPU@-256C tj@42.593C SOC1@40.468C "
                 "CV2@-256C VDD_GPU_SOC 2399mW/2399mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 4032mW/4032mW NC 0mW/0mW "
                 "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
AGX_ORIN_JP7 = ("07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) "
                "CPU [23%@2201,10%@2201,4%@2201,14%@2201,30%@2201,18%@2201,10%@2201,10%@2201,33%@2201,7%@2201,5%@2201,"
                "27%@2201] EMC_FREQ 3%@3199 GR3D_FREQ 12%@[1300,1300] NVENC0 off NVDEC0 off NVJPG0 off NVJPG1 off VIC "
                "off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@52.968C/52.968C soc2@48.406C/48.406C "
                "soc0@49.531C/49.531C gpu@47.625C/47.625C VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV "
                "3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW")
NO_RAILS = ("RAM 385/3984MB (lfb 779x4MB) CPU [12%@204,40%@204,7%@204,3%@204] AO@31C CPU@25C GPU@22C PLL@21.5C "
            "Tdiode@28.75C PMIC@100C Tboard@29C thermal@23.5C")
JETPACK6_NVIDIA_SMI = "Orin (nvgpu), [N/A], 540.4.0"


@pytest.mark.parametrize("line,watts", [(AGX_ORIN_ROOT, 2.399 + 0.400 + 4.032), (AGX_ORIN_JP7, 5.139 + 3.268 + 5.500)])
def test_agx_orin_power_is_the_three_module_rails(line, watts):
    """Item 11: VDDQ_VDD2_1V8AO is inside VIN_SYS_5V0; adding it read 4.4% high on the root line."""
    assert jetson_tools.parse_tegrastats(line) == (pytest.approx(watts), "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0")


def test_a_line_without_rails_gives_no_reading():
    assert jetson_tools.parse_tegrastats(NO_RAILS) is None


def _tools(folder: Path, tools: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in tools.items():
        (folder / name).write_text(body)
        (folder / name).chmod(0o755)
    return folder


def _tegrastats(line: str) -> str:
    return textwrap.dedent(f"""\
        #!{sys.executable}
        import time
        while True:
            print({line!r}, flush=True)
            time.sleep(0.01)
        """)


# sudo as the device has it with a NOPASSWD rule: `sudo -n CMD` runs CMD, `sudo -n -l CMD` names it.
SUDO = '#!/bin/sh\n[ "$1" = -n ] && shift\nif [ "$1" = -l ]; then shift; command -v "$1"; exit $?; fi\nexec "$@"\n'


@pytest.fixture
def jetson(monkeypatch, tmp_path):
    """This machine dressed as a Jetson: a tegra release file and the device's tools on PATH."""
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n")
    monkeypatch.setattr(state, "TEGRA_RELEASE", release)
    bin_dir = _tools(tmp_path / "bin", {"nvpmodel": "#!/bin/sh\nprintf 'NV Power Mode: MAXN\\n0\\n'\n", "sudo": SUDO})
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return bin_dir


def test_a_railless_tegrastats_run_offers_sudo_not_more_iterations(jetson, onnx_artifact, monkeypatch):
    """Item 12 (must-show): lines arrive, none with rails: say so and offer `sudo -n tegrastats`."""
    from evit_deploy import api

    _tools(jetson, {"tegrastats": _tegrastats(NO_RAILS)})
    monkeypatch.setattr(jetson_tools, "tegrastats_command", lambda interval: ["tegrastats", "--interval", str(interval)])
    power = api.profile(onnx_artifact, power=True, warmup=2, iters=60).host["power"]
    assert power["samples"] == 0 and power["lines"] >= 1 and power["mean_w"] is None
    assert power["note"].startswith(f"tegrastats printed {power['lines']} line(s) without power rails")
    assert "`sudo -n tegrastats`" in power["note"] and "--iters" not in power["note"]


def test_rails_are_read_through_sudo_where_it_is_allowed(jetson, monkeypatch):
    """As a normal user with a NOPASSWD rule for tegrastats, evit samples through `sudo -n`."""
    _tools(jetson, {"tegrastats": _tegrastats(AGX_ORIN_ROOT)})
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert jetson_tools.tegrastats_command(50) == ["sudo", "-n", "tegrastats", "--interval", "50"]


def test_power_through_a_profile_on_an_agx_orin(jetson, onnx_artifact):
    from evit_deploy import api

    _tools(jetson, {"tegrastats": _tegrastats(AGX_ORIN_JP7)})
    power = api.profile(onnx_artifact, power=True, warmup=2, iters=60).host["power"]
    assert power["mean_w"] == pytest.approx(13.907) and power["rail"] == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"
    assert power["note"].startswith("module power")


def _sysfs(root: Path) -> dict[str, Path]:
    """Two CPU cores at their idle minimum, as cpufreq shows them."""
    files = {}
    for index in range(2):
        cpufreq = root / f"devices/system/cpu/cpu{index}/cpufreq"
        cpufreq.mkdir(parents=True)
        (cpufreq / "scaling_min_freq").write_text("115200\n")
        (cpufreq / "scaling_max_freq").write_text("2201600\n")
        (root / f"devices/system/cpu/cpu{index}/online").write_text("1\n")
        files[f"cpu{index}"] = cpufreq / "scaling_min_freq"
    return files


def _jetson_clocks(sysfs: Path) -> str:
    """NVIDIA's jetson_clocks flow on a fake sysfs: store/restore "path:value" lines, CPUs pinned before
    the GPU lookup, which fails on a machine its GPU table does not know."""
    return textwrap.dedent(f"""\
        #!/bin/bash
        ACTION=lock
        case "$1" in --store) ACTION=store; CONF_FILE=$2;; --restore) ACTION=restore; CONF_FILE=$2;; esac
        if [ "$ACTION" = store ]; then
            if [ -e "$CONF_FILE" ]; then
                echo "File $CONF_FILE already exists. Can I overwrite it? Y/N:"
                read answer
                case $answer in y | Y) rm -f $CONF_FILE ;; *) echo "Error: file $CONF_FILE already exists!"; exit 1 ;; esac
            fi
            for file in {sysfs}/devices/system/cpu/cpu[0-9]/cpufreq/scaling_min_freq; do
                echo "$file:$(cat $file)" >>"$CONF_FILE"
            done
            exit 0
        fi
        if [ "$ACTION" = restore ]; then
            [ -e "$CONF_FILE" ] || {{ echo "Error: $CONF_FILE file not found !"; exit 1; }}
            for conf in $(cat "$CONF_FILE"); do
                file=$(echo $conf | cut -f1 -d :); data=$(echo $conf | cut -f2 -d :)
                echo "$data" >"$file" 2>/dev/null || echo "Error: Failed to restore $file"
            done
            exit 0
        fi
        for folder in {sysfs}/devices/system/cpu/cpu[0-9]; do
            cat "$folder/cpufreq/scaling_max_freq" >"$folder/cpufreq/scaling_min_freq"
        done
        echo "Error! Unknown GPU!"
        exit 1
        """)


def test_clocks_are_restored_when_jetson_clocks_fails_after_locking_the_cpus(jetson, tmp_path, onnx_artifact):
    """Item 13 (must-show): the lock pins the CPUs, then fails on the GPU; the sysfs reads back unlocked."""
    from evit_deploy import api

    sysfs = tmp_path / "sys"
    files = _sysfs(sysfs)
    _tools(jetson, {"jetson_clocks": _jetson_clocks(sysfs)})
    with pytest.raises(UsageError) as err:
        api.profile(onnx_artifact, lock_clocks=True, warmup=1, iters=2)
    assert str(err.value).startswith("--lock-clocks: `") and "(Error! Unknown GPU!)" in str(err.value)
    assert [f.read_text().strip() for f in files.values()] == ["115200", "115200"]  # restored, not 2201600
    assert state.clocks_locked(str(sysfs)) is False


def test_a_restore_that_prints_an_error_and_exits_0_is_a_failure(jetson, tmp_path):
    """Item 13: jetson_clocks --restore says "Error: Failed to restore FILE" with exit 0."""
    sysfs = tmp_path / "sys"
    _sysfs(sysfs)
    _tools(jetson, {"jetson_clocks": _jetson_clocks(sysfs)})
    conf = tmp_path / "clocks.conf"
    conf.write_text(f"{tmp_path}/gone/devfreq/min_freq:306000000\n")
    problem = jetson_tools._jetson_clocks("--restore", str(conf))
    assert problem is not None and problem.endswith(f"(Error: Failed to restore {tmp_path}/gone/devfreq/min_freq)")


def test_device_tools_never_read_the_workers_stdin(jetson, tmp_path):
    """Item 14: the worker's stdin is the SSH stream; `jetson_clocks --store` on an existing file would
    take its next line as the answer. With no stdin it answers nothing and refuses."""
    sysfs = tmp_path / "sys"
    _sysfs(sysfs)
    _tools(jetson, {"jetson_clocks": _jetson_clocks(sysfs)})
    existing = tmp_path / "clocks.conf"
    existing.write_text("kept\n")
    code = (f"from evit_deploy import jetson; print(jetson._jetson_clocks('--store', {str(existing)!r})); "
            "from evit_deploy import machine; print(repr(machine.run_text(['cat'])))")
    done = subprocess.run([sys.executable, "-c", code], input="Y\nprotocol bytes\n", capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(state.__file__).parents[1])}, timeout=60,
                          check=False)
    refused, cat = done.stdout.strip().splitlines()
    assert f"(Error: file {existing} already exists!)" in refused and cat == "''"
    assert existing.read_text() == "kept\n"


def test_jetpack_6_nvidia_smi_does_not_make_the_orin_a_discrete_gpu(jetson):
    """Item 15: JetPack 6's nvidia-smi answers for the integrated GPU; a Jetson stays a Jetson."""
    _tools(jetson, {"nvidia-smi": f"#!/bin/sh\necho '{JETPACK6_NVIDIA_SMI}'\n"})
    assert state.parse_nvidia_smi(JETPACK6_NVIDIA_SMI) == [{"name": "Orin (nvgpu)", "memory_mb": None,
                                                           "driver": "540.4.0"}]
    (gpu,) = state.gpus()
    assert gpu["shared"] is True and gpu["memory_mb"] == state.memory_mb()
