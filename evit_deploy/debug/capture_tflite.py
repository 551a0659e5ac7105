"""TFLite on LiteRT's interpreter with every tensor preserved (``experimental_preserve_all_tensors``).

XNNPACK keeps the tensors inside the partitions it takes to itself, so the instrumented
interpreter runs LiteRT's built-in kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``); the
artifact's own runner (XNNPACK, as verify runs it) gives ``deployed_output``, and where the
two disagree the difference is the delegate's, not a layer's. int8 tensors are dequantised
with their own scale and zero point, and a reference tensor fed to an int8 input is quantised
with them, as the op before it would have.

A layer runs alone in a copy of the flatbuffer cut at its input tensors: the subgraph's inputs
become those tensors, its output the layer's, and only the ops between them are kept.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.debug.capture import CannotRunAlone, Capture
from evit_deploy.debug.metrics import in_shape
from evit_deploy.spec import to_layout
from evit_deploy.tflite.cut import CutError, cut, dequantised, is_constant, quantised

if TYPE_CHECKING:  # pragma: no cover
    from evit_deploy.contracts import Runner
    from evit_deploy.layer_map import LayerEntry


class TfliteCapture(Capture):
    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        self.runner: Any = runner  # a TfliteRunner: path, threads, inputs/outputs after load
        self._interpreter: Any = None
        self._tensors: list[int] = []
        self._alone: dict[tuple[str, ...], Path | CannotRunAlone] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="evit-debug-tflite-")

    def _interpret(self, content: bytes, *, preserve: bool) -> Any:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(model_content=content, num_threads=self.runner.threads,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                                  experimental_preserve_all_tensors=preserve)
        interpreter.allocate_tensors()
        return interpreter

    def load(self, tensors: Sequence[str]) -> list[str]:
        from ai_edge_litert.tools import flatbuffer_utils

        self.runner.load()
        content = self.runner.path.read_bytes()
        self._model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))  # parsed once, for cuts
        self._interpreter = self._interpret(content, preserve=True)
        self._details = {d["index"]: d for d in self._interpreter.get_tensor_details()}
        declared = {d["index"]: info.layout for d, info in zip(self._interpreter.get_input_details(), self.runner.inputs)}
        self._layouts = tensor_layouts(self._model, declared)
        self._tensors = [int(t) for t in tensors if t.isdigit() and int(t) in self._details]
        return [f"{t} (not a tensor of the file)" for t in tensors if not (t.isdigit() and int(t) in self._details)]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = self.runner.prepare(feed)
        for detail, info in zip(self._interpreter.get_input_details(), self.runner.inputs):
            self._interpreter.set_tensor(detail["index"], np.ascontiguousarray(prepared[info.name]))
        self._interpreter.invoke()
        get = self._interpreter.get_tensor
        values = {str(t): _nchw(dequantised(get(t), self._details[t]), self._layouts.get(t)) for t in self._tensors}
        for detail, info in zip(self._interpreter.get_output_details(), self.runner.outputs):
            values[info.name] = to_layout(dequantised(get(detail["index"]), detail), info.layout, "NCHW")
        return values

    def run_alone(self, entry: LayerEntry, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Each cut is written once to a file; its interpreter lives for one call only, since a
        hundred of them (the seg-B1 stages and the whole model among them) would hold gigabytes."""
        key = (entry.tensor, *entry.inputs)
        if key not in self._alone:
            try:
                path = Path(self._tmp.name) / f"alone-{len(self._alone)}.tflite"
                path.write_bytes(cut(self._model, [int(t) for t in entry.inputs], int(entry.tensor)))
                self._alone[key] = path
            except CutError as err:
                self._alone[key] = CannotRunAlone(str(err))
        made = self._alone[key]
        if isinstance(made, CannotRunAlone):
            raise made
        interpreter = self._interpret(made.read_bytes(), preserve=False)
        for detail in interpreter.get_input_details():
            name = str(detail["index"])
            layout = self._layouts.get(detail["index"])
            given = inputs[name]
            shape = tuple(int(d) for d in detail["shape"])
            value = in_shape(given, shape) if layout is None or given.ndim != 4 else to_layout(given, "NCHW", layout)
            if value is not None and value.shape != shape:
                value = None
            if value is None:
                raise CannotRunAlone(f"the reference's {name} has shape {list(inputs[name].shape)}, the "
                                     f"artifact's {list(detail['shape'])}")
            interpreter.set_tensor(detail["index"], quantised(value, detail))
        interpreter.invoke()
        (detail,) = interpreter.get_output_details()
        return _nchw(dequantised(interpreter.get_tensor(detail["index"]), detail), self._layouts.get(int(entry.tensor)))

    def close(self) -> None:
        self._interpreter = None
        self._alone.clear()
        self._tmp.cleanup()
        super().close()

    def describe(self) -> dict[str, object]:
        return {**self.runner.describe(),
                "exposed": "LiteRT built-in kernels with every tensor preserved (XNNPACK keeps its own)"}


# Ops whose 4-D outputs are NHWC by definition, and ops whose output keeps its input's layout.
_NHWC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D",
             "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH")
_KEEPING_OPS = ("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "POW", "HARD_SWISH", "RELU",
                "RELU6", "RELU_N1_TO_1", "LEAKY_RELU", "PRELU", "LOGISTIC", "TANH", "GELU", "ABS", "NEG", "SQRT",
                "RSQRT", "EXP", "SQUARE", "CAST", "QUANTIZE", "DEQUANTIZE", "PAD", "PADV2", "MIRROR_PAD",
                "CONCATENATION")
_TO_NCHW, _TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


def tensor_layouts(model: Any, inputs: dict[int, str]) -> dict[int, str]:
    """NHWC or NCHW for every 4-D tensor whose layout follows from the ops (``inputs``: the graph
    inputs' layouts): convolutions and pools make NHWC, element-wise ops, pads and concatenations
    keep their input's, a TRANSPOSE by (0,3,1,2) or (0,2,3,1) turns one into the other. Shapes
    alone cannot tell a tensor whose C, H and W are equal (16x16x16 at 64x64 inputs)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    subgraph = model.subgraphs[0]
    layouts = dict(inputs)
    for op in subgraph.operators:
        kind = names.get(flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex]))
        ins = [int(t) for t in op.inputs if t >= 0]
        known = [layouts[t] for t in ins if t in layouts and len(subgraph.tensors[t].shape) == 4]
        layout = None
        if kind in _NHWC_OPS:
            layout = "NHWC"
        elif kind in _KEEPING_OPS and known:
            layout = known[0]
        elif kind == "TRANSPOSE" and known and len(ins) > 1 and is_constant(model, ins[1]):
            perm = tuple(int(p) for p in model.buffers[subgraph.tensors[ins[1]].buffer].data.view(np.int32))
            layout = {("NHWC", _TO_NCHW): "NCHW", ("NCHW", _TO_NHWC): "NHWC"}.get((known[0], perm))
        for t in op.outputs:
            if t >= 0 and layout is not None and len(subgraph.tensors[t].shape) == 4:
                layouts[int(t)] = layout
    return layouts


def _nchw(value: np.ndarray, layout: str | None) -> np.ndarray:
    return value.transpose(0, 3, 1, 2) if layout == "NHWC" and value.ndim == 4 else value
