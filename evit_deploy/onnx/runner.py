"""ONNX Runtime as a Runner: CPU by default, CUDA with ``device='cuda'``; per-op times from ORT's profiler."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import LayerTiming, Runner
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.spec import TensorInfo

ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


class OnnxRunner(Runner):
    """ONNX Runtime session; CPU by default, CUDA with ``device='cuda'``."""

    backend = "onnxruntime"

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None,
                 graph_optimization: str = "all", profile_dir: Path | None = None) -> None:
        super().__init__()
        self.path = path
        self.device = device
        self.threads = threads
        self.graph_optimization = graph_optimization
        self.profile_dir = profile_dir
        self.session: Any = None

    def _session(self, profiling: bool = False) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[self.graph_optimization])
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if profiling:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="evit-ort-prof-"), "ort")
        providers = ["CPUExecutionProvider"]
        if self.device in ("cuda", "gpu"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeMissing("onnxruntime here has no CUDA provider; install onnxruntime-gpu or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        elif self.device != "cpu":
            raise UsageError(f"unknown local device {self.device!r} for ONNX Runtime; use cpu or cuda")
        return ort.InferenceSession(str(self.path), options, providers=providers)

    def load(self) -> None:
        self.session = self._session()
        self.inputs = [TensorInfo(i.name, _dims(i.shape), _ort_dtype(i.type)) for i in self.session.get_inputs()]
        self.outputs = [TensorInfo(o.name, _dims(o.shape), _ort_dtype(o.type)) for o in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        info = {"backend": self.backend, "version": ort.__version__,
                "providers": self.session.get_providers() if self.session else [],
                "threads": self.threads, "graph_optimization": self.graph_optimization, "device": self.device}
        if self.device == "cpu" and _has_fp16_weights(self.path):
            info["note"] = ("ONNX Runtime's CPU provider computes most fp16 ops in fp32 without rounding between "
                            "them: this checks the graph, not fp16 arithmetic (the trt target's verify emulates it)")
        return info

    def per_layer(self, feed: dict[str, np.ndarray], iters: int) -> list[LayerTiming]:
        """Operator times from ONNX Runtime's own profiler, summed per node."""
        session = self._session(profiling=True)
        for _ in range(iters):
            session.run(None, feed)
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
        totals: dict[str, list[Any]] = {}
        for event in events:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            node = event["name"][: -len("_kernel_time")]
            entry = totals.setdefault(node, [event.get("args", {}).get("op_name", "?"), 0.0, 0])
            entry[1] += event["dur"] / 1e3
            entry[2] += 1
        trace.unlink(missing_ok=True)
        whole = sum(t for _, t, _ in totals.values()) or 1.0
        rows = [LayerTiming(name, op, total / iters, calls // iters or 1, total / whole)
                for name, (op, total, calls) in totals.items()]
        return sorted(rows, key=lambda r: r.total_ms, reverse=True)


def _has_fp16_weights(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)


def _dims(shape: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)


def _ort_dtype(type_name: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
            "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}.get(type_name, "float32")
