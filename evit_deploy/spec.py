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


@dataclass(frozen=True)
class DynamicDim:
    """One axis of an input that an artifact accepts at other sizes: ``multiple * k``, k in [min, max]."""

    axis: int
    name: str
    min: int
    max: int
    multiple: int = 1  # EfficientViT's height and width: multiples of 32


@dataclass(frozen=True)
class GraphInput:
    """One input of an exported graph; ``shape`` is the size it is exported (and traced) at."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: tuple[DynamicDim, ...] = ()


@dataclass(frozen=True)
class GraphIO:
    """The tensors one exported graph takes and gives: what every backend exports and runs.

    A cls/seg model is one graph with one image input (``GraphIO.image``); a model that deploys
    as several graphs (SAM: encoder and prompt decoder) gives each its own, from its card.
    """

    inputs: tuple[GraphInput, ...]
    outputs: tuple[str, ...]

    @classmethod
    def image(cls, spec: InputSpec, output: str = "logits") -> GraphIO:
        """The image graph ``spec`` describes: one NCHW input, H and W multiples of 32 when dynamic."""
        dynamic = (DynamicDim(0, "batch", 1, 256), DynamicDim(2, "h32", 2, 256, 32),
                   DynamicDim(3, "w32", 2, 256, 32)) if spec.dynamic else ()
        return cls((GraphInput(spec.name, spec.shape, dynamic=dynamic),), (output,))

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]


def to_layout(array: np.ndarray, src: Layout, dst: Layout) -> np.ndarray:
    """Move the channel axis of a 4-D tensor; other ranks pass through unchanged."""
    if src == dst or array.ndim != 4:
        return array
    if src == "NCHW":
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
