"""ONNX (and the trt target's typed ONNX) on ONNX Runtime, intermediate tensors as graph outputs.

The graph is the one the artifact's runner runs (for a typed fp16 ONNX: its fp16 emulation),
with the mapped tensors added as graph outputs *before* ONNX Runtime sees it, and the session
made with the artifact's own optimisation level. ORT never fuses a node away whose output the
graph returns, so every exposed tensor is computed; the price is that fusions across an
exposed tensor (Conv+Add, NCHWc reorders) do not happen, so the instrumented session's
numerics can differ from the deployed one's in those places. The report therefore also gives
the error of the unmodified session's output (``deployed_output``): when the two disagree, the
difference came from fusions, not from a layer. Running the graph unoptimised instead would
hide exactly that class of error (DESIGN.md: ORT_ENABLE_ALL's NCHWc path is 1000x less
accurate than fp32 on cls-B1), so the artifact's level is kept.

A layer runs alone in a graph cut at its input tensors (``onnx.utils.Extractor``), fed the
reference's values for them.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.debug.capture import CannotRunAlone, Capture
from evit_deploy.debug.metrics import in_shape

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from evit_deploy.layer_map import LayerEntry
    from evit_deploy.onnx.runner import OnnxRunner


class OnnxCapture(Capture):
    def __init__(self, runner: OnnxRunner) -> None:
        super().__init__(runner)
        self.runner: OnnxRunner = runner
        self._tmp = tempfile.TemporaryDirectory(prefix="evit-debug-onnx-")
        self._model: onnx.ModelProto | None = None
        self._exposed: OnnxRunner | None = None
        self._extractor: Any = None
        self._alone: dict[tuple[str, ...], Path | CannotRunAlone] = {}
        self._types: dict[str, int] = {}

    def load(self, tensors: Sequence[str]) -> list[str]:
        import onnx

        self.runner.load()  # the deployed session; for a typed fp16 ONNX it writes the emulated graph
        model = onnx.shape_inference.infer_shapes(onnx.load(str(self.runner.path)))
        self._model = model
        graph = model.graph
        self._types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
        returned = {o.name for o in graph.output}
        missing = []
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        for name in tensors:
            if name in returned:
                continue
            if name not in self._types:
                missing.append(f"{name} (no type in the graph)")
                continue
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, self._types[name], None))
        self._exposed = self._session(self._save(exposed, "exposed.onnx"))
        self._exposed.load()
        return missing

    def _save(self, model: onnx.ModelProto, name: str) -> Path:
        import onnx

        path = Path(self._tmp.name) / name
        onnx.save(model, str(path))
        return path

    def _session(self, path: Path) -> OnnxRunner:
        """A session like the artifact's own (threads, optimisation level); loaded by ``with``."""
        from evit_deploy.onnx.runner import OnnxRunner

        return OnnxRunner(path, threads=self.runner.threads, session=self.runner.options)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._exposed is not None, "load() first"
        values = self._exposed.infer(self._exposed.prepare(feed))
        return {name: np.asarray(v).astype(np.float32, copy=False) for name, v in values.items()}

    def run_alone(self, entry: LayerEntry, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Each cut is saved once; its session lives for one call only, since a hundred of them
        (the seg-B1 stages and the whole model among them) would hold gigabytes."""
        key = (entry.tensor, *entry.inputs)  # modules sharing an output can start at different tensors
        if key not in self._alone:
            try:
                self._alone[key] = self._cut(entry)
            except CannotRunAlone as err:
                self._alone[key] = err
        made = self._alone[key]
        if isinstance(made, CannotRunAlone):
            raise made
        with self._session(made) as session:
            return self._run_cut(session, inputs)

    def _run_cut(self, session: OnnxRunner, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {}
        for info in session.inputs:
            value = in_shape(inputs[info.name], tuple(info.shape)) if None not in info.shape else inputs[info.name]
            if value is None:
                raise CannotRunAlone(f"the reference's {info.name} has shape {list(inputs[info.name].shape)}, "
                                     f"the artifact's {list(info.shape)}")
            feed[info.name] = value
        (value,) = session.infer(session.prepare(feed)).values()
        return np.asarray(value).astype(np.float32, copy=False)

    def _cut(self, entry: LayerEntry) -> Path:
        from evit_deploy.onnx.cut import CutError, cut, extractor

        assert self._model is not None
        if not entry.inputs:
            raise CannotRunAlone("its input tensors are not in the artifact")
        if self._extractor is None:
            self._extractor = extractor(self._model)
        try:
            made = cut(self._extractor, list(entry.inputs), [entry.tensor])
        except CutError as err:
            raise CannotRunAlone(str(err)) from None
        return self._save(made, f"alone-{len(self._alone)}.onnx")

    def close(self) -> None:
        if self._exposed is not None:
            self._exposed.close()
        self._alone.clear()
        self.runner.close()
        self._tmp.cleanup()

    def describe(self) -> dict[str, object]:
        return {**self.runner.describe(), "exposed": "mapped tensors added as graph outputs before ORT optimises"}
