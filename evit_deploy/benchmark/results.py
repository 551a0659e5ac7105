"""What a benchmark measured, as data: one ``Row`` per cell, the PyTorch eager baselines, and the
configuration that makes shards mergeable. ``to_dict``/``from_dict`` are the ``benchmark.json`` contract;
rendering lives in ``render``, ``outputs`` and ``plots``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from evit_deploy.benchmark.matrix import Cell, MatrixPlace

SCHEMA = 1
OK, CHECK_FAILED, EXPORT_FAILED, RUN_FAILED, SKIPPED = "ok", "check failed", "export failed", "run failed", "skipped"
STATUSES = (OK, CHECK_FAILED, EXPORT_FAILED, RUN_FAILED, SKIPPED)
FAILED = (CHECK_FAILED, EXPORT_FAILED, RUN_FAILED)
_SEVERITY = {OK: 0, SKIPPED: 0, CHECK_FAILED: 1, RUN_FAILED: 2, EXPORT_FAILED: 3}


@dataclass
class Latency:
    """The figures of one profile a row needs (the whole profile stays in ``profile``)."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    throughput_ips: float
    trustworthy: bool
    spread: list[str]  # why not trustworthy (empty when it is)
    runner: str  # the runtime that was timed, e.g. "onnxruntime 1.22.0"


@dataclass
class Metric:
    """The task metric on ``--data`` (percentages): the artifact's, PyTorch's, and what the artifact loses."""

    name: str  # "mIoU" / "top-1"
    artifact: float | None
    reference: float | None
    drop: float | None  # reference - artifact, in points
    images: int


@dataclass
class Row(MatrixPlace):
    """One cell of the matrix and what became of it."""

    target: str
    precision: str
    resolution: list[int]
    device: str
    status: str = OK
    stage: str | None = None  # export / verify / eval / profile: where a failure happened
    reason: str | None = None  # the failure's or the skip's one line
    artifact: str | None = None  # relative to the output folder
    size_bytes: int | None = None
    export_s: float | None = None
    reused: bool = False
    parity: dict[str, Any] | None = None  # passed, failed checks, headline figures
    metric: Metric | None = None
    latency: Latency | None = None
    latency_note: str | None = None  # why there is no latency (needs macOS, needs a GPU, ...)
    speedup: float | None = None  # PyTorch eager p50 / this p50, same machine and threads
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, cell: Cell) -> Row:
        return cls(cell.target, cell.precision, list(cell.resolution), cell.device)

    def fail(self, status: str, stage: str, reason: str) -> None:
        """Record a failure: the gravest so far decides the status and the reason, the others become notes."""
        if _SEVERITY[status] > _SEVERITY[self.status]:
            if self.reason is not None:
                self.notes.append(f"{self.stage}: {self.reason}")
            self.status, self.stage, self.reason = status, stage, reason
        else:
            self.notes.append(f"{stage}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        values = {k: v for k, v in data.items() if k != "key"}
        values["metric"] = Metric(**values["metric"]) if values.get("metric") else None
        values["latency"] = Latency(**values["latency"]) if values.get("latency") else None
        return cls(**values)


@dataclass
class Baseline:
    """PyTorch eager at one resolution on this machine: the speed-up's denominator, the metric's reference."""

    resolution: list[int]
    device: str
    latency: Latency | None = None
    reason: str | None = None  # why there is no latency
    metric: float | None = None  # PyTorch's task metric on --data (the rows' reference)
    host: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        values = dict(data)
        values["latency"] = Latency(**values["latency"]) if values.get("latency") else None
        return cls(**values)


@dataclass
class BenchmarkResult:
    """A benchmark run (or the merge of several shards)."""

    model: str
    task: str
    metric_name: str | None  # the task metric's name when --data was given
    config: dict[str, Any]  # what must agree for shards to merge (``config.fingerprint``)
    rows: list[Row]
    baselines: list[Baseline] = field(default_factory=list)
    shards: list[list[int]] = field(default_factory=list)  # [[index, count], ...]; [] for a whole run
    hosts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status in FAILED]

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.rows) for status in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "model": self.model, "task": self.task, "metric_name": self.metric_name,
            "config": self.config, "shards": self.shards, "counts": self.counts(),
            "rows": [r.to_dict() for r in self.rows], "baselines": [b.to_dict() for b in self.baselines],
            "hosts": self.hosts, "notes": self.notes, "created": self.created, "seconds": round(self.seconds, 1),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        return cls(model=data["model"], task=data["task"], metric_name=data.get("metric_name"),
                   config=data["config"], rows=[Row.from_dict(r) for r in data["rows"]],
                   baselines=[Baseline.from_dict(b) for b in data.get("baselines", [])],
                   shards=[list(s) for s in data.get("shards", [])], hosts=data.get("hosts", []),
                   notes=data.get("notes", []), created=data.get("created", ""), seconds=data.get("seconds", 0.0))
