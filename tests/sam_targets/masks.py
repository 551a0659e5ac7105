"""What a SAM user compares: masks decoded from two sets of embeddings (or by two decoders) on the
same photos and generated prompts, as per-prompt mask IoU, IoU-prediction error and best-mask
agreement. PyTorch fp32 is the reference throughout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evit_deploy.nn.sam.graphs import SamDecoderGraph
from evit_deploy.sam import decoder_inputs, generated_prompts, preprocess, read_image


@dataclass
class Agreement:
    """One photo: the worst mask IoU over its prompts and mask tokens, and the other figures."""

    photo: str
    min_iou: float
    mean_iou: float
    iou_error: float  # max |IoU prediction - reference's|
    best_agreement: float  # share of prompts whose best-scored mask index is the reference's
    embeddings_rel: float | None = None  # max |emb - reference| / max |reference|


def photo_input(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The encoder's input for a photo (the official preprocessing) and the photo's (h, w)."""
    image = read_image(path)
    return preprocess(image, size), image.shape[:2]


def prompts(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """16 single clicks on a grid and 4 seeded boxes, in the 1024 frame (``generated_prompts``)."""
    return decoder_inputs(generated_prompts(size), size)


def torch_decode(model: Any, embeddings: np.ndarray, coords: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    decoder = SamDecoderGraph(model).eval()
    with torch.no_grad():
        masks, iou = decoder(torch.from_numpy(embeddings), torch.from_numpy(coords), torch.from_numpy(labels))
    return masks.numpy(), iou.numpy()


def torch_embeddings(model: Any, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.image_encoder(torch.from_numpy(x)).numpy()


def compare(photo: str, masks: np.ndarray, iou: np.ndarray, ref_masks: np.ndarray, ref_iou: np.ndarray,
            embeddings_rel: float | None = None) -> Agreement:
    """Masks are logits thresholded at 0; a pair of empty masks agrees."""
    a, b = masks > 0, ref_masks > 0
    inter, union = (a & b).sum((2, 3)), (a | b).sum((2, 3))
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return Agreement(photo, float(ious.min()), float(ious.mean()), float(np.abs(iou - ref_iou).max()),
                     float((iou.argmax(1) == ref_iou.argmax(1)).mean()), embeddings_rel)


def encoder_agreement(run_encoder: Any, model: Any, photos: list[Path], size: int) -> list[Agreement]:
    """Per photo: masks decoded (PyTorch fp32 decoder) from ``run_encoder``'s embeddings vs from
    PyTorch's own, for the photo's generated prompts."""
    results = []
    for path in photos:
        x, shape = photo_input(path, size)
        reference = torch_embeddings(model, x)
        embeddings = run_encoder(x)
        assert np.isfinite(embeddings).all(), f"{path.name}: non-finite embeddings"
        coords, labels = prompts(shape)
        rel = float(np.abs(embeddings - reference).max() / np.abs(reference).max())
        results.append(compare(path.name, *torch_decode(model, embeddings, coords, labels),
                               *torch_decode(model, reference, coords, labels), embeddings_rel=rel))
    return results


def decoder_agreement(run_decoder: Any, model: Any, photos: list[Path], size: int,
                      rows: int | None = None) -> list[Agreement]:
    """Per photo: ``run_decoder(embeddings, coords, labels)`` vs the PyTorch decoder, both on PyTorch's
    embeddings; ``rows``: feed the prompts that many at a time (a static decoder takes one)."""
    results = []
    for path in photos:
        x, shape = photo_input(path, size)
        embeddings = torch_embeddings(model, x)
        coords, labels = prompts(shape)
        step = rows or len(coords)
        outputs = [run_decoder(embeddings, coords[i:i + step], labels[i:i + step]) for i in range(0, len(coords), step)]
        masks, iou = (np.concatenate([o[k] for o in outputs]) for k in (0, 1))
        results.append(compare(path.name, masks, iou, *torch_decode(model, embeddings, coords, labels)))
    return results


def int8_against_weights(run_encoder: Any, model: Any, photos: list[Path], size: int) -> tuple[float, float]:
    """(mean mask IoU of the int8 encoder's masks, the same for PyTorch with only its weights rounded
    to int8): verify's weight-rounded bound, what int8 storage alone lets a model keep."""
    from evit_deploy.weight_rounding import rounded_copy

    rounded = rounded_copy(model, "int8")
    artifact = encoder_agreement(run_encoder, model, photos, size)
    bound = encoder_agreement(lambda x: torch_embeddings(rounded, x), model, photos, size)
    return float(np.mean([r.mean_iou for r in artifact])), float(np.mean([r.mean_iou for r in bound]))
