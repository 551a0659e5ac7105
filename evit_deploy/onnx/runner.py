"""ONNX Runtime as a Runner: CPU by default, CUDA with ``device='cuda'``; per-op times from ORT's profiler."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import LayerTiming, Runner
from evit_deploy.errors import RuntimeMissing, ToolchainError, UsageError
from evit_deploy.onnx.options import OnnxOptions
from evit_deploy.spec import TensorInfo

ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


class OnnxRunner(Runner):
    """ONNX Runtime session; CPU by default, CUDA with ``device='cuda'``.

    ``session`` is the artifact's recorded ONNX options (the manifest's runner section): the
    session is opened with its graph optimisation level, spinning and memory arena.
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None,
                 session: OnnxOptions | None = None) -> None:
        super().__init__()
        self.path = path
        self.device = device
        self.threads = threads
        self.options = session or OnnxOptions()
        self.session: Any = None

    def _session(self, profile_prefix: str | None = None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   ORT_LEVELS[self.options.graph_optimization])
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.spinning else "0")
        options.enable_cpu_mem_arena = self.options.memory_arena
        options.log_severity_level = 3
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        providers = ["CPUExecutionProvider"]
        if self.device in ("cuda", "gpu"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeMissing("onnxruntime here has no CUDA provider; install onnxruntime-gpu or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        elif self.device != "cpu":
            raise UsageError(f"unknown local device {self.device!r} for ONNX Runtime; use cpu or cuda")
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        try:
            return ort.InferenceSession(str(self.path), options, providers=providers)
        except (state.InvalidProtobuf, state.NoModel, state.NoSuchFile, state.InvalidGraph) as err:
            raise UsageError(f"{self.path.name}: not an ONNX model ({_ort_message(err)}); re-export it") from None
        except (state.Fail, state.InvalidArgument, state.NotImplemented, state.RuntimeException, state.EPFail) as err:
            raise ToolchainError(f"{self.path.name}: ONNX Runtime cannot load it: {_ort_message(err)}") from None

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
                "threads": self.threads, "graph_optimization": self.options.graph_optimization,
                "spinning": self.options.spinning, "memory_arena": self.options.memory_arena, "device": self.device}
        if self.device == "cpu" and _has_fp16_weights(self.path):
            info["note"] = ("ONNX Runtime's CPU provider computes most fp16 ops in fp32 without rounding between "
                            "them: this checks the graph, not fp16 arithmetic (the trt target's verify emulates it)")
        return info

    def per_layer(self, feed: dict[str, np.ndarray], iters: int) -> list[LayerTiming]:
        """Operator times from ONNX Runtime's own profiler, summed per node.

        The trace goes to a private temporary folder that is removed afterwards, whatever happens.
        """
        with tempfile.TemporaryDirectory(prefix="evit-ort-prof-") as folder:
            session = self._session(profile_prefix=os.path.join(folder, "ort"))
            for _ in range(iters):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        totals: dict[str, list[Any]] = {}
        for event in events:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            node = event["name"][: -len("_kernel_time")]
            entry = totals.setdefault(node, [event.get("args", {}).get("op_name", "?"), 0.0, 0])
            entry[1] += event["dur"] / 1e3
            entry[2] += 1
        whole = sum(t for _, t, _ in totals.values()) or 1.0
        rows = [LayerTiming(name, op, total / iters, calls // iters or 1, total / whole)
                for name, (op, total, calls) in totals.items()]
        return sorted(rows, key=lambda r: r.total_ms, reverse=True)


def _ort_message(err: Exception) -> str:
    """The first line of an ONNX Runtime error without its ``[ONNXRuntimeError] : 7 : KIND :`` prefix."""
    text = str(err).strip()
    return text.splitlines()[0].split(" : ")[-1].strip() if text else type(err).__name__


def _has_fp16_weights(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)


def _dims(shape: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)


def _ort_dtype(type_name: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
            "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}.get(type_name, "float32")
