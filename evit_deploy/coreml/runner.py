"""Core ML artifacts as Runners: ``MLModel.predict`` on macOS, evit's MIL interpreter anywhere else."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import Runner
from evit_deploy.coreml.options import COMPUTE_UNITS
from evit_deploy.coreml.tools import import_coremltools, quiet_coremltools
from evit_deploy.errors import UsageError
from evit_deploy.spec import InputSpec, TensorInfo


def pixels_from_normalised(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Invert the card's normalisation: NCHW normalised -> NCHW pixel values in 0..255 (float)."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((x.astype(np.float32) * std + mean) * 255.0).astype(np.float32)


class MilRunner(Runner):
    """The ML program evaluated by evit's numpy MIL interpreter (any OS; checks the converter only)."""

    backend = "mil-interpreter"

    def __init__(self, path: Path, spec: InputSpec, *, image_input: bool = False) -> None:
        super().__init__()
        self.path = path
        self.spec = spec
        self.image_input = image_input
        self.interpreter: Any = None
        self.program_input = ""

    def load(self) -> None:
        from evit_deploy.mil import Interpreter, load_program

        program = load_program(self.path)
        self.interpreter = Interpreter(program)
        if len(program.inputs) != 1:
            raise UsageError(f"{self.path.name}: expected one input, the ML program has {len(program.inputs)}")
        self.program_input, ttype = program.inputs[0]
        self.inputs = [TensorInfo(self.spec.name, tuple(ttype.shape), "float32", "NCHW")]
        self.outputs = [TensorInfo(name, tuple(program.output_types[name].shape) if name in program.output_types
                                   else (), "float32", "NCHW") for name in program.outputs]

    def prepare(self, feed: dict[str, np.ndarray], layout: Any = "NCHW") -> dict[str, np.ndarray]:
        x = super().prepare(feed, layout)[self.spec.name]
        return {self.program_input: pixels_from_normalised(x, self.spec) if self.image_input else x}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.program_input not in feed and self.spec.name in feed:  # base-prepared (e.g. sent by a remote caller)
            feed = self.prepare(feed)
        return self.interpreter.run(feed)

    def close(self) -> None:
        self.interpreter = None

    def describe(self) -> dict[str, Any]:
        program = self.interpreter.program if self.interpreter else None
        return {
            "backend": self.backend,
            "version": f"numpy {np.__version__}",
            "device": "cpu (numpy)",
            "checks": "the converter's ML program op by op, not Apple's Core ML kernels",
            "timing_meaningful": False,
            "opset": program.opset if program else None,
            "operations": len(self.interpreter.steps) if self.interpreter else None,
            "image_input": self.image_input,
        }


class CoreMLRunner(Runner):
    """``MLModel.predict`` on macOS with the chosen compute units."""

    backend = "coreml"

    def __init__(self, path: Path, spec: InputSpec, *, compute_units: str = "all", image_input: bool = False) -> None:
        super().__init__()
        self.path = path
        self.spec = spec
        self.compute_units = compute_units
        self.image_input = image_input
        self.model: Any = None
        self.input_name = ""

    def load(self) -> None:
        ct = import_coremltools()
        with quiet_coremltools():
            self.model = ct.models.MLModel(str(self.path),
                                           compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[self.compute_units]))
        description = self.model.get_spec().description
        self.input_name = description.input[0].name
        self.inputs = [TensorInfo(self.spec.name, self.spec.shape, "float32", "NCHW")]
        self.outputs = [TensorInfo(o.name, tuple(o.type.multiArrayType.shape), "float32", "NCHW")
                        for o in description.output]

    def prepare(self, feed: dict[str, np.ndarray], layout: Any = "NCHW") -> dict[str, Any]:
        x = super().prepare(feed, layout)[self.spec.name]
        if not self.image_input:
            return {self.input_name: x}
        from PIL import Image

        # An app's frame is 8-bit: round, so compare with --images for exact pixels.
        pixels = np.clip(np.rint(pixels_from_normalised(x, self.spec)[0]), 0, 255).astype(np.uint8)
        return {self.input_name: Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB")}

    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.input_name not in feed or (self.image_input and isinstance(feed[self.input_name], np.ndarray)):
            feed = self.prepare(feed)  # base-prepared arrays (e.g. sent by a remote caller)
        return {name: np.asarray(value) for name, value in self.model.predict(feed).items()}

    def close(self) -> None:
        self.model = None

    def describe(self) -> dict[str, Any]:
        ct = import_coremltools()
        return {"backend": self.backend, "version": f"coremltools {ct.__version__}",
                "device": f"macOS {platform.mac_ver()[0]} ({platform.machine()})",
                "compute_units": self.compute_units, "timing_meaningful": True, "image_input": self.image_input}
