"""On a real Jetson (``make test-hardware``): power, clocks and GPU facts from the device's own tools.

Everything here skips with the reason elsewhere; tests/remote/test_jetson.py checks the same code
against the tools' quoted output on any machine. Clock locking needs root or passwordless
``sudo -n jetson_clocks``, and leaves the clocks as it found them (the test reads them back).
"""
from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import pytest

from evit_deploy import jetson
from evit_deploy import machine as state

pytestmark = [pytest.mark.jetson,
              pytest.mark.skipif(not state.is_jetson(), reason="needs a Jetson (no /etc/nv_tegra_release here)")]


def _cpu_minimums() -> dict[str, str]:
    return {path: Path(path).read_text().strip()
            for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_min_freq")}


def test_the_state_names_the_board_and_its_software():
    found = state.device_state()
    assert found["kind"] == "jetson" and found["board"] and found["l4t"]
    (gpu,) = state.gpus()
    assert gpu["shared"] is True  # integrated, whatever nvidia-smi says (JetPack 6 has one)


def test_tegrastats_gives_module_power_or_says_why_not():
    sampler = jetson.PowerSampler(interval_ms=100).start()
    sampler.begin()
    time.sleep(1.5)
    sampler.stop()
    power = sampler.summary(throughput_ips=1.0)
    assert power["lines"] >= 5, power
    if power["samples"]:
        assert 1.0 < power["mean_w"] < 100.0 and power["rail"], power
    else:
        assert "without power rails" in power["note"] and "sudo -n tegrastats" in power["note"], power


def test_lock_clocks_locks_and_gives_the_clocks_back():
    if os.geteuid() != 0 and state.run_text(["sudo", "-n", "-l", "jetson_clocks"]) is None:
        pytest.skip("jetson_clocks needs root or passwordless `sudo -n jetson_clocks`")
    before = _cpu_minimums()
    with jetson.locked_clocks():
        assert state.clocks_locked() is True
    assert _cpu_minimums() == before
