"""The EfficientViT-SAM model cards (``models/sam/``, data only until the zoo reads multi-graph
cards) agree with the registry, the graphs' contracts, the published figures and our counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from evit_deploy.complexity import count_graph_macs, count_macs, count_params, counted_with
from evit_deploy.nn import build_model, official_registry
from evit_deploy.nn.sam.graphs import SamDecoderGraph, SamEncoderGraph
from evit_deploy.sam import MEAN, PROMPT_FRAME, STD
from evit_deploy.zoo import figure_resolution, parse_figure

CARDS_DIR = Path(__file__).resolve().parents[2] / "models" / "sam"
CARD_FILES = sorted(CARDS_DIR.glob("*.yaml"))


def _card(path: Path) -> dict[str, Any]:
    card = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert card["name"] == path.stem
    return card


def _model(card: dict[str, Any]) -> Any:
    with torch.device("meta"):
        return build_model(card["builder"], norm_eps=card["norm_eps"], **card["builder_kwargs"])


def test_a_card_for_every_sam_model() -> None:
    names = {n for n in official_registry() if n.startswith("efficientvit-sam-")}
    assert {p.stem for p in CARD_FILES} == names and len(names) == 5


@pytest.mark.parametrize("path", CARD_FILES, ids=[p.stem for p in CARD_FILES])
def test_card_agrees_with_the_model_and_its_graphs(path: Path) -> None:
    card = _card(path)
    model = _model(card)
    size = model.image_size
    assert official_registry()[card["name"]] == (card["builder"], card["builder_kwargs"], card["norm_eps"])
    assert card["task"] == "sam" and card["variant"] in card["name"]
    assert card["checkpoint"] == card["name"].replace("-", "_") + ".pt"
    assert card["checkpoint_aliases"] == [f"{card['variant']}.pt"]
    assert card["input_size"] == [size, size] and card["prompt_frame"] == PROMPT_FRAME
    pre = card["preprocessing"]
    assert pre["resize_longest"] == size and pre["pad_to"] == [size, size]
    assert pre["mean"] == pytest.approx([m / 255 for m in MEAN], abs=1e-12)
    assert pre["std"] == pytest.approx([s / 255 for s in STD], abs=1e-12)

    encoder, decoder = card["graphs"]
    assert (encoder["name"], encoder["verify"], decoder["name"], decoder["verify"]) == (
        "encoder",
        "tensor",
        "decoder",
        "sam-masks",
    )
    _same_contract(encoder, SamEncoderGraph(model))
    _same_contract(decoder, SamDecoderGraph(model))
    assert set(decoder["options"]) == {"single_mask", "mask_input"}
    assert encoder["inputs"][0]["shape"] == ["batch", 3, size, size]


def _same_contract(entry: dict[str, Any], graph: Any) -> None:
    """Names, and dynamic dims named and bounded as the graph exports them."""
    assert [i["name"] for i in entry["inputs"]] == list(graph.input_names)
    assert [o["name"] for o in entry["outputs"]] == list(graph.output_names)
    dims = {
        d.__name__: [d.min, d.max] for spec in graph.dynamic_shapes().values() if spec for d in spec.values()
    }
    assert entry["dynamic"] == dims
    for value in entry["inputs"] + entry["outputs"]:
        assert all(isinstance(d, int) or d in dims for d in value["shape"]), value


@pytest.mark.parametrize("path", CARD_FILES, ids=[p.stem for p in CARD_FILES])
def test_computed_counts_are_current_and_match_the_published_figures(path: Path) -> None:
    card = _card(path)
    model = _model(card)
    encoder, decoder = SamEncoderGraph(model), SamDecoderGraph(model)
    size = model.image_size
    graphs = card["computed"]["graphs"]
    decoder_inputs = (
        torch.empty(1, 256, 64, 64, device="meta"),
        torch.empty(1, 2, 2, device="meta"),
        torch.empty(1, 2, device="meta"),
    )
    assert card["computed"]["params"] == count_params(model)
    assert graphs["encoder"] == {
        "params": count_params(encoder),
        "macs": count_macs(encoder, (size, size)),
        "input": [1, 3, size, size],
    }
    assert graphs["decoder"] == {
        "params": count_params(decoder),
        "macs": count_graph_macs(decoder, decoder_inputs),
        "num_prompts": 1,
        "num_points": 2,
    }
    assert card["computed"]["counted_with"] == counted_with()
    # README: whole-model parameters, image-encoder MACs, each to its printed precision
    published = card["published"]
    assert abs(card["computed"]["params"] - parse_figure(published["params"])) <= figure_resolution(
        published["params"]
    )
    assert abs(graphs["encoder"]["macs"] - parse_figure(published["macs"])) <= figure_resolution(
        published["macs"]
    )
