"""Reading checkpoints safely and fitting them to a zoo model.

What loads:
- ``.pt`` / ``.pth`` (anything ``torch.save`` wrote): only through
  ``torch.load(path, map_location="cpu", weights_only=True)``. A file that needs arbitrary
  unpickling is refused with a ``UsageError``; there is no unsafe fallback, ever.
- ``.safetensors`` (recognised by content too, whatever the suffix).
- The state dict may be the whole file, or sit under ``state_dict`` (the official trainer),
  ``model``, ``state_dict_ema``, ``model_ema`` or ``ema`` (first match in that order), but
  only where that entry is clearly a state dict: a non-empty mapping of names to tensors.
  Prefixes that wrap every key (``module.`` from DataParallel/DDP, ``_orig_mod.`` from
  ``torch.compile``) are stripped.
- Official layout (``backbone.*``, ``head.*``) or timm layout (``stem.*``, ``stages.*``,
  ``head.in_conv.*``; B and L classifiers), detected by the keys and renamed to the
  official names (timm_layout.md, section 4). The model keeps the official numerics
  (LiteMLA eps 1e-15, registry norm eps), so timm weights compute what the official
  implementation computes with them.

Anything that does not fit the model raises a one-line ``UsageError``: counts of missing,
unexpected and shape-mismatched keys with the first names of each, and which zoo model the
checkpoint looks like when that can be told.
"""
from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evit_deploy.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

Guess = Callable[[Mapping[str, Any]], "str | None"]  # state dict -> "it looks like a checkpoint of ..."

__all__ = [
    "detect_layout",
    "load_state_dict",
    "load_weights",
    "official_to_timm",
    "timm_to_official",
    "unwrap_state_dict",
]

WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "ema")
WRAPPING_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 3  # names shown per category in a mismatch message


# ---------------------------------------------------------------------------------------------
# Reading a file

def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a checkpoint file (unwrapped, prefixes stripped, layout as saved)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"weights file not found: {path}")
    if not path.is_file():
        raise UsageError(f"weights path is not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(64)
    size = path.stat().st_size
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(head, size):
        obj: Any = _load_safetensors(path)
    elif head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save zip, or a legacy pickle
        obj = _load_torch(path)
    else:
        raise UsageError(f"{path} is not a checkpoint{_describe(head)}: evit reads PyTorch weights "
                         "(.pt/.pth from torch.save) and .safetensors")
    return unwrap_state_dict(obj, source=str(path))


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _describe(head: bytes) -> str:
    signatures = {
        b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"%PDF": "a PDF", b"\x1f\x8b": "gzip data",
    }
    for magic, what in signatures.items():
        if head.startswith(magic):
            return f" (it looks like {what})"
    if head[4:8] == b"TFL3":
        return " (it looks like a TFLite model)"
    if not head:
        return " (it is empty)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return " (it looks like text)" if text.isprintable() or text.strip() else ""


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path} is truncated or not a safetensors file ({_one_line(err)}); "
                         "copy or save it again") from None


def _load_torch(path: Path) -> Any:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": not the user's concern
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        culprit = found[1] if found else _first_foreign_global(path)
        what = f"a pickled Python object ({culprit})" if culprit else f"pickled data it cannot read ({_last_line(err)})"
        raise UsageError(
            f"{path} holds {what} that torch.load(weights_only=True) refuses: evit loads weights only and "
            "never unpickles arbitrary objects (there is no unsafe fallback); re-save just the weights where "
            "that object can be loaded: torch.save(model.state_dict(), 'weights.pt')") from None
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError) as err:
        text = _one_line(err)
        if isinstance(err, EOFError) or "central directory" in text or "truncated" in text.lower():
            reason = text.split(". ")[0][:160] or "unexpected end of file"
            raise UsageError(f"{path} is truncated or corrupt (torch.load: {reason}); "
                             "copy or save it again") from None
        raise UsageError(f"{path} is not a checkpoint torch.load can read ({text.split('. ')[0][:160]})") from None


def _first_foreign_global(path: Path) -> str | None:
    """The first class/function a plain pickle file refers to (read with pickletools: nothing runs)."""
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    return str(arg).replace(" ", ".")
                if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - a malformed pickle has no name to give
        return None
    return None


def _is_state_dict(obj: Any) -> bool:
    import torch

    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def unwrap_state_dict(obj: Any, *, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint object (see the module docstring for the rules)."""
    if not isinstance(obj, Mapping):
        raise UsageError(f"{source} is not a checkpoint: it holds a {type(obj).__name__}, not a state dict "
                         "(a dict of parameter names to tensors)")
    sd: Mapping[str, Any] | None = obj if _is_state_dict(obj) else None
    if sd is None:
        for key in WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                sd = obj[key]
                break
    if sd is None:
        keys = ", ".join(repr(k) for k in list(obj)[:6]) or "none"
        raise UsageError(f"{source} is not a checkpoint: no state dict at the top level or under "
                         f"{', '.join(WRAPPER_KEYS)} (top-level keys: {keys})")
    out = dict(sd)
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPING_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


# ---------------------------------------------------------------------------------------------
# Layouts (timm_layout.md)

def detect_layout(sd: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(layout, family)``: layout ``official`` / ``timm``; family ``B`` / ``L`` for timm, else None.

    Dicts in neither layout count as ``official``: loading then reports what does not fit.
    """
    keys = set(sd)
    if any(k.startswith(("stem_in_conv.", "stem_res", "stages_")) for k in keys):
        raise UsageError("the checkpoint is a timm features_only state dict (keys like 'stem_in_conv.*', "
                         "'stages_0.*'): it has no classifier head; save the full timm model's state_dict()")
    if "stem.in_conv.conv.weight" in keys:
        return "timm", ("L" if any(k.startswith("stem.res0.main.conv1.") for k in keys) else "B")
    return "official", None


_TIMM_HEAD = (
    (re.compile(r"head\.in_conv\.(.+)"), r"head.op_list.0.\1"),
    (re.compile(r"head\.classifier\.0\.weight"), r"head.op_list.2.linear.weight"),
    (re.compile(r"head\.classifier\.1\.(weight|bias)"), r"head.op_list.2.norm.\1"),
    (re.compile(r"head\.classifier\.4\.(weight|bias)"), r"head.op_list.3.linear.\1"),
)
_OFFICIAL_HEAD = (
    (re.compile(r"head\.op_list\.0\.(.+)"), r"head.in_conv.\1"),
    (re.compile(r"head\.op_list\.2\.linear\.weight"), r"head.classifier.0.weight"),
    (re.compile(r"head\.op_list\.2\.norm\.(weight|bias)"), r"head.classifier.1.\1"),
    (re.compile(r"head\.op_list\.3\.linear\.(weight|bias)"), r"head.classifier.4.\1"),
)


def _timm_key(key: str, family: str) -> str | None:
    stem = "backbone.input_stem.op_list." if family == "B" else "backbone.stages.0.op_list."
    shift = 0 if family == "B" else 1
    if m := re.fullmatch(r"stem\.in_conv\.(.+)", key):
        return f"{stem}0.{m[1]}"
    if m := re.fullmatch(r"stem\.res(\d+)\.(.+)", key):
        return f"{stem}{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", key):
        return f"backbone.stages.{int(m[1]) + shift}.op_list.{m[2]}.{m[3]}"
    for pattern, repl in _TIMM_HEAD:
        if pattern.fullmatch(key):
            return pattern.sub(repl, key)
    return None


def _official_key(key: str, family: str) -> str | None:
    if family == "B" and (m := re.fullmatch(r"backbone\.input_stem\.op_list\.(\d+)\.(.+)", key)):
        i = int(m[1])
        return f"stem.in_conv.{m[2]}" if i == 0 else f"stem.res{i - 1}.{m[2]}"
    if m := re.fullmatch(r"backbone\.stages\.(\d+)\.op_list\.(\d+)\.(.+)", key):
        s, j, rest = int(m[1]), int(m[2]), m[3]
        if family == "B":
            return f"stages.{s}.blocks.{j}.{rest}"
        if s == 0:
            return f"stem.in_conv.{rest}" if j == 0 else f"stem.res{j - 1}.{rest}"
        return f"stages.{s - 1}.blocks.{j}.{rest}"
    for pattern, repl in _OFFICIAL_HEAD:
        if pattern.fullmatch(key):
            return pattern.sub(repl, key)
    return None


def timm_to_official(sd: Mapping[str, Any], family: str | None = None) -> dict[str, Any]:
    """Rename a timm-layout classifier state dict to the official names (tensors are shared, not copied)."""
    family = family or detect_layout(sd)[1] or "B"
    out: dict[str, Any] = {}
    for key, value in sd.items():
        new = _timm_key(key, family)
        if new is None:
            raise UsageError(f"timm-layout checkpoint has a key evit cannot map to the official layout: {key!r}")
        out[new] = value
    return out


def official_to_timm(sd: Mapping[str, Any], family: str) -> dict[str, Any]:
    """Rename an official classifier state dict to timm's names (family ``B`` or ``L``)."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        new = _official_key(key, family)
        if new is None:
            raise UsageError(f"official key has no timm counterpart: {key!r} (timm has classifiers only)")
        out[new] = value
    return out


# ---------------------------------------------------------------------------------------------
# Fitting a model

def load_weights(model: torch.nn.Module, weights: str | Path | Mapping[str, Any], name: str,
                 guess: Guess | None = None) -> None:
    """Load ``weights`` (a file or a state dict) into ``model`` (the zoo model ``name``), strictly.

    ``guess`` names the model a mismatched state dict belongs to; the zoo supplies it, since
    only the zoo knows every architecture."""
    if isinstance(weights, Mapping):
        source = "the given state dict"
        sd = unwrap_state_dict(weights, source=source)
    else:
        source = str(weights)
        sd = load_state_dict(weights)
    layout, family = detect_layout(sd)
    if layout == "timm":
        sd = timm_to_official(sd, family)

    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    # Some exporters drop the BatchNorm step counters; they never affect eval outputs.
    for key in [k for k in missing if k.endswith("num_batches_tracked")]:
        sd[key] = expected[key]
        missing.remove(key)
    unexpected = [k for k in sd if k not in expected]
    mismatched = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        message = _mismatch_message(source, name, sd, expected, missing, unexpected, mismatched, layout)
        hint = guess(sd) if guess is not None else None
        raise UsageError(message + (f"; {hint}" if hint else ""))
    _refuse_nonfinite(sd, source)
    model.load_state_dict(sd, strict=True)


def _refuse_nonfinite(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """A NaN or Inf weight (a diverged run, a bad conversion) makes every output NaN; an export of it
    would pass every structural check and fail only at verify, as ``nonfinite``. Name the first."""
    import torch

    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        first = sd[bad[0]]
        nan, inf = int(torch.isnan(first).sum()), int(torch.isinf(first).sum())
        what = " and ".join(f"{n} {label}" for n, label in ((nan, "NaN"), (inf, "Inf")) if n)
        others = f" ({len(bad) - 1} more tensor(s) too)" if len(bad) > 1 else ""
        raise UsageError(f"{source}: tensor {bad[0]!r} holds {what} of its {first.numel()} values{others}; "
                         "evit refuses non-finite weights: use a checkpoint from before the run diverged")


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (", ..." if len(keys) > _SHOW else "")


def _mismatch_message(source: str, name: str, sd: Mapping[str, Any], expected: Mapping[str, Any],
                      missing: list[str], unexpected: list[str], mismatched: list[str], layout: str) -> str:
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected and {len(mismatched)} shape-mismatched keys"
    details = []
    if missing:
        details.append(f"missing: {_names(missing)}")
    if unexpected:
        details.append(f"unexpected: {_names(unexpected)}")
    if mismatched:
        shown = [f"{k} {list(sd[k].shape)} vs {list(expected[k].shape)}" for k in mismatched[:_SHOW]]
        details.append("shape-mismatched (file vs model): " + ", ".join(shown)
                       + (", ..." if len(mismatched) > _SHOW else ""))
    layout_note = " (timm layout, renamed)" if layout == "timm" else ""
    return f"{source}{layout_note} does not fit {name}: {counts}; {'; '.join(details)}"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _last_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation",
                                                        "Please file an issue", "In PyTorch"))]
    return (useful or lines or ["unreadable"])[-1][:160]
