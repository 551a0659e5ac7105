"""The Core ML target's recipe options: compute units, deployment targets, compression, islands."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from evit_deploy.contracts import TargetOptions, comma_list
from evit_deploy.errors import UsageError

COMPUTE_UNITS = {"all": "ALL", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE"}
_UNIT_ALIASES = {"cpu": "cpu_only", "gpu": "cpu_and_gpu", "ne": "cpu_and_ne", "ane": "cpu_and_ne",
                 "cpuandgpu": "cpu_and_gpu", "cpuandne": "cpu_and_ne", "cpuandneuralengine": "cpu_and_ne",
                 "cpuonly": "cpu_only"}

# Deployment targets -> the iOS release with the same Core ML specification (coremltools'
# AvailableTarget aliases). ML programs exist from iOS15 / macOS12 / tvOS15 / watchOS8.
_OS_LEVELS: dict[str, dict[str, int]] = {
    "iOS": {str(v): v for v in (13, 14, 15, 16, 17, 18, 26)},
    "macOS": {"10_15": 13, "10_16": 14, "11": 14, "12": 15, "13": 16, "14": 17, "15": 18, "26": 26},
    "tvOS": {str(v): v for v in (13, 14, 15, 16, 17, 18, 26)},
    "watchOS": {"6": 13, "7": 14, "8": 15, "9": 16, "10": 17, "11": 18, "26": 26},
}
MLPROGRAM_MIN = 15
# Core ML specification version -> the first macOS that runs it (coremltools' _SPECIFICATION_VERSION_IOS_*:
# 6 = iOS15/macOS12 ... 9 = iOS18/macOS15, 10 = iOS26/macOS26).
SPEC_MACOS = {6: "12", 7: "13", 8: "14", 9: "15", 10: "26"}
COMPRESSION_MIN = 16  # constexpr_* weight ops arrived with iOS16 / macOS13
GROUPED_PALETTE_MIN = 18  # per-grouped-channel LUTs arrived with iOS18 / macOS15
PALETTE_GROUP = 16  # output channels sharing one LUT from iOS18 on


def _canonical_target(value: str) -> tuple[str, int]:
    text = str(value).strip().replace(".", "_")
    match = re.fullmatch(r"(?i)(ios|macos|tvos|watchos)\s*(\d+(?:_\d+)?)", text)
    if match:
        family = {"ios": "iOS", "macos": "macOS", "tvos": "tvOS", "watchos": "watchOS"}[match.group(1).lower()]
        version = match.group(2)
        levels = _OS_LEVELS[family]
        if version in levels:
            return f"{family}{version}", levels[version]
    known = ", ".join(f"{f}{v}" for f, levels in _OS_LEVELS.items() for v in levels if levels[v] >= MLPROGRAM_MIN)
    raise PydanticCustomError("deployment_target", "unknown deployment target {value}; choose one of {known}",
                              {"value": repr(value), "known": known})


def deployment_level(target: str) -> int:
    return _canonical_target(target)[1]


class CoreMLOptions(TargetOptions):
    compute_units: str = "all"  # a load-time choice: recorded in metadata, used by the macOS runner
    deployment_target: str = "iOS17"
    image_input: bool = False
    compress: Literal["none", "palettize4", "palettize6", "palettize8", "int8"] = "none"
    keep_fp32: list[Literal["attention", "layernorm", "upsample"]] = Field(  # fp32 islands under fp16
        default_factory=lambda: ["attention", "layernorm", "upsample"])

    @field_validator("compute_units", mode="before")
    @classmethod
    def _units(cls, value: Any) -> str:
        key = str(value).strip().lower().replace("-", "_")
        key = _UNIT_ALIASES.get(key.replace("_", ""), key) if key not in COMPUTE_UNITS else key
        if key not in COMPUTE_UNITS:
            raise PydanticCustomError(
                "compute_units", "unknown compute unit {value}; choose one of {allowed}",
                {"value": repr(value), "allowed": ", ".join(COMPUTE_UNITS)},
            )
        return key

    @field_validator("deployment_target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> str:
        name, level = _canonical_target(value)
        if level < MLPROGRAM_MIN:
            raise PydanticCustomError(
                "deployment_target",
                "deployment target {value} is too old for an ML program (.mlpackage), which needs iOS15, "
                "macOS12, tvOS15 or watchOS8 or newer; use e.g. --deployment-target iOS17 (the default)",
                {"value": name},
            )
        return name

    @field_validator("keep_fp32", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return comma_list(value)

    @property
    def level(self) -> int:
        return deployment_level(self.deployment_target)


def device_compute_units(device: str) -> str | None:
    """``--device`` for Core ML: ``cpu`` (this machine, the recipe's compute units), or compute units
    to use instead: ``cpu_and_ne``, ``cpu:cpu_and_ne`` (or, remotely, ``mac:cpu_and_ne``)."""
    key = device.strip().lower().replace("-", "_")
    key = key.removeprefix("cpu:")
    if key in ("cpu", "local", ""):
        return None
    key = _UNIT_ALIASES.get(key.replace("_", ""), key) if key not in COMPUTE_UNITS else key
    if key not in COMPUTE_UNITS:
        raise UsageError(f"unknown device {device!r} for Core ML; use cpu (the recipe's compute units) or compute "
                         f"units: {', '.join(COMPUTE_UNITS)} (e.g. --device cpu:cpu_and_ne)")
    return key
