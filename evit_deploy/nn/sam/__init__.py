"""EfficientViT-SAM (arXiv 2402.05008): EfficientViT image encoder + SAM's prompt encoder and mask
decoder, layout-identical to the official checkpoints (``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``), plus the two export graphs (``encoder``, ``decoder``) in ``graphs``.
"""

from __future__ import annotations

from .builders import (
    SAM_BUILDERS,
    SAM_NORM_EPS,
    efficientvit_sam_l0,
    efficientvit_sam_l1,
    efficientvit_sam_l2,
    efficientvit_sam_xl0,
    efficientvit_sam_xl1,
)
from .decode import decode_prompts
from .encoder import EMBEDDING_SIZE, EfficientViTSamImageEncoder, SamNeck
from .graphs import SAM_DECODER_UNFRIENDLY_OPS, SAM_GRAPHS, SamDecoderGraph, SamEncoderGraph, unfriendly_ops
from .mask_decoder import MLP, MaskDecoder
from .model import EfficientViTSam
from .prompt_encoder import PromptEncoder, RandomFourierEncoding
from .transformer import Attention, MLPBlock, TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "EMBEDDING_SIZE",
    "MLP",
    "SAM_BUILDERS",
    "SAM_DECODER_UNFRIENDLY_OPS",
    "SAM_GRAPHS",
    "SAM_NORM_EPS",
    "Attention",
    "EfficientViTSam",
    "EfficientViTSamImageEncoder",
    "MLPBlock",
    "MaskDecoder",
    "PromptEncoder",
    "RandomFourierEncoding",
    "SamDecoderGraph",
    "SamEncoderGraph",
    "SamNeck",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "decode_prompts",
    "efficientvit_sam_l0",
    "efficientvit_sam_l1",
    "efficientvit_sam_l2",
    "efficientvit_sam_xl0",
    "efficientvit_sam_xl1",
    "unfriendly_ops",
]
