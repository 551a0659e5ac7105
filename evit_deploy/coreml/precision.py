"""fp16 with fp32 islands: which ops stay fp32 (by traced source), and what the saved program computes in."""
from __future__ import annotations

import re
from typing import Any

# fp32 islands under fp16, recognised by the source they were traced from (EXIR stack traces).
ISLANDS = {
    "attention": re.compile(r"\brelu_(linear|quadratic)_att\b"),  # the call line or the frame
    "upsample": re.compile(r"[/\\]convert[/\\]bicubic\.py\"|F\.interpolate\("),
}


def island_selector(keep: list[str]) -> tuple[Any, dict[str, int]]:
    """An ``op_selector`` for FP16ComputePrecision: False (stay fp32) for ops traced from an island."""
    from coremltools.converters.mil.mil.scope import ScopeSource

    kept: dict[str, int] = {kind: 0 for kind in keep}

    def select(op: Any) -> bool:
        trace = (getattr(op, "scopes", None) or {}).get(ScopeSource.EXIR_STACK_TRACE) or []
        text = "\n".join(str(t) for t in trace if t)
        for kind in keep:
            if ISLANDS[kind].search(text):
                if op.op_type != "const":
                    kept[kind] += 1
                return False
        return True

    return select, kept


def program_precision(program: Any) -> dict[str, Any]:
    """fp16/fp32 op counts of a saved program, and the dtype of the attention's divisions/matmuls."""
    counts = {"fp16": 0, "fp32": 0}
    attention = {"fp16": 0, "fp32": 0}
    for op in program.operations:
        if op.type == "const" or op.type.startswith("constexpr_") or not op.outputs:
            continue
        dtype = op.outputs[0][1].mil_dtype
        if dtype in counts:
            counts[dtype] += 1
            if op.type in ("matmul", "real_div"):
                attention[dtype] += 1
    return {"fp16_ops": counts["fp16"], "fp32_ops": counts["fp32"], "attention_ops": attention}
