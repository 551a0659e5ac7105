"""The official eval scripts' steps, written again here in torch, independently of evit's numpy code.

``eval_efficientvit_seg_model.py``: label map (its 34-entry ``label_map``; ADE20K: minus one),
resize (cubic, here torch's ``F.interpolate`` on the uint8 image, rounded), /255, normalise,
model, ``F.interpolate(..., mode="bicubic", align_corners=False)`` to the label size, argmax,
``SegIOU``'s per-class histograms. ``eval_efficientvit_cls_model.py``: ``accuracy(topk=(1, 5))``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the official CityscapesDataset.label_map, entry = labelId, value = train id (-1: ignored)
CITYSCAPES_LABEL_MAP = np.array((-1, -1, -1, -1, -1, -1, -1, 0, 1, -1, -1, 2, 3, 4, -1, -1, -1, 5, -1, 6, 7, 8, 9,
                                 10, 11, 12, 13, 14, 15, -1, -1, 16, 17, 18))
LABEL_ID_OF_TRAIN_ID = [int(np.flatnonzero(CITYSCAPES_LABEL_MAP == t)[0]) for t in range(19)]


def cubic_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 resized with Keys' cubic (A=-0.75, half-pixel, replicated border), rounded to uint8."""
    if image.shape[:2] == size:
        return image
    x = torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def seg_input(path: Path, size: tuple[int, int]) -> torch.Tensor:
    image = np.array(Image.open(path).convert("RGB"))
    x = torch.as_tensor(cubic_uint8(image, size).transpose(2, 0, 1), dtype=torch.float32).div(255.0)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def seg_prediction(model: torch.nn.Module, path: Path, size: tuple[int, int], label_size: tuple[int, int]) -> np.ndarray:
    """Class ids at the label's size, as the official script computes them."""
    with torch.inference_mode():
        logits = model(seg_input(path, size))
        up = F.interpolate(logits, size=label_size, mode="bicubic", align_corners=False)
    return up.argmax(dim=1)[0].numpy()


def ade20k_input_size(height: int, width: int, crop: int = 512) -> tuple[int, int]:
    if height < width:
        return crop, math.ceil(width / height * crop / 32) * 32
    return math.ceil(height / width * crop / 32) * 32, crop


class SegIoU:
    """The official ``SegIOU`` (histograms of prediction, label and intersection over valid pixels), summed."""

    def __init__(self, num_classes: int) -> None:
        self.n = num_classes
        self.intersection = np.zeros(num_classes)
        self.union = np.zeros(num_classes)

    def update(self, prediction: np.ndarray, label: np.ndarray) -> None:
        valid = label != -1
        out, tgt = prediction[valid], label[valid]
        inter = np.bincount(out[out == tgt], minlength=self.n)
        self.intersection += inter
        self.union += np.bincount(out, minlength=self.n) + np.bincount(tgt, minlength=self.n) - inter

    def miou(self) -> float:
        present = self.union > 0  # the official mean is nan when a class is in neither; these sets have all
        return float((self.intersection[present] / self.union[present]).mean() * 100)


def cls_input(path: Path, size: int, crop_ratio: float) -> torch.Tensor:
    """torchvision's Resize(ceil(size / crop_ratio), BICUBIC) + CenterCrop(size) + ToTensor + Normalize."""
    image = Image.open(path).convert("RGB")
    short = math.ceil(size / crop_ratio)
    w, h = image.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    image = image.resize(new, Image.Resampling.BICUBIC)
    top, left = round((new[1] - size) / 2.0), round((new[0] - size) / 2.0)
    image = image.crop((left, top, left + size, top + size))
    x = torch.as_tensor(np.array(image).transpose(2, 0, 1), dtype=torch.float32).div(255.0)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def cls_logits(model: torch.nn.Module, path: Path, size: int, crop_ratio: float) -> np.ndarray:
    with torch.inference_mode():
        return model(cls_input(path, size, crop_ratio))[0].numpy()


def topk(logits: list[np.ndarray], labels: list[int], k: int) -> float:
    hits = [label in torch.topk(torch.from_numpy(x), k).indices.tolist() for x, label in zip(logits, labels)]
    return 100.0 * sum(hits) / len(hits)
