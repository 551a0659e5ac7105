"""The zoo as data: cards, names, stats, and models built from them."""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from evit_deploy import zoo
from evit_deploy._resources import data_dir
from evit_deploy.complexity import _flops, card_stats, count_macs, count_params
from evit_deploy.errors import UsageError
from evit_deploy.nn import build_model, official_registry
from evit_deploy.zoo import (
    RandomWeightsWarning,
    create_model,
    figure_resolution,
    get_card,
    list_cards,
    load_card,
)

ALL_CARDS = list_cards()
CARDS = [c for c in ALL_CARDS if c.task != "sam"]  # cls and seg; the SAM cards: tests/sam/test_cards.py
CARD_NAMES = [c.name for c in CARDS]


def test_a_card_for_every_official_name() -> None:
    # every registry name except the bare, checkpoint-less classifiers (efficientvit-b1, ...)
    official = {n for n in official_registry()
                if n.startswith(("efficientvit-seg-", "efficientvit-sam-")) or "-r" in n}
    names = [c.name for c in ALL_CARDS]
    assert set(names) == official
    assert len(names) == 37 and len(set(names)) == 37
    assert [c.task for c in ALL_CARDS][-5:] == ["sam"] * 5  # listed after cls and seg


@pytest.mark.parametrize("card", CARDS, ids=CARD_NAMES)
def test_card_agrees_with_the_official_registry(card: zoo.ModelCard) -> None:
    assert official_registry()[card.name] == (card.builder, card.builder_kwargs, card.norm_eps)
    assert card.norm_eps == (1e-5 if card.family == "B" else 1e-7)
    assert card.checkpoint == card.name.replace("-", "_") + ".pt"
    assert card.variant in card.name and card.dataset in (card.name if card.task == "segmentation" else "imagenet")
    assert len(card.classes) == card.num_classes == card.output.channels
    pre = card.preprocessing
    assert pre.color == "RGB" and pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)
    if card.task == "classification":
        res = int(card.name.rsplit("-r", 1)[1])
        assert card.input_size == (res, res)
        assert pre.crop_ratio == (0.95 if card.variant in ("b0", "b1") else 1.0)  # zoo_facts 6.1
        assert pre.resize_shorter == math.ceil(res / pre.crop_ratio - 1e-9)
        assert card.output_shape == (1, 1000) and card.published.top1 is not None or card.variant == "b0"
    elif card.dataset == "cityscapes":
        assert card.input_size == (1024, 2048) and pre.resize_to == (1024, 2048) and card.num_classes == 19
        assert card.output_shape == (1, 19, 128, 256)
    else:
        assert card.input_size == (512, 512) and pre.resize_shorter == 512 and pre.size_multiple == 32
        assert card.num_classes == 150 and card.output_shape == (1, 150, 64, 64)


def test_class_lists() -> None:
    imagenet = get_card("efficientvit-b1-r224").classes
    assert len(imagenet) == 1000
    assert (imagenet[0], imagenet[1], imagenet[207], imagenet[281], imagenet[999]) == (
        "tench", "goldfish", "golden retriever", "tabby", "toilet tissue")
    city = get_card("efficientvit-seg-b0-cityscapes").classes
    assert city[:3] == ["road", "sidewalk", "building"] and city[-1] == "bicycle"
    ade = get_card("efficientvit-seg-l2-ade20k").classes
    assert ade[0] == "wall" and ade[44] == "chest of drawers" and ade[149] == "flag"
    dumped = get_card("efficientvit-b0-r224").to_dict()
    assert dumped["classes_file"] == "imagenet_classes.txt" and len(dumped["classes"]) == 1000
    json.dumps(dumped)


def within_published(counted: int, printed: str) -> bool:
    """5% of the published figure, or half a unit of its last printed digit when that is wider ("0.1G")."""
    value = zoo.parse_figure(printed)
    return abs(counted - value) <= max(0.05 * value, figure_resolution(printed))


@pytest.mark.parametrize("card", CARDS, ids=CARD_NAMES)
def test_computed_stats_are_fresh_and_agree_with_published(card: zoo.ModelCard) -> None:
    stats = card_stats(card)  # meta device: ~0.2 s per card
    assert card.computed is not None, "run scripts/update_card_stats.py"
    assert (stats["params"], stats["macs"]) == (card.computed.params, card.computed.macs), \
        "stale computed: block; run scripts/update_card_stats.py"
    assert card.computed.input_size == card.input_size
    assert within_published(stats["params"], card.published.params)
    assert within_published(stats["macs"], card.published.macs)
    assert abs(stats["params"] / card.published.params_value - 1) <= 0.05
    if card.name != "efficientvit-b0-r224":  # b0's 0.1G is printed with one digit (timm card)
        assert abs(stats["macs"] / card.published.macs_value - 1) <= 0.05


def test_exact_counts_of_the_official_code() -> None:
    # zoo_facts 3.4 / 4.3 [V]: the official builders' trainable parameters
    exact = {"efficientvit-b0-r224": 3_410_008, "efficientvit-b1-r224": 9_102_024, "efficientvit-l1-r224": 52_654_088,
             "efficientvit-seg-b0-cityscapes": 706_691, "efficientvit-seg-b1-cityscapes": 4_803_443,
             "efficientvit-seg-b1-ade20k": 4_791_414, "efficientvit-seg-l2-ade20k": 51_462_454}
    for name, params in exact.items():
        assert get_card(name).params == params, name
    # [V] MACs re-counted on the official code, at its printed precision
    assert round(get_card("efficientvit-b1-r224").macs / 1e9, 3) == 0.519
    assert round(get_card("efficientvit-seg-b1-cityscapes").macs / 1e9, 2) == 25.11
    assert round(get_card("efficientvit-seg-l2-cityscapes").macs / 1e9, 1) == 396.1


@pytest.mark.parametrize(("name", "size"), [("efficientvit-b1-r224", (224, 224)),
                                            ("efficientvit-seg-b0-cityscapes", (128, 256)),
                                            ("efficientvit-seg-b1-cityscapes", (64, 64))])  # quadratic attention
def test_meta_count_equals_a_real_forward_count(name: str, size: tuple[int, int]) -> None:
    card = get_card(name)
    model = build_model(card.builder, norm_eps=card.norm_eps, **card.builder_kwargs)
    real = _flops(model, torch.zeros(1, 3, *size)) // 2
    assert count_macs(model, size) == real  # a CPU model is counted on meta through functional_call
    assert card_stats(card, size)["macs"] == real
    assert count_params(model) == card.params


def test_count_params_excludes_buffers() -> None:
    bn = torch.nn.BatchNorm2d(8)
    assert count_params(bn) == 16  # weight + bias; running_mean/var and num_batches_tracked are buffers
    frozen = torch.nn.Linear(4, 4)
    frozen.bias.requires_grad_(False)
    assert count_params(frozen) == 16


def test_get_card_accepts_checkpoint_style_names() -> None:
    assert get_card("efficientvit_seg_b1_cityscapes.pt").name == "efficientvit-seg-b1-cityscapes"
    assert get_card(" EfficientViT-B1-R224 ").name == "efficientvit-b1-r224"


@pytest.mark.parametrize(("name", "expected"), [
    ("efficientvit-b1", ("unknown model 'efficientvit-b1'; did you mean: efficientvit-b1-r224, efficientvit-b1-r256, "
                        "efficientvit-b1-r288? (evit models lists all)")),
    ("efficientvit-seg-b1-cityscape", ("unknown model 'efficientvit-seg-b1-cityscape'; did you mean: "
                                      "efficientvit-seg-b1-cityscapes")),
    ("l3-r384", "unknown model 'l3-r384'; did you mean: efficientvit-l3-r384"),
    ("nosuchmodel", "unknown model 'nosuchmodel' (evit models lists all)"),
])
def test_unknown_name_suggests_the_closest(name: str, expected: str) -> None:
    with pytest.raises(UsageError) as err:
        get_card(name)
    assert str(err.value).startswith(expected)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_random_weights_warn_and_are_reproducible() -> None:
    before = torch.random.get_rng_state()
    with pytest.warns(RandomWeightsWarning, match="outputs are meaningless.*--weights"):
        a = create_model("efficientvit-b0-r224", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        b = create_model("efficientvit-b0-r224", seed=3)
        c = create_model("efficientvit-b0-r224", seed=4)
    assert not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def _fixtures(reference: Path) -> list[tuple[str, dict]]:
    index = json.loads((reference / "fixtures" / "index.json").read_text())
    return sorted(index.items())


_REFERENCE = Path(os.environ.get("EVIT_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "reference"
# no reference data: one id, and the reference_dir fixture fails saying where it looked
FIXTURE_IDS = [k for k, _ in _fixtures(_REFERENCE)] if _REFERENCE.is_dir() else ["reference-data-missing"]


@pytest.mark.parametrize("fixture_id", FIXTURE_IDS)
def test_create_model_reproduces_the_official_fixtures(fixture_id: str, reference_dir: Path, seeded_weights,
                                                        tmp_path: Path) -> None:
    entry = dict(_fixtures(reference_dir))[fixture_id]
    fixtures = reference_dir / "fixtures"
    weights = seeded_weights.state_dict(fixtures / entry["weights"]["keys"], entry["weights"]["seed"])
    assert seeded_weights.digest(weights) == entry["weights"]["sha256"]
    path = tmp_path / "w.safetensors"
    seeded_weights.save(weights, path)
    model = create_model(entry["model"], path)
    x = torch.from_numpy(np.load(fixtures / entry["input"]))
    with torch.no_grad():
        y = model(x).numpy()
    ref = np.load(fixtures / entry["output"])
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_invalid_cards_are_one_line_usage_errors(tmp_path: Path) -> None:
    good = (data_dir("models") / "efficientvit-seg-b1-cityscapes.yaml").read_text()
    bad = tmp_path / "efficientvit-seg-b1-cityscapes.yaml"
    bad.write_text(good.replace("num_classes: 19", "num_classes: 18"))
    with pytest.raises(UsageError, match="19 classes listed, num_classes is 18"):
        load_card(bad)
    bad.write_text(good + "surprise: 1\n")
    with pytest.raises(UsageError, match="surprise: Extra inputs are not permitted"):
        load_card(bad)
    bad.write_text(good.replace("resize_to: [1024, 2048]", "resize_shorter: 512"))
    with pytest.raises(UsageError, match="resize: fixed needs resize_to"):
        load_card(bad)
    bad.write_text(good.replace("num_classes: 19\n", ""))
    with pytest.raises(UsageError, match="a segmentation card needs num_classes and output"):
        load_card(bad)
    renamed = tmp_path / "other.yaml"
    renamed.write_text(good)
    with pytest.raises(UsageError, match="does not match the file name"):
        load_card(renamed)
    renamed.write_text("- just\n- a list\n")
    with pytest.raises(UsageError, match="expected a mapping"):
        load_card(renamed)


def test_data_dir_falls_back_to_the_repo_root() -> None:
    assert (data_dir("models") / "efficientvit-b1-r224.yaml").is_file()
    assert data_dir("export_configs").name == "export_configs"
