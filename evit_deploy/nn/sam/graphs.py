"""The two graphs an EfficientViT-SAM model is deployed as, with their I/O contracts.

- ``encoder``: ``input_image`` (B, 3, S, S), preprocessed -> ``image_embeddings`` (B, 256, 64, 64);
  B dynamic. Runs once per image.
- ``decoder``: the official ONNX decoder contract (``DecoderOnnxModel`` of the official
  ``export_decoder.py``): ``image_embeddings`` (1, 256, 64, 64), ``point_coords`` (B, N, 2) in the
  1024 frame, ``point_labels`` (B, N) -> ``masks`` (B, 4, 256, 256) low-resolution logits and
  ``iou_predictions`` (B, 4); B (prompts) and N (points per prompt) dynamic. Runs per click.
  Options: ``single_mask`` (the best-IoU mask only, as the official ``--return-single-mask``),
  ``mask_input`` (Meta's ``mask_input`` (B, 1, 256, 256) and ``has_mask_input`` (B,) inputs for
  iterative refinement, which the official export lacks), ``embeddings_per_prompt``
  (``image_embeddings`` (B, ...): one image per prompt instead of one shared image).

The decoder is formulated so TensorRT can build it (no ``repeat_interleave``, no data-dependent
shapes, no OneHot/NonZero/If/Loop); ``unfriendly_ops`` checks an exported graph for the
constructs in ``SAM_DECODER_UNFRIENDLY_OPS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.export import Dim

from ...sam.transforms import LOW_RES, PROMPT_FRAME
from .decode import decode_prompts
from .encoder import EMBED_DIM, EMBEDDING_SIZE

if TYPE_CHECKING:
    from .model import EfficientViTSam

__all__ = [
    "SAM_DECODER_UNFRIENDLY_OPS",
    "SAM_GRAPHS",
    "SamDecoderGraph",
    "SamEncoderGraph",
    "unfriendly_ops",
]

MAX_BATCH = 256
MAX_PROMPTS = 1024
MAX_POINTS = 64

SAM_DECODER_UNFRIENDLY_OPS: dict[str, str] = {
    "OneHot": "one-hot labels: older TensorRT parsers lack it and its depth must be a build-time constant; "
    "use arithmetic masks (labels == k)",
    "NonZero": "output shape depends on the data (boolean indexing such as x[labels == -1] = ...)",
    "Compress": "output shape depends on the data",
    "Unique": "output shape depends on the data",
    "ScatterND": "boolean-mask assignment (index_put) exports as NonZero + ScatterND",
    "Loop": "control flow: the TorchScript exporter's repeat_interleave with a dynamic count",
    "If": "control flow on tensor values or shapes",
    "Scan": "control flow",
    "SequenceConstruct": "tensor sequences (repeat_interleave / split with dynamic counts)",
    "SequenceAt": "tensor sequences",
    "SequenceInsert": "tensor sequences",
    "SequenceEmpty": "tensor sequences",
    "SplitToSequence": "tensor sequences",
    "ConcatFromSequence": "tensor sequences",
    "CumSum": "repeat_interleave's index arithmetic (cumulative repeat counts)",
    "Range": "index ranges built from runtime shapes (repeat_interleave, arange(B) gathers)",
}
"""Op types kept out of the decoder, each with the construct that would bring it in: shapes that
depend on data, control flow, and index arithmetic on runtime shapes, which TensorRT rejects or
cannot use as shape tensors (official issues #70, #78: repeat_interleave)."""


class SamEncoderGraph(nn.Module):
    """``input_image`` (B, 3, S, S) -> ``image_embeddings`` (B, 256, 64, 64)."""

    input_names = ("input_image",)
    output_names = ("image_embeddings",)

    def __init__(self, model: EfficientViTSam) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.image_size = model.image_size

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(input_image)

    def example_inputs(self, batch: int = 2) -> tuple[torch.Tensor, ...]:
        """Batch 2 by default: ``torch.export`` would specialise a dynamic dim whose example is 1."""
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(batch, 3, self.image_size, self.image_size, generator=generator),)

    def dynamic_shapes(self) -> dict[str, dict[int, Dim]]:
        return {"input_image": {0: Dim("batch", min=1, max=MAX_BATCH)}}


class SamDecoderGraph(nn.Module):
    """The official decoder contract (module docstring), optionally with ``mask_input``."""

    output_names = ("masks", "iou_predictions")

    def __init__(
        self,
        model: EfficientViTSam,
        *,
        single_mask: bool = False,
        mask_input: bool = False,
        embeddings_per_prompt: bool = False,
    ) -> None:
        super().__init__()
        # only the decoder's half: the exported graph then carries no encoder weights
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.single_mask = single_mask
        self.mask_input = mask_input
        self.embeddings_per_prompt = embeddings_per_prompt

    @property
    def input_names(self) -> tuple[str, ...]:
        names = ("image_embeddings", "point_coords", "point_labels")
        return names + (("mask_input", "has_mask_input") if self.mask_input else ())

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        has_mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou_predictions = decode_prompts(
            self.prompt_encoder,
            self.mask_decoder,
            image_embeddings,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
        )
        if not self.single_mask:
            return masks, iou_predictions
        # The best-scored of all four tokens, as the official export (Meta's prefers token 0 from
        # three points on); gathered with ArgMax + GatherElements, no arange(B) index.
        best = torch.argmax(iou_predictions, dim=1, keepdim=True)
        best_mask = torch.gather(
            masks, 1, best[:, :, None, None].expand(-1, -1, masks.shape[2], masks.shape[3])
        )
        return best_mask, torch.gather(iou_predictions, 1, best)

    def example_inputs(self, prompts: int = 2, points: int = 3) -> tuple[torch.Tensor, ...]:
        """Seeded inputs: points anywhere in the 1024 frame, every label from -1 to 3."""
        generator = torch.Generator().manual_seed(0)
        embeddings = torch.randn(
            prompts if self.embeddings_per_prompt else 1,
            EMBED_DIM,
            EMBEDDING_SIZE,
            EMBEDDING_SIZE,
            generator=generator,
        )
        coords = torch.rand(prompts, points, 2, generator=generator) * PROMPT_FRAME
        labels = torch.randint(-1, 4, (prompts, points), generator=generator).float()
        inputs: tuple[torch.Tensor, ...] = (embeddings, coords, labels)
        if self.mask_input:
            mask = torch.randn(prompts, 1, LOW_RES, LOW_RES, generator=generator)
            has_mask = (torch.arange(prompts) % 2).float()  # rows with and without a mask
            inputs += (mask, has_mask)
        return inputs

    def dynamic_shapes(self) -> dict[str, Any]:
        prompts = Dim("num_prompts", min=1, max=MAX_PROMPTS)
        points = Dim("num_points", min=1, max=MAX_POINTS)
        shapes: dict[str, Any] = {
            "image_embeddings": {0: prompts} if self.embeddings_per_prompt else None,
            "point_coords": {0: prompts, 1: points},
            "point_labels": {0: prompts, 1: points},
        }
        if self.mask_input:
            shapes |= {"mask_input": {0: prompts}, "has_mask_input": {0: prompts}}
        return shapes


SAM_GRAPHS: dict[str, type[nn.Module]] = {"encoder": SamEncoderGraph, "decoder": SamDecoderGraph}
"""Graph name (as in the model cards' ``graphs:``) -> the module that exports it."""


def unfriendly_ops(model: Any) -> list[str]:
    """``"OpType (node name)"`` for every node of an ONNX ``ModelProto`` (subgraphs included) whose
    op type is in ``SAM_DECODER_UNFRIENDLY_OPS``; empty when the graph is clean."""
    found: list[str] = []

    def walk(graph: Any) -> None:
        for node in graph.node:
            if node.op_type in SAM_DECODER_UNFRIENDLY_OPS:
                found.append(f"{node.op_type} ({node.name})")
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(model.graph)
    return found
