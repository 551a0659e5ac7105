"""Which CPUs saturate ONNX Runtime's u8s8 int8 kernels (``machine.u8s8_saturates``): x86 without
VNNI does (AVX2's VPMADDUBSW adds product pairs in 16 bits), VNNI x86 and ARM do not."""
from __future__ import annotations

import pytest

from evit_deploy.machine import u8s8_saturates

ZEN3 = "flags\t\t: fpu vme sse sse2 ssse3 fma avx f16c avx2 bmi2 vaes vpclmulqdq rdpid fsrm\n"
CASCADE_LAKE = "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
ALDER_LAKE = "flags\t\t: fpu sse2 avx avx2 avx_vnni\n"


@pytest.mark.parametrize(("cpuinfo", "machine", "saturates"), [
    (ZEN3, "x86_64", True),
    (CASCADE_LAKE, "x86_64", False),
    (ALDER_LAKE, "x86_64", False),
    (ZEN3.replace("avx2", "avx2 avx512_vnni_extra"), "x86_64", True),  # a flag that merely starts alike
    (ZEN3, "aarch64", False),  # ARM: never u8s8 through VPMADDUBSW
    ("processor\t: 0\n", "x86_64", False),  # no flags line: no claim
])
def test_only_x86_without_vnni_saturates(cpuinfo, machine, saturates):
    assert u8s8_saturates(cpuinfo, machine) is saturates
