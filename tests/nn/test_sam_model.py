"""EfficientViT-SAM's PyTorch model: builders, norm eps, and the decoder's export-friendly
formulation computing what SAM's decoder computes (broadcast image, label masks, mask input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from evit_deploy.nn import BUILDERS, build_model, norm_eps_for
from evit_deploy.nn.layers import LayerNorm2d
from evit_deploy.nn.sam import EfficientViTSam
from evit_deploy.nn.sam.graphs import SamDecoderGraph, SamEncoderGraph

SAM_MODELS = ("l0", "l1", "l2", "xl0", "xl1")


@pytest.fixture(scope="module")
def l0(reference_dir: Path, seeded_model: Any) -> EfficientViTSam:
    """SAM-L0 with the fixtures' trained-looking weights (its decoder is every SAM model's)."""
    keys = reference_dir / "state_dict_keys/efficientvit_sam_l0.txt"
    return seeded_model("efficientvit_sam_l0", {}, 1e-6, keys, 1234)


def _prompts(batch: int, points: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, points, 2, generator=generator) * 1024
    labels = torch.randint(-1, 4, (batch, points), generator=generator).float()
    return coords, labels


def _embeddings(batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 256, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model", SAM_MODELS)
def test_builders_set_the_sam_norm_eps_everywhere(model: str) -> None:
    builder = f"efficientvit_sam_{model}"
    assert builder in BUILDERS and norm_eps_for(builder) == 1e-6
    with torch.device("meta"):
        sam = build_model(builder, norm_eps=norm_eps_for(builder))
    norms = [m for m in sam.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))]
    # final LayerNorm2d, 2 in the mask downscaling, 1 in the upscaling, 9 in the transformer
    assert sum(isinstance(m, LayerNorm2d) for m in norms) == 4
    assert sum(type(m) is torch.nn.LayerNorm for m in norms) == 9
    assert all(m.eps == 1e-6 for m in norms)
    assert sam.image_size == (512 if model.startswith("l") else 1024) and not sam.training


def test_one_image_for_all_prompts_equals_one_per_prompt(l0: EfficientViTSam) -> None:
    """The broadcast that replaces repeat_interleave: a shared (1, ...) embedding gives what the
    embedding repeated per prompt gives, and a batch gives what each prompt gives alone."""
    coords, labels = _prompts(3, 3)
    embeddings = _embeddings()
    with torch.no_grad():
        shared = l0.decode(embeddings, coords, labels)
        repeated = l0.decode(embeddings.expand(3, -1, -1, -1).contiguous(), coords, labels)
        alone = [l0.decode(embeddings, coords[i : i + 1], labels[i : i + 1]) for i in range(3)]
    for got, want in zip(shared, repeated):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert shared[0].shape == (3, 4, 256, 256) and shared[1].shape == (3, 4)
    torch.testing.assert_close(shared[0], torch.cat([a[0] for a in alone]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared[1], torch.cat([a[1] for a in alone]), rtol=1e-5, atol=1e-5)


def test_labels_select_the_point_embeddings(l0: EfficientViTSam) -> None:
    """Label k adds point_embeddings[k] to the point's positional code; -1 is not_a_point_embed
    alone, wherever the padding point sits."""
    encoder = l0.prompt_encoder
    coords = torch.tensor([[[10.0, 20.0], [500.0, 3.0], [1023.0, 1023.0], [64.5, 700.0], [300.0, 300.0]]])
    labels = torch.tensor([[-1.0, 0.0, 1.0, 2.0, 3.0]])
    with torch.no_grad():
        tokens = encoder.embed_points(coords, labels)[0]
        code = encoder.pe_layer((coords[0] + 0.5) / 1024)
    torch.testing.assert_close(tokens[0], encoder.not_a_point_embed.weight[0], rtol=0, atol=0)
    for i, label in enumerate((0, 1, 2, 3), start=1):
        torch.testing.assert_close(
            tokens[i], code[i] + encoder.point_embeddings[label].weight[0], rtol=0, atol=0
        )

    moved = coords.clone()
    moved[0, 0] = torch.tensor([999.0, 1.0])  # the padding point elsewhere: same tokens
    with torch.no_grad():
        torch.testing.assert_close(encoder.embed_points(moved, labels)[0], tokens, rtol=0, atol=0)


def test_mask_input_follows_has_mask_input(l0: EfficientViTSam) -> None:
    """Meta's ONNX semantics: has_mask_input 0 is exactly no mask; 1 adds the downscaled mask."""
    coords, labels = _prompts(2, 2)
    embeddings = _embeddings()
    mask = torch.randn(2, 1, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        without = l0.decode(embeddings, coords, labels)
        ignored = l0.decode(embeddings, coords, labels, mask, torch.zeros(2))
        used = l0.decode(embeddings, coords, labels, mask, torch.ones(2))
        dense = l0.prompt_encoder.mask_downscaling(mask)
        sparse = l0.prompt_encoder.embed_points(coords, labels)
        reference = l0.mask_decoder(embeddings, l0.prompt_encoder.dense_pe(), sparse, dense)
    torch.testing.assert_close(ignored, without, rtol=0, atol=0)
    torch.testing.assert_close(used, reference, rtol=0, atol=0)
    assert float((used[0] - without[0]).abs().max()) > 1e-2


def test_single_mask_graph_returns_the_best_scored_mask(l0: EfficientViTSam) -> None:
    coords, labels = _prompts(4, 2, seed=4)
    embeddings = _embeddings()
    with torch.no_grad():
        masks, iou = SamDecoderGraph(l0)(embeddings, coords, labels)
        best_masks, best_iou = SamDecoderGraph(l0, single_mask=True)(embeddings, coords, labels)
    best = iou.argmax(dim=1)
    assert best_masks.shape == (4, 1, 256, 256) and best_iou.shape == (4, 1)
    torch.testing.assert_close(best_iou[:, 0], iou.max(dim=1).values, rtol=0, atol=0)
    torch.testing.assert_close(best_masks[:, 0], masks[torch.arange(4), best], rtol=0, atol=0)


def test_forward_is_encoder_then_decoder(l0: EfficientViTSam) -> None:
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    coords, labels = _prompts(1, 2)
    with torch.no_grad():
        chained = l0(images, coords, labels)
        embeddings = SamEncoderGraph(l0)(images)
        assert embeddings.shape == (1, 256, 64, 64)  # 64x64 whatever the input size
        for got, want in zip(chained, l0.decode(embeddings, coords, labels)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_graphs_carry_only_their_half(l0: EfficientViTSam) -> None:
    encoder_keys = set(SamEncoderGraph(l0).state_dict())
    decoder_keys = set(SamDecoderGraph(l0).state_dict())
    assert encoder_keys and all(k.startswith("image_encoder.") for k in encoder_keys)
    assert decoder_keys and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in decoder_keys)
    assert len(encoder_keys) + len(decoder_keys) == len(l0.state_dict())
