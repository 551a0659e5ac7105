"""EfficientViT-SAM reproduces the official outputs in ``fixtures/sam/`` on seeded weights.

Per model: the encoder's embeddings, the decoder on a point prompt and on a box prompt (the
official ONNX decoder contract), and the whole predictor path from the photo with our numpy
pre- and postprocessing. Pass criterion of the fixtures' README: max |ours - official| <=
1e-5 * max(1, max |official|); boolean masks equal except where the logit is within 1e-4 of 0.
L0 (512) runs in the fast suite; XL0 (1024, ~113M parameters) is slow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evit_deploy.nn import build_model, official_registry
from evit_deploy.nn.sam import EfficientViTSam
from evit_deploy.sam import Prompt, decoder_inputs, postprocess_masks, preprocess, read_image, select_masks


@dataclass
class SamCase:
    """One fixture model: its entry of sam_index.json, the seeded model, cached embeddings."""

    name: str
    entry: dict[str, Any]
    folder: Path
    model: EfficientViTSam
    weights_digest: str
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def load(self, file: str) -> np.ndarray:
        return np.load(self.folder / file)

    def embeddings(self) -> torch.Tensor:
        """Our encoder on the fixture's input, computed once per model."""
        if "embeddings" not in self.cache:
            x = torch.from_numpy(self.load(self.entry["encoder"]["input"]))
            with torch.no_grad():
                self.cache["embeddings"] = self.model.image_encoder(x)
        return self.cache["embeddings"]


def _within(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    err = float(np.abs(got - expected).max())
    tol = 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert err <= tol, f"{what}: max |ours - official| = {err:.3g} > {tol:.3g}"


@pytest.fixture(
    scope="module",
    params=["efficientvit-sam-l0", pytest.param("efficientvit-sam-xl0", marks=pytest.mark.slow)],
)
def sam(request: pytest.FixtureRequest, reference_dir: Path, seeded_weights: Any) -> SamCase:
    folder = reference_dir / "fixtures" / "sam"
    entry = json.loads((folder / "sam_index.json").read_text())[request.param]
    builder, kwargs, eps = official_registry()[entry["model"]]
    # sam_index.json gives the key list relative to fixtures/, as index.json does
    keys = (folder.parent / entry["weights"]["keys"]).resolve()
    weights = seeded_weights.state_dict(keys, entry["weights"]["seed"])
    model = build_model(builder, norm_eps=eps, **kwargs)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return SamCase(request.param, entry, folder, model, seeded_weights.digest(weights))


def test_seeded_weights_are_the_fixtures(sam: SamCase) -> None:
    assert sam.weights_digest == sam.entry["weights"]["sha256"]


def test_encoder_embeddings(sam: SamCase) -> None:
    encoder = sam.entry["encoder"]
    assert sam.model.image_size == encoder["input_shape"][-1]
    _within(sam.embeddings().numpy(), sam.load(encoder["output"]), "image_embeddings")


@pytest.mark.parametrize("prompt", ["points", "box"])
def test_decoder(sam: SamCase, prompt: str) -> None:
    case = sam.load(sam.entry["decoder"][prompt]["file"])
    embeddings = torch.from_numpy(sam.load(sam.entry["encoder"]["output"]))  # the official ones
    with torch.no_grad():
        masks, iou = sam.model.decode(
            embeddings, torch.from_numpy(case["point_coords"]), torch.from_numpy(case["point_labels"])
        )
    _within(masks.numpy(), case["masks"], f"{prompt} masks")
    _within(iou.numpy(), case["iou_predictions"], f"{prompt} iou_predictions")


def test_predictor_path_from_the_photo(sam: SamCase) -> None:
    """Photo -> our numpy preprocessing -> our encoder -> prompt -> decoder -> our numpy
    postprocessing, against the official ``EfficientViTSamPredictor`` (multimask output)."""
    photo = read_image(sam.folder / sam.entry["encoder"]["photo"])
    x = preprocess(photo, sam.model.image_size)
    # bit-identical to the official input, so the cached embeddings are this input's
    np.testing.assert_array_equal(x, sam.load(sam.entry["encoder"]["input"]))

    expected = sam.load(sam.entry["predictor"]["file"])
    prompt = Prompt(
        points=tuple(map(tuple, expected["point_coords"])), labels=tuple(expected["point_labels"])
    )
    point_coords, point_labels = decoder_inputs([prompt], photo.shape[:2])
    with torch.no_grad():
        masks, iou = sam.model.decode(
            sam.embeddings(), torch.from_numpy(point_coords), torch.from_numpy(point_labels)
        )
    low_res, scores = select_masks(masks.numpy(), iou.numpy(), multimask=True)
    _within(low_res[0], expected["low_res_logits"], "low_res_logits")
    _within(scores[0], expected["scores"], "scores")

    logits = postprocess_masks(low_res[0], photo.shape[:2])
    assert logits.shape == expected["masks"].shape
    differ = (logits > 0) != expected["masks"]
    assert np.all(np.abs(logits[differ]) < 1e-4), (
        f"{int(differ.sum())} mask pixels differ, |logit| up to {float(np.abs(logits[differ]).max()):.3g}"
    )


def test_decoder_norm_eps_is_the_zoo_eps(sam: SamCase) -> None:
    """The official zoo sets eps 1e-6 on every LayerNorm, the decoder's included; PyTorch's default
    1e-5 there misses the fixture by ~10x the budget, so the fixture does check it."""
    case = sam.load(sam.entry["decoder"]["points"]["file"])
    norms = [m for m in sam.model.mask_decoder.modules() if type(m) is torch.nn.LayerNorm]
    assert len(norms) == 9 and all(m.eps == 1e-6 for m in norms)
    try:
        for m in norms:
            m.eps = 1e-5
        with torch.no_grad():
            masks, _ = sam.model.decode(
                torch.from_numpy(sam.load(sam.entry["encoder"]["output"])),
                torch.from_numpy(case["point_coords"]),
                torch.from_numpy(case["point_labels"]),
            )
    finally:
        for m in norms:
            m.eps = 1e-6
    with pytest.raises(AssertionError, match="max \\|ours - official\\|"):
        _within(masks.numpy(), case["masks"], "masks with eps 1e-5")
