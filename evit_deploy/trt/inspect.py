"""Check a built engine's layer information against the plan: the fp32 islands must be fp32.

TensorRT 8.6/10 may silently ignore per-layer precision requests inside fused (Myelin) layers
(NVIDIA/TensorRT #3889, #3224, #4505), so an engine is checked, never trusted. The input is
the engine inspector's JSON (``IEngineInspector.get_engine_information(JSON)`` of an engine
built with detailed profiling verbosity, or trtexec's ``--exportLayerInfo`` file). Both
schemas are read: TensorRT 8.6/10 write ``"Format/Datatype"`` per layer input/output; TensorRT 11
splits it into ``"Format"`` and a type key (``"Datatype"`` in TensorRT 11.1's own parser,
``"DataType"`` in the migration guide's I/O tensors), so keys are read case-insensitively. An
engine none of whose layer inputs/outputs shows a float type cannot be checked, and fails
(a schema change must not make the check pass without checking anything).

Layer metadata names the ONNX nodes (onnx-tensorrt ``processMetadata``): ``[ONNX Layer: NAME]``,
with `` | ...`` parts after the name (8.6: doc-string lines; 10: ``Local Function: F``); entries
of a fused layer are separated by ``\x1e``/``\x1f``.

How a planned island node is judged, from what the engine shows:

* every layer input/output that is an island tensor (an output of an island node) must be
  fp32: a visible fp16/int8 island tensor fails, whatever the typing mode;
* a layer made only of island nodes must have all its float inputs and outputs in fp32;
* a node is shown in fp32 by such a layer, or when all its outputs appear, in fp32 only, at
  layer boundaries;
* an island node that is fused into a layer with non-island nodes, or that shows up in no
  layer, cannot be seen. In a strongly typed engine the ONNX's types bind the builder, so it
  is reported, not failed; in a weakly typed engine (8.x, ``--typing weak``) the arithmetic
  nodes (MatMul, Div, ...) must be *shown* in fp32, so they fail.

Run standalone after a trtexec build: ``python -m evit_deploy.trt.inspect PLAN LAYERS.json``.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evit_deploy.errors import CheckFailed, EvitError, UsageError
from evit_deploy.trt.plan import BuildPlan

FLOAT_KINDS = ("fp32", "fp16", "bf16", "fp8", "int8")  # value types a compute layer can run in
_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.+?)(?= \| |\])")  # the name ends at " | " or "]"
_TYPE_KEYS = ("datatype", "format/datatype", "format")  # lower case, in the order they are trusted
_KINDS = (("bf16", "bf16"), ("bfloat", "bf16"), ("fp8", "fp8"), ("e4m3", "fp8"), ("fp16", "fp16"), ("half", "fp16"),
          ("fp32", "fp32"), ("float", "fp32"), ("uint8", "uint8"), ("int8", "int8"), ("int32", "int32"),
          ("int64", "int64"), ("bool", "bool"), ("int4", "int4"))  # uint8 before int8: "uint8" contains it
_FOREIGN = re.compile(r"^\{?ForeignNode\[(.*)\]\}?$")


@dataclass
class Binding:
    name: str
    dtype: str  # fp32 | fp16 | bf16 | fp8 | int8 | int32 | int64 | bool | uint8 | int4 | unknown
    keys: tuple[str, ...] = ()  # the entry's keys, to say what an unreadable schema looked like


@dataclass
class Layer:
    name: str
    type: str
    inputs: list[Binding]
    outputs: list[Binding]
    onnx_nodes: list[str]  # ONNX nodes this layer implements, from its metadata (or its name)
    complete: bool  # False when only a fused range's endpoints are known
    tactic: str = ""

    def float_types(self) -> set[str]:
        return {b.dtype for b in [*self.inputs, *self.outputs] if b.dtype in FLOAT_KINDS}


def dtype_of(entry: dict[str, Any]) -> str:
    """The value type of one layer input/output entry, in any TensorRT schema (keys in any case)."""
    values = {str(key).lower(): str(value).lower() for key, value in entry.items()}
    for key in _TYPE_KEYS:
        text = values.get(key, "")
        kind = next((kind for needle, kind in _KINDS if needle in text), None)
        if kind:
            return kind
    return "unknown"


def onnx_nodes_in(metadata: str) -> list[str]:
    """The ONNX node names a layer's metadata lists, without the `` | ...`` parts after each."""
    return list(dict.fromkeys(name.strip() for name in _ONNX_LAYER.findall(metadata)))


def parse_layers(info: str | dict[str, Any]) -> list[Layer]:
    """Layers of an engine from the inspector's JSON (engine information, either version)."""
    data = json.loads(info) if isinstance(info, str) else info
    raw = data.get("Layers", data) if isinstance(data, dict) else data
    if not isinstance(raw, list):
        raise UsageError("the layer information has no 'Layers' list; export it with the engine inspector (JSON)")
    layers = []
    for item in raw:
        if isinstance(item, str):
            raise UsageError("the engine was built without detailed profiling verbosity, so its layers show no types; "
                             "rebuild with --profilingVerbosity=detailed (ProfilingVerbosity.DETAILED)")
        name = str(item.get("Name", ""))
        nodes, complete = _onnx_nodes(name, str(item.get("Metadata", "")))
        layers.append(Layer(
            name=name,
            type=str(item.get("LayerType", "")),
            inputs=[_binding(b) for b in item.get("Inputs", [])],
            outputs=[_binding(b) for b in item.get("Outputs", [])],
            onnx_nodes=nodes,
            complete=complete,
            tactic=str(item.get("TacticName", "")),
        ))
    return layers


def _binding(entry: dict[str, Any]) -> Binding:
    return Binding(str(entry.get("Name", "")), dtype_of(entry), tuple(sorted(map(str, entry))))


def _onnx_nodes(name: str, metadata: str) -> tuple[list[str], bool]:
    found = onnx_nodes_in(metadata)
    if found:
        return found, True
    foreign = _FOREIGN.match(name.strip())
    if foreign:  # Myelin names only the first and last node of its range
        return [p.strip() for p in foreign.group(1).split("...") if p.strip()], False
    return [p.strip() for p in name.split(" + ") if p.strip()], True


@dataclass
class PrecisionReport:
    typing: str
    passed: bool
    violations: list[dict[str, str]] = field(default_factory=list)  # node/tensor, layer, found, why
    shown_fp32: list[str] = field(default_factory=list)  # island nodes the engine shows in fp32
    unseen: list[dict[str, str]] = field(default_factory=list)  # island nodes fused away or absent
    layers: int = 0
    layer_types: dict[str, int] = field(default_factory=dict)  # compute layers by the precision they show
    unreadable: str | None = None  # why no layer type could be read (then nothing was checked)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        if self.unreadable:
            return self.unreadable
        names = ", ".join(f"{v['node']} ({v['found']} in layer {v['layer']!r})" for v in self.violations[:6])
        more = f" and {len(self.violations) - 6} more" if len(self.violations) > 6 else ""
        hint = ("TensorRT ignored the precision request (fused layer?); use --typing strong on TensorRT 10+"
                if self.typing == "weak" else
                "the strongly typed build did not keep the ONNX's types (fused layer?); keep the layer information "
                "and report it with the TensorRT version")
        return f"the engine does not run every planned fp32 island layer in fp32: {names}{more}; {hint}"


def check_layers(plan: BuildPlan, layers: list[Layer]) -> PrecisionReport:
    """Judge every planned island node against the engine's layers (see module doc)."""
    expected = {e.node: e for e in plan.expected_layers}
    island_tensors = set(plan.island_tensors)
    report = PrecisionReport(typing=plan.typing, passed=True, layers=len(layers))
    report.unreadable = _unreadable(layers) if expected else None
    if report.unreadable:
        report.passed = False
        return report
    shown: set[str] = set()
    seen_in: dict[str, list[Layer]] = {}
    visible: dict[str, set[str]] = {}  # tensor -> the types it shows at layer boundaries
    for layer in layers:
        for binding in [*layer.inputs, *layer.outputs]:
            visible.setdefault(binding.name, set()).add(binding.dtype)
        for node in layer.onnx_nodes:
            seen_in.setdefault(node, []).append(layer)
        kinds = layer.float_types()
        kind = "fp32" if kinds == {"fp32"} else ("+".join(sorted(kinds)) if kinds else "none")
        report.layer_types[kind] = report.layer_types.get(kind, 0) + 1
        # 1) island tensors wherever visible
        for binding in [*layer.inputs, *layer.outputs]:
            if binding.name in island_tensors and binding.dtype in FLOAT_KINDS and binding.dtype != "fp32":
                report.violations.append({"node": binding.name, "layer": layer.name, "found": binding.dtype,
                                          "why": "island tensor not fp32"})
        # 2) layers made of island nodes only
        members = [n for n in layer.onnx_nodes if n in expected]
        if members and layer.complete and all(n in expected for n in layer.onnx_nodes):
            bad = sorted(k for k in kinds if k != "fp32")
            if bad:
                for node in members:
                    report.violations.append({"node": node, "layer": layer.name, "found": "/".join(bad),
                                              "why": "island layer runs in reduced precision"})
            elif kinds:
                shown.update(members)
    # 3) nodes whose every output shows up in fp32 at some layer boundary
    for node, exp in expected.items():
        if exp.outputs and all(visible.get(t) == {"fp32"} for t in exp.outputs):
            shown.add(node)
    # 4) what could not be seen
    for node, exp in expected.items():
        if node in shown:
            continue
        where = seen_in.get(node, [])
        state = "fused" if where else "absent"
        entry = {"node": node, "op": exp.op, "state": state, "layer": where[0].name if where else ""}
        if plan.typing == "weak" and exp.key and not any(v["node"] == node for v in report.violations):
            report.violations.append({"node": node, "layer": entry["layer"] or "(none)", "found": state,
                                      "why": "cannot be shown to run in fp32 under weak typing"})
        else:
            report.unseen.append(entry)
    report.shown_fp32 = sorted(shown)
    report.passed = not report.violations
    return report


def _unreadable(layers: list[Layer]) -> str | None:
    """Why the layer types cannot be read, when no layer input/output shows a float type."""
    bindings = [b for layer in layers for b in (*layer.inputs, *layer.outputs)]
    if any(b.dtype in FLOAT_KINDS for b in bindings):
        return None
    keys = sorted({k for b in bindings for k in b.keys})
    return (f"the layer information cannot be read: none of its {len(bindings)} layer inputs/outputs "
            f"({len(layers)} layers) shows a float data type evit knows (their keys: {', '.join(keys) or 'none'}), "
            "so no fp32 island was checked; export it with this TensorRT's engine inspector "
            "(--profilingVerbosity=detailed) or report the schema")


def check_file(plan_path: Path, layer_info: Path) -> PrecisionReport:
    plan = BuildPlan.load(plan_path)
    if not layer_info.is_file():
        raise UsageError(f"{layer_info}: no such layer information file (trtexec --exportLayerInfo)")
    return check_layers(plan, parse_layers(layer_info.read_text()))


def main(argv: list[str] | None = None) -> int:
    """``python -m evit_deploy.trt.inspect PLAN LAYERS.json``: exit 0 ok, 1 a violation or unreadable
    layer types, 2 bad input."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m evit_deploy.trt.inspect",
                                     description="Check an engine's layer precisions against an evit build plan.")
    parser.add_argument("plan", type=Path, help="NAME.trt-plan.json")
    parser.add_argument("layers", type=Path, help="the engine's layer information (trtexec --exportLayerInfo)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = check_file(args.plan, args.layers)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        if not report.passed:
            raise CheckFailed(report.message())
    except EvitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if not args.json:
        print(f"ok: {len(report.shown_fp32)} planned fp32 island layer(s) shown in fp32, "
              f"{len(report.unseen)} fused or folded ({report.typing} typing), {report.layers} engine layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
