"""The Cityscapes label table: which ``*_gtFine_labelIds.png`` id is which of the 19 classes.

Written from cityscapesScripts' ``helpers/labels.py`` (the dataset authors' definition): every
labelId 0-33 with its trainId, 255 where the class is ignored in evaluation. The official
EfficientViT eval maps ids the same way (its ``label_map`` has these 34 entries; ignore is -1
there, 255 here). License plate (id -1) never occurs in a uint8 label image.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE = 255


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int  # 0-18, or IGNORE


LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, IGNORE),
    CityscapesLabel("ego vehicle", 1, IGNORE),
    CityscapesLabel("rectification border", 2, IGNORE),
    CityscapesLabel("out of roi", 3, IGNORE),
    CityscapesLabel("static", 4, IGNORE),
    CityscapesLabel("dynamic", 5, IGNORE),
    CityscapesLabel("ground", 6, IGNORE),
    CityscapesLabel("road", 7, 0),
    CityscapesLabel("sidewalk", 8, 1),
    CityscapesLabel("parking", 9, IGNORE),
    CityscapesLabel("rail track", 10, IGNORE),
    CityscapesLabel("building", 11, 2),
    CityscapesLabel("wall", 12, 3),
    CityscapesLabel("fence", 13, 4),
    CityscapesLabel("guard rail", 14, IGNORE),
    CityscapesLabel("bridge", 15, IGNORE),
    CityscapesLabel("tunnel", 16, IGNORE),
    CityscapesLabel("pole", 17, 5),
    CityscapesLabel("polegroup", 18, IGNORE),
    CityscapesLabel("traffic light", 19, 6),
    CityscapesLabel("traffic sign", 20, 7),
    CityscapesLabel("vegetation", 21, 8),
    CityscapesLabel("terrain", 22, 9),
    CityscapesLabel("sky", 23, 10),
    CityscapesLabel("person", 24, 11),
    CityscapesLabel("rider", 25, 12),
    CityscapesLabel("car", 26, 13),
    CityscapesLabel("truck", 27, 14),
    CityscapesLabel("bus", 28, 15),
    CityscapesLabel("caravan", 29, IGNORE),
    CityscapesLabel("trailer", 30, IGNORE),
    CityscapesLabel("train", 31, 16),
    CityscapesLabel("motorcycle", 32, 17),
    CityscapesLabel("bicycle", 33, 18),
)

MAX_ID = max(label.id for label in LABELS)
TRAIN_CLASSES: tuple[str, ...] = tuple(
    label.name for label in sorted((lb for lb in LABELS if lb.train_id != IGNORE), key=lambda lb: lb.train_id))


def train_id_table() -> np.ndarray:
    """labelId -> trainId lookup over all 256 uint8 values; ids past 33 map to -1 (not a labelId)."""
    table = np.full(256, -1, dtype=np.int64)
    for label in LABELS:
        table[label.id] = label.train_id
    return table
