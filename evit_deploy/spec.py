"""What a model takes and gives, independent of any runtime.

An ``InputSpec`` travels from the model card through export into the manifest and
back into ``verify``/``profile``, so every runner is fed exactly what the artifact
was built for, on devices that have no PyTorch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Literal

import numpy as np

Layout = Literal["NCHW", "NHWC"]


class Precision(str, Enum):
    """The arithmetic an artifact is exported for: a closed set every target picks from.

    A ``str`` enum, so it compares, hashes, prints and serialises as its value (``"fp16"``)
    in manifests, recipes and messages.
    """

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a runner. ``None`` in ``shape`` marks a dynamic axis."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    layout: Layout = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorInfo:
        """A manifest's (or a device's) tensor entry; absent fields take the defaults."""
        return cls(data["name"], tuple(data.get("shape", ())), data.get("dtype", "float32"), data.get("layout", "NCHW"))


@dataclass(frozen=True)
class InputSpec:
    """The image tensor a model is exported for, and how pixels become that tensor."""

    batch: int
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = "input"
    color: str = "RGB"
    dynamic: bool = False
    layout: Layout = "NCHW"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.height, self.width)

    def with_resolution(self, height: int, width: int, batch: int | None = None) -> InputSpec:
        data = self.to_dict()
        data.update(height=height, width=width, batch=self.batch if batch is None else batch)
        return InputSpec.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        data = dict(data)
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)


def to_layout(array: np.ndarray, src: Layout, dst: Layout) -> np.ndarray:
    """Move the channel axis of a 4-D tensor; other ranks pass through unchanged."""
    if src == dst or array.ndim != 4:
        return array
    if src == "NCHW":
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
