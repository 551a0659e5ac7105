"""The benchmark matrix: which (target, precision, resolution, device) cells exist, in which order, and
which slice of them a shard runs.

The cells and their order depend only on the request and on what each target supports (static), never
on what is installed here: every shard of a CI matrix, on Linux, macOS or a GPU runner, computes the
same list and takes its own slice of it, so the slices never overlap and always cover the matrix. A
cell that cannot run on this machine stays in the list and is reported as skipped, with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass

from evit_deploy.devices import parse_device_list
from evit_deploy.errors import UsageError
from evit_deploy.requests import BenchmarkRequest
from evit_deploy.spec import Precision
from evit_deploy.targets.base import Target, all_targets, get_target

# Display and slicing order: the portable runtimes first, then the platform ones (issue 17's order).
TARGET_ORDER = ("onnx", "tflite", "coreml", "trt")
PRECISION_ORDER = tuple(p.value for p in Precision)


class MatrixPlace:
    """Where a cell or its result row sits in the matrix: its key, size label and table order."""

    target: str
    precision: str
    resolution: tuple[int, int] | list[int]
    device: str

    @property
    def key(self) -> str:
        """Unique within a benchmark: ``onnx/fp16/512x1024/cpu``."""
        return f"{self.target}/{self.precision}/{self.size}/{self.device}"

    @property
    def size(self) -> str:
        return f"{self.resolution[0]}x{self.resolution[1]}"

    def sort_key(self) -> tuple[object, ...]:
        return order_key(self.target, self.precision, self.resolution, self.device)


@dataclass(frozen=True)
class Cell(MatrixPlace):
    """One row of the matrix, before it has run."""

    target: str
    precision: str
    resolution: tuple[int, int]
    device: str


def order_key(target: str, precision: str, resolution: tuple[int, int] | list[int], device: str) -> tuple[object, ...]:
    """Where a row sits in the table: by target, precision, resolution (small first), device."""
    rank = TARGET_ORDER.index(target) if target in TARGET_ORDER else len(TARGET_ORDER)
    return (rank, target, PRECISION_ORDER.index(precision), tuple(resolution), device)


@dataclass
class Matrix:
    """Every cell of the request, and what the request asked for that no target supports."""

    cells: list[Cell]
    unsupported: list[str]  # "coreml int8": left out, said in the notes

    def shard(self, index: int, count: int) -> list[Cell]:
        """The ``index``-th (1-based) of ``count`` slices: every count-th cell, so that each slice gets a
        share of every target rather than one slice all the slow converters."""
        return self.cells[index - 1::count]


def targets_of(request: BenchmarkRequest) -> list[Target]:
    """The targets asked for (default: all), each named once; an unknown name is a usage error."""
    names = request.targets or sorted(all_targets(), key=lambda n: order_key(n, "fp32", (0, 0), ""))
    targets: dict[str, Target] = {}
    for name in names:
        target = get_target(name)
        targets.setdefault(target.name, target)
    return list(targets.values())


def plan_matrix(request: BenchmarkRequest, default_resolution: tuple[int, int]) -> Matrix:
    """Every target x precision x resolution x device the request names, in table order."""
    precisions = request.precisions or list(PRECISION_ORDER)
    resolutions = request.resolutions or [default_resolution]
    devices = parse_device_list(request.device)
    if len(set(devices)) != len(devices):
        raise UsageError(f"--device {request.device}: a device is named twice")
    cells, unsupported = [], []
    for target in targets_of(request):
        supported = [p for p in precisions if p in target.precisions]
        unsupported += [f"{target.name} {p}" for p in precisions if p not in target.precisions]
        cells += [Cell(target.name, p, r, d) for p in supported for r in resolutions for d in devices]
    if not cells:
        raise UsageError(f"no target supports the precisions asked for ({', '.join(precisions)}): "
                         f"{', '.join(unsupported)}")
    return Matrix(sorted(cells, key=Cell.sort_key), unsupported)
