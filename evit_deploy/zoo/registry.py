"""Finding cards: every card in ``models/``, one by name (with did-you-mean), each validated once."""
from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from evit_deploy._resources import data_dir
from evit_deploy.errors import UsageError
from evit_deploy.zoo.cards import ModelCard


def load_card(path: str | Path) -> ModelCard:
    """Read and validate one card; any problem is a one-line ``UsageError`` naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"model card {path}: cannot read it: {_one_line(err)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"model card {path}: expected a mapping of fields, got {type(data).__name__}")
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "card"
        raise UsageError(f"model card {path}: {where}: {first['msg']} "
                         f"({err.error_count()} problem(s))") from None
    if card.name != path.stem:
        raise UsageError(f"model card {path}: name {card.name!r} does not match the file name")
    card._card_dir = path.parent
    return card


def _sort_key(card: ModelCard) -> tuple[Any, ...]:
    datasets = ("imagenet", "cityscapes", "ade20k", "sa-1b")
    return (card.task != "classification", datasets.index(card.dataset), card.family,
            card.variant, card.input_size[0] * card.input_size[1])


@functools.lru_cache(maxsize=4)
def _load_all(models_dir: Path) -> tuple[ModelCard, ...]:
    if not models_dir.is_dir():
        raise UsageError(f"model cards folder not found: {models_dir} (reinstall evit-deploy)")
    cards = [load_card(p) for p in sorted(models_dir.glob("*.yaml"))]
    return tuple(sorted(cards, key=_sort_key))


_REGISTERED: dict[str, ModelCard] = {}


def register_card(card: ModelCard) -> None:
    """Add a card made in code (a model family under development, a test's model) for this process."""
    _REGISTERED[card.name] = card


def list_cards() -> list[ModelCard]:
    """Every card: classification, then Cityscapes and ADE20K segmentation, then SAM (then registered ones)."""
    return [*_load_all(data_dir("models")), *_REGISTERED.values()]


def model_names() -> list[str]:
    return [c.name for c in list_cards()]


def _normalise(name: str) -> str:
    name = name.strip().lower()
    for suffix in (".pt", ".pth", ".safetensors", ".yaml"):
        name = name.removesuffix(suffix)
    return name.replace("_", "-")


def get_card(name: str) -> ModelCard:
    """The card called ``name`` (``efficientvit_b1_r224`` and ``efficientvit_b1_r224.pt`` work too).

    Unknown names raise ``UsageError`` with the closest names.
    """
    cards = {c.name: c for c in list_cards()}
    key = _normalise(name)
    if key in cards:
        return cards[key]
    raise UsageError(_unknown_message(name, key, list(cards)))


def _unknown_message(name: str, key: str, names: list[str]) -> str:
    close: list[str] = []
    if len(key) >= 2:
        close = [n for n in names if key in n]
    for n in difflib.get_close_matches(key, names, n=6, cutoff=0.5):
        if n not in close:
            close.append(n)
    if not close:
        # a bare variant (e.g. "b1", "seg-l2") is a substring of the names without the prefix
        close = [n for n in names if key and key in n.removeprefix("efficientvit-")]
    close = close[:3]
    if close:
        return f"unknown model '{name}'; did you mean: {', '.join(close)}? (evit models lists all)"
    return f"unknown model '{name}' (evit models lists all)"


# ---------------------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
