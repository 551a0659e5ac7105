"""What an fp16 TensorRT engine computes, on ONNX Runtime's CPU provider (verify without a GPU)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evit_deploy.onnx.runner import OnnxRunner


class EmulatedFp16Runner(OnnxRunner):
    """The fp16 the engine computes, on ONNX Runtime's CPU provider: the typed ONNX with every
    fp16 tensor rounded where it is made (``evit_deploy.trt.typed.emulate_fp16``; ORT's CPU
    kernels would otherwise compute fp16 chains in fp32). A weakly typed plan's fp32 ONNX is
    first given the fp16 types the build asks for (fp16 outside the plan's islands)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, plan_path: Path | None, *, threads: int | None = None) -> None:
        super().__init__(path, device="cpu", threads=threads)
        self.source = path
        self.plan_path = plan_path
        self._tmp: Any = None

    def load(self) -> None:
        import tempfile

        import onnx

        from evit_deploy.trt.plan import BuildPlan
        from evit_deploy.trt.typed import emulate_fp16, to_fp16

        model = onnx.load(str(self.source))
        plan = BuildPlan.load(self.plan_path) if self.plan_path is not None else None
        if plan is not None and plan.typing == "weak":
            from evit_deploy.graph import Island

            model = to_fp16(model, [Island(kind=i.kind, nodes=i.nodes, reason=i.reason) for i in plan.islands])
        emulated, _ = emulate_fp16(model)
        self._tmp = tempfile.TemporaryDirectory(prefix="evit-fp16-")
        self.path = Path(self._tmp.name) / self.source.name
        onnx.save(emulated, str(self.path))
        super().load()

    def close(self) -> None:
        super().close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.path = self.source

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "fp16": "emulated: every fp16 tensor rounded to fp16 where it is made"}
