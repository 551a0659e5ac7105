"""fp16 with fp32 islands: which ops stay fp32 (by traced source), and what the saved program computes in."""
from __future__ import annotations

import re
from typing import Any

# fp32 islands under fp16, recognised by the source they were traced from (EXIR stack traces).
ISLANDS = {
    "attention": re.compile(r"\brelu_(linear|quadratic)_att\b"),  # the call line or the frame
    # LayerNorm2d's function (SAM's encoder neck and decoder), nn.LayerNorm's F.layer_norm (SAM's decoder)
    "layernorm": re.compile(r"\blayer_norm_2d\(|\breturn F\.layer_norm\("),
    "upsample": re.compile(r"[/\\]convert[/\\]bicubic\.py\"|F\.interpolate\("),
}

ISLAND_RISK = {  # why each island must stay fp32, for the message when a converter ignores the request
    "attention": "LiteMLA's token sums overflow fp16 on trained weights and its eps is 0 in fp16",
    "layernorm": "the squared deviations overflow fp16 once |x - mean| > 256",
    "upsample": "the official bicubic upsampling runs in fp32",
}


def island_selector(keep: list[str]) -> tuple[Any, dict[str, list[str]]]:
    """An ``op_selector`` for FP16ComputePrecision: False (stay fp32) for ops traced from an island.

    Also returns, per kind, the output names of the ops it kept in fp32 (filled in as the converter
    calls it): the saved program keeps these names, so ``program_precision`` can show each op's type."""
    from coremltools.converters.mil.mil.scope import ScopeSource

    kept: dict[str, list[str]] = {kind: [] for kind in keep}

    def select(op: Any) -> bool:
        trace = (getattr(op, "scopes", None) or {}).get(ScopeSource.EXIR_STACK_TRACE) or []
        text = "\n".join(str(t) for t in trace if t)
        for kind in keep:
            if ISLANDS[kind].search(text):
                if op.op_type != "const":
                    kept[kind] += [out.name for out in op.outputs]
                return False
        return True

    return select, kept


def program_precision(program: Any, kept: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """fp16/fp32 op counts of a saved program, the dtype of its divisions/matmuls (LiteMLA's, in an
    EfficientViT backbone), and per island kind the types of the ops kept in fp32 that survive by
    name (fusions may remove some; none may have turned fp16)."""
    counts = {"fp16": 0, "fp32": 0}
    attention = {"fp16": 0, "fp32": 0}
    dtypes: dict[str, str] = {}
    for op in program.operations:
        if op.type == "const" or op.type.startswith("constexpr_") or not op.outputs:
            continue
        dtypes.update((name, ttype.mil_dtype) for name, ttype in op.outputs)
        dtype = op.outputs[0][1].mil_dtype
        if dtype in counts:
            counts[dtype] += 1
            if op.type in ("matmul", "real_div"):
                attention[dtype] += 1
    islands = {kind: {t: sum(dtypes.get(n) == t for n in names) for t in ("fp32", "fp16")}
               for kind, names in (kept or {}).items()}
    return {"fp16_ops": counts["fp16"], "fp32_ops": counts["fp32"], "attention_ops": attention, "islands": islands}
