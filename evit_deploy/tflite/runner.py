"""ai-edge-litert's interpreter as a Runner (no torch: devices run it), per-op times from LiteRT's profiler."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import LayerTiming, Runner
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.spec import TensorInfo
from evit_deploy.tflite.logs import native_logs_quiet
from evit_deploy.tflite.options import missing
from evit_deploy.toolchain import toolchain_error


class TfliteRunner(Runner):
    """ai-edge-litert's interpreter with the XNNPACK CPU delegate (``xnnpack=False``: reference kernels).

    ``inputs``/``outputs`` give the names and layouts evit uses (the manifest's); the
    interpreter's own tensors are matched to them by position.
    """

    backend = "litert"

    def __init__(self, path: Path, *, threads: int | None = None, inputs: list[TensorInfo] | None = None,
                 outputs: list[TensorInfo] | None = None, xnnpack: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.xnnpack = xnnpack
        self._declared_inputs = inputs or []
        self._declared_outputs = outputs or []
        self.interpreter: Any = None
        self._in_index: list[int] = []
        self._out_index: list[int] = []

    def load(self) -> None:
        reason = missing("ai_edge_litert")
        if reason:
            raise RuntimeMissing(reason)
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = OpResolverType.AUTO if self.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        with native_logs_quiet() as logs:
            try:
                self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads,
                                               experimental_op_resolver_type=resolver)
                self.interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as err:
                tail = "; ".join(line for line in logs[-3:] if line.strip())
                raise UsageError(f"{self.path.name}: LiteRT cannot load it: {str(err).splitlines()[0]}"
                                 + (f" ({tail})" if tail else "")) from None
        details_in = self.interpreter.get_input_details()
        details_out = self.interpreter.get_output_details()
        self._in_index = [d["index"] for d in details_in]
        self._out_index = [d["index"] for d in details_out]
        self.inputs = [self._merge(d, self._declared_inputs, i, "input") for i, d in enumerate(details_in)]
        self.outputs = [self._merge(d, self._declared_outputs, i, "logits") for i, d in enumerate(details_out)]

    @staticmethod
    def _merge(detail: dict[str, Any], declared: list[TensorInfo], index: int, default: str) -> TensorInfo:
        shape = tuple(int(d) for d in detail["shape"])
        dtype = np.dtype(detail["dtype"]).name
        if index < len(declared):
            return TensorInfo(declared[index].name, shape, dtype, declared[index].layout)
        return TensorInfo(default if index == 0 else f"{default}_{index}", shape, dtype, "NCHW")

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for info, index in zip(self.inputs, self._in_index):
            self.interpreter.set_tensor(index, np.ascontiguousarray(feed[info.name]))
        try:
            self.interpreter.invoke()
        except RuntimeError as err:
            raise toolchain_error("ai-edge-litert", f"to run {self.path.name}", err) from None
        return {info.name: self.interpreter.get_tensor(index) for info, index in zip(self.outputs, self._out_index)}

    def close(self) -> None:
        self.interpreter = None

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        try:
            version = metadata.version("ai-edge-litert")
        except metadata.PackageNotFoundError:  # pragma: no cover
            version = "unknown"
        return {"backend": self.backend, "version": version, "device": "cpu",
                "delegate": "xnnpack" if self.xnnpack else "none (reference kernels)", "threads": self.threads,
                "layouts": {i.name: i.layout for i in self.inputs + self.outputs}}

    def per_layer(self, feed: dict[str, np.ndarray], iters: int) -> list[LayerTiming]:
        """Op times from LiteRT's own profiler (CompiledModel API, XNNPACK), per run."""
        from evit_deploy.tflite.profiler import ProfilerUnavailable, profile_ops

        feeds = [np.ascontiguousarray(feed[i.name]) for i in self.inputs]
        try:
            with native_logs_quiet():
                rows, _ = profile_ops(self.path, feeds, threads=self.threads, iters=iters)
        except (ProfilerUnavailable, OSError) as err:
            raise UsageError(f"--per-layer needs LiteRT's op profiler, unavailable here: {err}") from None
        totals = [(row, row.avg_ms * row.calls / iters) for row in rows]
        whole = sum(t for _, t in totals) or 1.0
        layers = [LayerTiming(name=row.name, op_type=row.node_type.removeprefix("Delegate/"), total_ms=total,
                              calls=max(1, row.calls // iters), share=total / whole) for row, total in totals]
        return sorted(layers, key=lambda r: r.total_ms, reverse=True)
