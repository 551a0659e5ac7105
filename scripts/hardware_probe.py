#!/usr/bin/env python
"""Say what hardware evit's hardware tests can use here, before ``make test-hardware`` runs them.

    .venv/bin/python scripts/hardware_probe.py            # what was found, which test groups will run
    .venv/bin/python scripts/hardware_probe.py --markers  # the pytest -m expression (all three groups)

The three groups are pytest markers: ``gpu`` (NVIDIA GPU + TensorRT + cuda-python), ``macos`` (the
Core ML runtime), ``jetson`` (a Jetson with JetPack). All three are always selected: a test whose
hardware is missing skips with the reason, so the log shows what was and was not checked.
"""
from __future__ import annotations

import argparse
import platform
import sys

MARKERS = ("gpu", "macos", "jetson")


def nvidia() -> tuple[list[str], str | None]:
    """Lines about the NVIDIA stack, and why the gpu tests cannot run (None: they can)."""
    from evit_deploy.machine import gpus
    from evit_deploy.trt.build import gpu_unavailable
    from evit_deploy.trt.stack import describe

    found = describe()
    smi = [g for g in gpus() if not g.get("shared")]
    driver = smi[0]["driver"] if smi else "-"
    lines = [f"GPU: {found['gpu'] or (smi[0]['name'] if smi else 'none found')}; driver {driver} "
             f"(CUDA {found['driver_cuda'] or '-'}); cuda-python {found['cuda_python'] or 'not installed'}; "
             f"TensorRT {found['tensorrt'] or 'not installed'}"
             + (f" (wheel for CUDA {found['tensorrt_wheel_cuda']})" if found["tensorrt_wheel_cuda"] else "")]
    return lines, gpu_unavailable()


def macos() -> tuple[list[str], str | None]:
    from evit_deploy.coreml.tools import macos_runtime_missing
    from evit_deploy.dependencies import first_version
    from evit_deploy.machine import cpu_model

    version = platform.mac_ver()[0]
    line = (f"macOS {version}, {cpu_model()}; coremltools {first_version('coremltools') or 'not installed'}"
            if version else f"macOS: no ({platform.system()})")
    return [line], macos_runtime_missing()


def jetson() -> tuple[list[str], str | None]:
    from evit_deploy.machine import device_state, is_jetson

    if not is_jetson():
        return ["Jetson: no (no /etc/nv_tegra_release)"], "not a Jetson"
    state = device_state()
    line = (f"Jetson: {state['board'] or 'unknown model'}, L4T {state['l4t'] or '?'}, "
            f"JetPack {state['jetpack'] or '?'}, TensorRT {state['tensorrt'] or 'not found'}")
    return [line], None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markers", action="store_true", help="print only the pytest -m expression")
    if parser.parse_args().markers:
        print(" or ".join(MARKERS))
        return 0
    will, wont = [], []
    for marker, probe in zip(MARKERS, (nvidia, macos, jetson)):
        lines, missing = probe()
        for line in lines:
            print(line)
        (wont if missing else will).append(f"{marker} ({missing})" if missing else marker)
    print(f"will run: {', '.join(will) or 'none'}" + (f"; will skip: {'; '.join(wont)}" if wont else ""))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
