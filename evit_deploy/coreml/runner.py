"""Core ML artifacts as Runners: ``MLModel.predict`` on macOS, evit's MIL interpreter anywhere else."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import Runner
from evit_deploy.coreml.options import COMPUTE_UNITS, SPEC_MACOS
from evit_deploy.coreml.tools import import_coremltools, quiet_coremltools
from evit_deploy.errors import RuntimeMissing, ToolchainError, UsageError
from evit_deploy.spec import InputSpec, TensorInfo


def pixels_from_normalised(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Invert the card's normalisation: NCHW normalised -> NCHW pixel values in 0..255 (float)."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((x.astype(np.float32) * std + mean) * 255.0).astype(np.float32)

# Compute plan device classes (coremltools.models.compute_device) -> the names reports use.
DEVICE_KINDS = {"MLCPUComputeDevice": "cpu", "MLGPUComputeDevice": "gpu", "MLNeuralEngineComputeDevice": "neural_engine"}


def camera_frame(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One normalised NCHW sample (channels in ``spec.color`` order) -> the 8-bit RGB frame an app hands
    Core ML (HxWx3). Core ML reorders an image to the model's ``color_layout`` itself, so a BGR model's
    frame is still RGB; an app's frame is 8-bit, so pixels are rounded (compare with --images)."""
    pixels = np.clip(np.rint(pixels_from_normalised(x, spec)[0]), 0, 255).astype(np.uint8)
    if spec.color.upper() == "BGR":
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))


def load_refusal(name: str, spec_version: int, engine_version: int | None, macos: str,
                 framework_error: Exception | None) -> str:
    """Why Core ML gave coremltools no model to run (it returns none and says nothing), in one line."""
    if engine_version is not None and spec_version > engine_version:
        needed = SPEC_MACOS.get(spec_version, f"newer than {macos}")
        return (f"{name} needs macOS {needed} or newer (Core ML specification {spec_version}, from its deployment "
                f"target); this Mac runs macOS {macos}, whose Core ML reads specification {engine_version} at most: "
                "run it on a newer Mac, check it here with evit's MIL interpreter (EVIT_COREML_RUNNER=mil), or "
                "re-export with an older --deployment-target")
    if framework_error is not None:
        return f"Core ML could not load {name}: {str(framework_error).splitlines()[0]}"
    return f"Core ML cannot load {name} here: coremltools found no Core ML framework (it runs on macOS only)"


def compute_plan_counts(model: Any, compute_units: str) -> dict[str, int]:
    """How many ML-program operations Core ML plans to run on each device (CPU, GPU, Neural Engine):
    ``MLComputePlan`` of the compiled model, preferred device per operation; operations without a
    device (constants) are counted as ``unplaced``. macOS 14.4+ with coremltools 8+."""
    ct = import_coremltools()
    from coremltools.models.compute_plan import MLComputePlan

    plan = MLComputePlan.load_from_path(model.get_compiled_model_path(),
                                        compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units]))
    counts = {"cpu": 0, "gpu": 0, "neural_engine": 0, "unplaced": 0}
    for function in plan.model_structure.program.functions.values():
        for operation in function.block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
            kind = DEVICE_KINDS.get(type(usage.preferred_compute_device).__name__) if usage else None
            counts[kind or "unplaced"] += 1
    return counts


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
        if self.image_input and len(program.inputs) != 1:
            raise UsageError(f"{self.path.name}: an image input model has one input, this ML program "
                             f"{len(program.inputs)}")
        if self.image_input:  # the program's "image" is the spec's normalised input, as pixels
            self.program_input, ttype = program.inputs[0]
            self.inputs = [TensorInfo(self.spec.name, tuple(ttype.shape), "float32", "NCHW")]
        else:
            self.inputs = [TensorInfo(name, tuple(ttype.shape), "float32", "NCHW") for name, ttype in program.inputs]
        self.outputs = [TensorInfo(name, tuple(program.output_types[name].shape) if name in program.output_types
                                   else (), "float32", "NCHW") for name in program.outputs]

    def prepare(self, feed: dict[str, np.ndarray], layout: Any = "NCHW") -> dict[str, np.ndarray]:
        prepared = super().prepare(feed, layout)
        if not self.image_input:
            return prepared
        return {self.program_input: pixels_from_normalised(prepared[self.spec.name], self.spec)}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.image_input and self.program_input not in feed:  # base-prepared (e.g. sent by a remote caller)
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
    """``MLModel.predict`` on macOS with the chosen compute units.

    ``tolerance_profile`` tells ``verify`` which of the recipe's criteria apply: ``accelerated``
    when the GPU or Neural Engine may run the ops (they compute in fp16), None on the CPU alone.
    """

    backend = "coreml"

    def __init__(self, path: Path, spec: InputSpec, *, compute_units: str = "all", image_input: bool = False) -> None:
        super().__init__()
        self.path = path
        self.spec = spec
        self.compute_units = compute_units
        self.tolerance_profile = None if compute_units == "cpu_only" else "accelerated"
        self.image_input = image_input
        self.model: Any = None
        self.input_name = ""
        self._plan: dict[str, Any] | None = None

    def load(self) -> None:
        ct = import_coremltools()
        with quiet_coremltools():
            self.model = ct.models.MLModel(str(self.path),
                                           compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[self.compute_units]))
        if self.model.__proxy__ is None:  # coremltools 9.0 loads what Core ML refused without a word
            from coremltools.models import model as ct_model

            proxy = getattr(ct_model, "_MLModelProxy", None)
            engine = proxy.maximum_supported_specification_version() if proxy is not None else None
            raise RuntimeMissing(load_refusal(self.path.name, self.model.get_spec().specificationVersion, engine,
                                              platform.mac_ver()[0] or platform.system(),
                                              getattr(self.model, "_framework_error", None)))
        description = self.model.get_spec().description
        self.input_name = description.input[0].name
        if self.image_input:
            self.inputs = [TensorInfo(self.spec.name, self.spec.shape, "float32", "NCHW")]
        else:
            self.inputs = [TensorInfo(i.name, tuple(i.type.multiArrayType.shape), "float32", "NCHW")
                           for i in description.input]
        self.outputs = [TensorInfo(o.name, tuple(o.type.multiArrayType.shape), "float32", "NCHW")
                        for o in description.output]

    def prepare(self, feed: dict[str, np.ndarray], layout: Any = "NCHW") -> dict[str, Any]:
        prepared = super().prepare(feed, layout)
        if not self.image_input:
            return prepared
        from PIL import Image

        return {self.input_name: Image.fromarray(camera_frame(prepared[self.spec.name], self.spec))}

    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.image_input and (self.input_name not in feed or isinstance(feed[self.input_name], np.ndarray)):
            feed = self.prepare(feed)  # base-prepared arrays (e.g. sent by a remote caller)
        try:
            predicted = self.model.predict(feed)
        except Exception as err:  # noqa: BLE001 - coremltools raises bare Exceptions: say it in one line
            raise ToolchainError(f"Core ML predict failed on {self.path.name}: {str(err).splitlines()[0]}") from None
        return {name: np.asarray(value) for name, value in predicted.items()}

    def close(self) -> None:
        self.model = None

    def compute_plan(self) -> dict[str, Any]:
        """Per-device op counts from Core ML's compute plan (once), or why they are not known."""
        if self._plan is None:
            try:
                self._plan = compute_plan_counts(self.model, self.compute_units)
            except Exception as err:  # noqa: BLE001 - informational: older macOS/coremltools have no plan
                self._plan = {"unavailable": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        return self._plan

    def describe(self) -> dict[str, Any]:
        ct = import_coremltools()
        info = {"backend": self.backend, "version": f"coremltools {ct.__version__}",
                "device": f"macOS {platform.mac_ver()[0]} ({platform.machine()})",
                "compute_units": self.compute_units, "timing_meaningful": True, "image_input": self.image_input,
                "tolerances": self.tolerance_profile or "cpu"}
        if self.model is not None:
            info["compute_plan"] = self.compute_plan()
        return info
