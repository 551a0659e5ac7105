"""The build plan: everything a TensorRT build of this export needs, decided without a GPU.

``NAME.trt-plan.json`` is written beside the ONNX it builds. It says which TensorRT major it
targets, the typing mode, the fp32 islands (node names, and why each is fp32), the shape
profile, the builder flags, and the per-layer precisions the built engine must show. From it
come ``NAME.trtexec.sh`` (the same build with JetPack's or a container's ``trtexec``) and the
Python API build of ``evit_deploy.trt.build``; ``evit_deploy.trt.inspect`` checks an engine's
layer information against it. Nothing here imports torch, onnx or tensorrt.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evit_deploy.errors import UsageError

PLAN_SUFFIX = ".trt-plan.json"
SCRIPT_SUFFIX = ".trtexec.sh"
SCHEMA_VERSION = 2  # 2: ``profiles`` per input (1 had one ``profile``, for the first input)
# Ops whose ONNX nodes become no TensorRT layer of their own (folded into weights or shapes).
NO_LAYER_OPS = frozenset({"Constant", "Identity"})
# Island ops that do the arithmetic that overflows or underflows in fp16: these must be *shown*
# to run in fp32 in a weakly typed engine, where TensorRT may silently ignore the request.
KEY_OPS = frozenset({"MatMul", "Div", "ReduceSum", "Add", "Resize", "Pow", "ReduceMean", "Sqrt",
                     "LayerNormalization"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Island(_Model):
    kind: str
    nodes: list[str]
    reason: str
    eps: float | None = None


class LayerExpectation(_Model):
    """One ONNX node the built engine must run in ``precision``."""

    node: str
    op: str
    precision: Literal["fp32"] = "fp32"
    island: int  # index into ``islands``
    key: bool  # arithmetic that over/underflows in fp16 (MatMul, Div, ...): must be shown, never assumed
    outputs: list[str] = Field(default_factory=list)  # its float output tensors in the ONNX


class Fp32Outside(_Model):
    node: str
    op: str
    reason: str


class BuildPlan(_Model):
    schema_version: int = SCHEMA_VERSION
    model: str
    task: str
    precision: Literal["fp32", "fp16", "int8"]
    trt_version: str
    trt_major: int
    typing: Literal["strong", "weak"]
    platform: str = "generic"
    onnx: str  # file name, beside the plan
    onnx_sha256: str
    opset: int | None = None  # the ONNX's opset (plans before issue 14: not recorded)
    parser_opset: int | None = None  # the highest opset the target TensorRT's ONNX parser takes
    engine: str
    layer_info: str  # where a build writes the engine inspector's JSON
    input_name: str = "input"
    output_names: list[str] = Field(default_factory=lambda: ["logits"])
    static_shape: list[int] | None = None
    profiles: dict[str, dict[str, list[int]]] = Field(default_factory=dict)  # dynamic input -> min/opt/max shape
    workspace_gib: float | None = None
    dla_core: int | None = None
    builder_optimization_level: int | None = None
    timing_cache: str | None = None  # file name beside the plan (the device has no host paths)
    tf32: bool = True
    islands: list[Island] = Field(default_factory=list)
    fp32_outside_islands: list[Fp32Outside] = Field(default_factory=list)
    expected_layers: list[LayerExpectation] = Field(default_factory=list)
    island_tensors: list[str] = Field(default_factory=list)  # outputs of island nodes: fp32 wherever visible
    layer_precisions: dict[str, str] = Field(default_factory=dict)  # weak typing: node -> precision
    layer_output_types: dict[str, str] = Field(default_factory=dict)  # weak typing: node -> "fp32[+fp32...]"
    int8: dict[str, Any] | None = None
    overflow: dict[str, Any] | None = None
    trtexec: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _one_profile(cls, data: Any) -> Any:
        """A schema-1 plan's ``profile`` (its one image input's min/opt/max) is ``profiles`` of that input."""
        if isinstance(data, dict) and "profile" in data:
            data = dict(data)
            old = data.pop("profile")
            if old is not None:
                data.setdefault("profiles", {data.get("input_name", "input"): old})
        return data

    # ------------------------------------------------------------------ io

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> BuildPlan:
        if not path.is_file():
            raise UsageError(f"{path}: no such build plan (NAME{PLAN_SUFFIX}, written by `evit export --target trt`)")
        try:
            return cls.model_validate_json(path.read_text())
        except (ValidationError, ValueError) as err:
            raise UsageError(f"{path}: not a valid evit TensorRT build plan ({str(err).splitlines()[0]})") from None

    # ------------------------------------------------------------------ views

    def timing_cache_path(self, folder: Path) -> Path | None:
        """The timing cache beside the plan in ``folder`` (older plans held a host path: its name)."""
        return folder / Path(self.timing_cache).name if self.timing_cache else None

    @property
    def profile(self) -> dict[str, list[int]] | None:
        """The first input's min/opt/max shape (the image's, for a one-image graph); None when static."""
        return self.profiles.get(self.input_name)

    @property
    def island_nodes(self) -> set[str]:
        return {e.node for e in self.expected_layers}

    def summary(self) -> dict[str, Any]:
        """The manifest's view of the plan (the full plan is the JSON file)."""
        return {
            "trt_version": self.trt_version, "typing": self.typing, "platform": self.platform,
            "opset": self.opset, "parser_opset": self.parser_opset,
            "static_shape": self.static_shape, "profiles": self.profiles, "workspace_gib": self.workspace_gib,
            "dla_core": self.dla_core, "builder_optimization_level": self.builder_optimization_level,
            "islands": len(self.islands), "fp32_layers_planned": len(self.expected_layers),
            "fp32_outside_islands": [o.model_dump() for o in self.fp32_outside_islands],
            "trtexec": " ".join(shlex.quote(a) for a in self.trtexec),
        }


def expectations(islands: list[Island], ops: dict[str, str],
                 outputs: dict[str, list[str]] | None = None) -> list[LayerExpectation]:
    """The per-layer precisions an engine built from the plan must show: every island node that
    becomes a layer runs in fp32. ``ops`` maps node names of the build ONNX to op types,
    ``outputs`` to their float output tensors."""
    out = []
    for index, island in enumerate(islands):
        for node in island.nodes:
            op = ops.get(node)
            if op is None:
                raise ValueError(f"island node {node!r} is not in the ONNX the plan builds")
            if op in NO_LAYER_OPS:
                continue
            out.append(LayerExpectation(node=node, op=op, island=index, key=op in KEY_OPS,
                                        outputs=list((outputs or {}).get(node, []))))
    return out


def weak_typing_constraints(expected: list[LayerExpectation], outputs: dict[str, int]) -> tuple[dict[str, str], dict[str, str]]:
    """``--layerPrecisions`` and ``--layerOutputTypes`` covering exactly the island layers."""
    precisions = {e.node: e.precision for e in expected}
    output_types = {e.node: "+".join([e.precision] * max(1, outputs.get(e.node, 1))) for e in expected}
    for node in precisions:
        if any(c in node for c in ",:'\" \t\n"):
            raise ValueError(f"node name {node!r} cannot be written in a trtexec layer spec")
    return precisions, output_types


# ---------------------------------------------------------------------------------- trtexec


def _shape(dims: list[int]) -> str:
    return "x".join(str(d) for d in dims)


def trtexec_argv(plan: BuildPlan) -> list[str]:
    """The trtexec command that builds ``plan`` with that TensorRT major's flags.

    10: ``--stronglyTyped`` (types come from the ONNX); 11: plain (strong typing is the only
    mode, the flag is gone from its help); 8.x and ``typing: weak``: ``--fp16`` (``--int8``)
    plus ``--precisionConstraints=obey`` and per-layer fp32 for the islands.
    """
    argv = ["trtexec", f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}"]
    if plan.typing == "strong":
        if plan.trt_major == 10:
            argv.append("--stronglyTyped")
    else:
        if plan.precision in ("fp16", "int8"):
            argv.append("--fp16")
        if plan.precision == "int8":
            argv.append("--int8")  # enables the Q/DQ nodes' explicit quantisation on 8.x/10
        if plan.layer_precisions:
            argv.append("--precisionConstraints=obey")
            argv.append("--layerPrecisions=" + ",".join(f"{n}:{p}" for n, p in plan.layer_precisions.items()))
            argv.append("--layerOutputTypes=" + ",".join(f"{n}:{t}" for n, t in plan.layer_output_types.items()))
    if not plan.tf32:
        argv.append("--noTF32")
    if plan.profiles:  # one flag per bound, every dynamic input in it: --minShapes=a:1x2,b:1x2x2
        argv += [f"--{key}Shapes=" + ",".join(f"{name}:{_shape(shapes[key])}" for name, shapes in plan.profiles.items())
                 for key in ("min", "opt", "max")]
    if plan.workspace_gib is not None:
        argv.append(f"--memPoolSize=workspace:{int(plan.workspace_gib * 1024)}")  # MiB: every trtexec since 8.4
    if plan.dla_core is not None:
        argv += [f"--useDLACore={plan.dla_core}", "--allowGPUFallback"]
    if plan.builder_optimization_level is not None:
        argv.append(f"--builderOptimizationLevel={plan.builder_optimization_level}")
    if plan.timing_cache is not None:
        argv.append(f"--timingCacheFile={Path(plan.timing_cache).name}")  # the script runs beside the plan
    argv += ["--profilingVerbosity=detailed", f"--exportLayerInfo={plan.layer_info}"]
    argv.append("--buildOnly" if plan.trt_version == "8.5" else "--skipInference")
    return argv


def _comment(text: str) -> str:
    """``text`` fit for a ``#`` line: a newline or other control character in a name would end the
    comment and start a command, so every non-printable character is written as its escape."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def script(plan: BuildPlan, plan_file: str) -> str:
    """``NAME.trtexec.sh``: build on the device, then check the engine's layer precisions.

    Every name that reaches the script (file names come from ``--name``) is single-quoted with
    ``shlex.quote`` or sits in a comment, never in double quotes, where ``$(...)`` and backticks
    would run; messages go through ``printf '%s'``, which interprets nothing in its argument."""
    argv = [a if i else '"$TRTEXEC"' for i, a in enumerate(trtexec_argv(plan))]
    command = " \\\n    ".join(a if i == 0 else shlex.quote(a) for i, a in enumerate(argv))
    typing = ("strongly typed: precisions come from the ONNX's types" if plan.typing == "strong"
              else "weak typing: --fp16 plus per-layer fp32 for the islands")
    check = ["python3", "-m", "evit_deploy.trt.inspect", plan_file, plan.layer_info]
    built = f"built {plan.engine}; check its layer precisions with:"
    return f"""#!/usr/bin/env bash
# Build {_comment(plan.engine)} from {_comment(plan.onnx)} with TensorRT {plan.trt_version} ({typing}).
# Written by `evit export --target trt`; run it on the machine that will run the engine
# (engines are specific to the GPU and the TensorRT version). TRTEXEC overrides the binary.
set -euo pipefail
cd -- "$(dirname -- "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"

{command}

# The engine must run every planned fp32 island layer in fp32 (TensorRT may ignore per-layer
# requests inside fused layers): check the layer information trtexec just exported.
if python3 -c "import evit_deploy" 2>/dev/null; then
    {shlex.join(check)}
else
    printf '%s\\n' {shlex.quote(built)} >&2
    printf '%s\\n' {shlex.quote("  " + shlex.join(check))} >&2
fi
"""
