"""The EfficientViT-SAM model cards (``models/efficientvit-sam-*.yaml``) as the zoo reads them: they agree
with the registry, the graphs' contracts, the published figures and our counts; checkpoints load
strictly; images are preprocessed the official predictor's way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evit_deploy import zoo
from evit_deploy._resources import data_dir
from evit_deploy.complexity import count_params, graph_stats
from evit_deploy.data import image_sizes, input_batches
from evit_deploy.errors import UsageError
from evit_deploy.nn import build_model, official_registry
from evit_deploy.nn.sam.graphs import SamDecoderGraph, SamEncoderGraph
from evit_deploy.sam import MEAN, PROMPT_FRAME, STD
from evit_deploy.zoo import create_model, figure_resolution, get_card, load_card, parse_figure

CARDS = [c for c in zoo.list_cards() if c.task == "sam"]
NAMES = [c.name for c in CARDS]


def _model(card: zoo.ModelCard) -> Any:
    with torch.device("meta"):
        return build_model(card.builder, norm_eps=card.norm_eps, **card.builder_kwargs)


def test_a_card_for_every_sam_model() -> None:
    names = {n for n in official_registry() if n.startswith("efficientvit-sam-")}
    assert set(NAMES) == names and len(names) == 5
    assert [(c.family, c.variant) for c in CARDS] == [("L", "l0"), ("L", "l1"), ("L", "l2"), ("XL", "xl0"),
                                                      ("XL", "xl1")]


@pytest.mark.parametrize("card", CARDS, ids=NAMES)
def test_card_agrees_with_the_model_and_its_graphs(card: zoo.ModelCard) -> None:
    model = _model(card)
    size = model.image_size
    assert official_registry()[card.name] == (card.builder, card.builder_kwargs, card.norm_eps)
    assert card.task == "sam" and card.dataset == "sa-1b" and card.variant in card.name
    assert card.classes == [] and card.num_classes is None and card.output is None
    assert card.checkpoint == card.name.replace("-", "_") + ".pt"
    assert card.checkpoint_aliases == [f"{card.variant}.pt"]
    assert card.input_size == (size, size) and card.prompt_frame == PROMPT_FRAME
    pre = card.preprocessing
    assert pre.resize == "longest_side_pad" and pre.resize_longest == size and pre.pad_to == (size, size)
    assert pre.mean == pytest.approx([m / 255 for m in MEAN], abs=1e-12)
    assert pre.std == pytest.approx([s / 255 for s in STD], abs=1e-12)
    assert card.input_spec().extra == {"task": "sam", "resize": "longest_side_pad"}

    encoder, decoder = card.graphs
    assert (encoder.name, encoder.verify, decoder.name, decoder.verify) == ("encoder", "tensor", "decoder",
                                                                          "sam-masks")
    _same_contract(encoder, SamEncoderGraph(model), {})
    _same_contract(decoder, SamDecoderGraph(model), {})
    _same_contract(decoder, SamDecoderGraph(model, mask_input=True), {"mask_input": True})
    assert set(decoder.options) == {"single_mask", "mask_input"}
    assert encoder.inputs[0].shape == ("batch", 3, size, size) and encoder.inputs[0].feed == "image"
    assert decoder.inputs[0].feed == "encoder.image_embeddings"
    assert decoder.static_shape(decoder.inputs[1]) == (1, 2, 2)  # one click and its padding point, or a box
    assert decoder.profile == [{"num_prompts": b, "num_points": n} for b in (1, 16) for n in (1, 4)]


def _same_contract(entry: zoo.cards.GraphCard, graph: Any, options: dict[str, bool]) -> None:
    """Names (the option's own inputs only with it on), and dynamic dims named and bounded as the graph
    exports them."""
    assert [i.name for i in entry.inputs_for(options)] == list(graph.input_names)
    assert [o.name for o in entry.outputs] == list(graph.output_names)
    dims = {d.__name__: (d.min, d.max) for spec in graph.dynamic_shapes().values() if spec for d in spec.values()}
    assert entry.dynamic == dims


@pytest.mark.parametrize("card", CARDS, ids=NAMES)
def test_computed_counts_are_current_and_match_the_published_figures(card: zoo.ModelCard) -> None:
    model = _model(card)
    assert card.computed is not None
    assert card.computed.params == count_params(model) == card.params
    counted = graph_stats(card)
    assert {k: v.model_dump(mode="json") for k, v in card.computed.graphs.items()} == counted, \
        "stale computed: block; run scripts/update_card_stats.py"
    assert counted["decoder"]["inputs"] == {"image_embeddings": [1, 256, 64, 64], "point_coords": [1, 2, 2],
                                            "point_labels": [1, 2]}
    assert counted["encoder"]["params"] + counted["decoder"]["params"] == card.params
    assert card.macs == counted["encoder"]["macs"]
    # README: whole-model parameters and image-encoder MACs, each to its printed precision
    published = card.published
    assert abs(card.params - parse_figure(published.params)) <= figure_resolution(published.params)
    assert abs(card.macs - parse_figure(published.macs)) <= figure_resolution(published.macs)
    assert published.metric == f"COCO mAP {published.coco_map:.1f}" and published.lvis_map is not None


def _edited(tmp_path: Path, old: str, new: str) -> Path:
    text = (data_dir("models") / "efficientvit-sam-l0.yaml").read_text()
    assert old in text
    path = tmp_path / "efficientvit-sam-l0.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(("old", "new", "message"), [
    ("task: sam\n", "task: sam\nnum_classes: 1\n", "a sam card has no classes or output (num_classes given)"),
    ("prompt_frame: 1024", "prompt_frame: null", "a sam card needs prompt_frame and graphs"),
    ("resize_longest: 512", "resize_longest: 448", "a sam card's preprocessing is longest_side_pad to its input_size"),
    ("family: L", "family: XL", "variant l0 is not in family XL"),
    ("dataset: sa-1b", "dataset: imagenet", "dataset imagenet does not go with task sam"),
    ("option: mask_input,", "option: refine,", "depends on option 'refine', which options does not list"),
    ("static: {num_points: 2}", "static: {num_points: 65}", "static num_points = 65 is not within its dynamic range"),
    ("{num_prompts: 16, num_points: 4}", "{num_prompts: 2048, num_points: 4}",
     "profile size num_prompts = 2048 is outside [1, 1024]"),
    ("    encoder: {params:", "    neck: {params:", "computed.graphs counts ['decoder', 'neck']"),
])
def test_invalid_sam_cards_are_one_line_errors(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(UsageError, match="model card .*efficientvit-sam-l0.yaml: ") as err:
        load_card(_edited(tmp_path, old, new))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def l0_checkpoint(seeded_checkpoint: Any) -> Path:
    return seeded_checkpoint("efficientvit_sam_l0")


def test_official_checkpoints_load_strictly(l0_checkpoint: Path, tmp_path: Path, seeded_weights: Any,
                                            reference_dir: Path) -> None:
    """The whole model (image_encoder, prompt_encoder, mask_decoder keys), bare or under the official
    trainer's ``state_dict``; a checkpoint of another SAM model is refused naming it."""
    model = create_model("efficientvit-sam-l0", l0_checkpoint)
    weights = seeded_weights.state_dict(reference_dir / "state_dict_keys/efficientvit_sam_l0.txt", 1234)
    key = "mask_decoder.iou_prediction_head.layers.2.weight"
    assert np.array_equal(model.state_dict()[key].numpy(), weights[key])
    wrapped = tmp_path / "efficientvit_sam_l0.pt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in weights.items()}}, wrapped)
    again = create_model("efficientvit-sam-l0", wrapped)
    assert torch.equal(again.state_dict()[key], model.state_dict()[key])
    with pytest.raises(UsageError) as err:
        create_model("efficientvit-sam-l1", l0_checkpoint)
    message = str(err.value)
    assert "does not fit efficientvit-sam-l1" in message and "it looks like a checkpoint of efficientvit-sam-l0" \
        in message and "\n" not in message
    graph = model.graph("decoder", single_mask=True)
    assert isinstance(graph, SamDecoderGraph) and graph.single_mask and not graph.mask_input
    with pytest.raises(KeyError, match="has no graph 'neck'"):
        model.graph("neck")


def test_images_are_fed_as_the_official_predictor_feeds_them(reference_dir: Path, tmp_path: Path) -> None:
    """verify --images with a SAM model: long side to 512, normalised in 0..255 terms, zero padded: the
    fixture's official encoder input, bit for bit, and the photo's own size for its prompts."""
    folder = reference_dir / "fixtures" / "sam"
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "coffee.png").write_bytes((folder / "coffee.png").read_bytes())
    spec = get_card("efficientvit-sam-l0").input_spec()
    (image,) = input_batches(spec, samples=1, seed=0, source=photos)
    np.testing.assert_array_equal(image, np.load(folder / "efficientvit_sam_l0.encoder.input.npy"))
    assert image_sizes(spec, samples=2, source=photos) == [(400, 600), (400, 600)]
    assert image_sizes(spec, samples=1) == [(512, 512)]  # random inputs fill the square
    index = json.loads((folder / "sam_index.json").read_text())
    assert index["efficientvit-sam-l0"]["encoder"]["photo_shape"][:2] == [400, 600]


def test_eval_sends_sam_to_verify(tmp_path: Path) -> None:
    """eval scores class labels; a SAM model has none, and is told where its check lives."""
    from evit_deploy.evaluation import evaluate

    with pytest.raises(UsageError, match="efficientvit-sam-l0 is a sam model: eval scores classifiers .* `evit verify`"):
        evaluate("efficientvit-sam-l0", tmp_path)
