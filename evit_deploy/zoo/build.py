"""Zoo cards -> ``nn.Module``: built reproducibly, weights loaded strictly, mismatches explained."""
from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evit_deploy.zoo.cards import ModelCard
from evit_deploy.zoo.registry import get_card, list_cards

if TYPE_CHECKING:  # pragma: no cover
    import torch


class RandomWeightsWarning(UserWarning):
    """A model was built without weights: its outputs are meaningless."""


def create_model(
    name: str | ModelCard,
    weights: str | Path | Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
) -> torch.nn.Module:
    """Build the zoo model ``name`` in eval mode.

    ``weights``: a ``.pt``/``.pth`` or ``.safetensors`` file (official or timm layout,
    optionally wrapped and/or ``module.``-prefixed; see ``evit_deploy.checkpoints``), or an
    already loaded state dict. Without weights the model is randomly initialised from
    ``seed`` (reproducibly, without touching the global RNG) and a
    ``RandomWeightsWarning`` says its outputs are meaningless.
    """
    import torch

    from evit_deploy.nn import build_model

    card = name if isinstance(name, ModelCard) else get_card(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(card.builder, norm_eps=card.norm_eps, **card.builder_kwargs)
    if weights is None:
        warnings.warn(
            f"{card.name} has random weights (seed {seed}): its outputs are meaningless; "
            f"pass --weights with a checkpoint: {card.checkpoint_source()}",
            RandomWeightsWarning,
            stacklevel=2,
        )
    else:
        from evit_deploy.checkpoints import load_weights

        load_weights(model, weights, card.name, guess=lambda sd: guess_checkpoint(sd, card))
    return model.eval()


def guess_checkpoint(sd: Mapping[str, Any], card: ModelCard) -> str | None:
    """Which zoo model the state dict belongs to, if it can be told."""
    head = "head.op_list.3.linear.weight"
    found = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    best: tuple[float, tuple[str, str]] | None = None
    try:
        signatures = _signatures()
    except Exception:  # noqa: BLE001 - a failed meta build must not hide the real error
        signatures = {}
    for ident, sig in signatures.items():
        if found == sig:
            return f"it looks like a checkpoint of {_describe_ident(ident)}"
        # same architecture, another number of classes: only the last layer differs
        if head in found and head in sig and set(found) == set(sig):
            diff = [k for k in sig if sig[k] != found[k]]
            if all(k.startswith("head.op_list.3.") for k in diff):
                return (f"it looks like {_describe_ident(ident)} fine-tuned for {found[head][0]} classes "
                        f"(the card has {card.num_classes})")
        both = len(set(found.items()) & set(sig.items()))
        score = both / max(len(found), len(sig))
        if best is None or score > best[0]:
            best = (score, ident)
    if best is not None and best[0] >= 0.5:
        return f"closest zoo model: {_describe_ident(best[1])} ({best[0]:.0%} of keys match)"
    return None


def _describe_ident(ident: tuple[str, str]) -> str:
    names = [c.name for c in list_cards() if (c.builder, repr(sorted(c.builder_kwargs.items()))) == ident]
    if len(names) <= 3:
        return " / ".join(names)
    return f"{' / '.join(names[:3])} / ..."


@functools.lru_cache(maxsize=1)
def _signatures() -> dict[tuple[str, str], dict[str, tuple[int, ...]]]:
    """Parameter names and shapes of every zoo architecture, from models built on the meta device."""
    import torch

    from evit_deploy.nn import build_model
    out: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    for card in list_cards():
        ident = (card.builder, repr(sorted(card.builder_kwargs.items())))
        if ident in out:
            continue
        with torch.device("meta"):
            model = build_model(card.builder, norm_eps=card.norm_eps, **card.builder_kwargs)
        out[ident] = {k: tuple(v.shape) for k, v in model.state_dict().items()
                      if not k.endswith("num_batches_tracked")}
    return out
