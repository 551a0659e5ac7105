"""One builder per official EfficientViT-SAM model (``efficientvit/models/efficientvit/sam.py``).

Every model shares SAM's prompt encoder and mask decoder; they differ in the image encoder:
the L models reuse the L backbones at 512x512, the XL models a six-stage backbone at
1024x1024. The norm eps (1e-6 for every SAM model) is the zoo's, applied by ``build_model``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..backbone import (
    EfficientViTLargeBackbone,
    efficientvit_backbone_l0,
    efficientvit_backbone_l1,
    efficientvit_backbone_l2,
    efficientvit_backbone_xl0,
    efficientvit_backbone_xl1,
)
from .encoder import EfficientViTSamImageEncoder, SamNeck
from .model import EfficientViTSam

__all__ = [
    "SAM_BUILDERS",
    "SAM_NORM_EPS",
    "efficientvit_sam_l0",
    "efficientvit_sam_l1",
    "efficientvit_sam_l2",
    "efficientvit_sam_xl0",
    "efficientvit_sam_xl1",
]

SAM_NORM_EPS = 1e-6
"""Every BN and LayerNorm of every SAM model (the official registry's value)."""


def _sam(
    backbone: EfficientViTLargeBackbone,
    image_size: int,
    *,
    fid_list: Sequence[str],
    in_channel_list: Sequence[int],
    head_depth: int,
    expand_ratio: float,
) -> EfficientViTSam:
    neck = SamNeck(
        fid_list=fid_list,
        in_channel_list=in_channel_list,
        head_width=256,
        head_depth=head_depth,
        expand_ratio=expand_ratio,
        middle_op="fmb",
    )
    return EfficientViTSam(EfficientViTSamImageEncoder(backbone, neck), image_size)


def _sam_l(backbone: EfficientViTLargeBackbone, image_size: int, head_depth: int) -> EfficientViTSam:
    """L models: the neck reads strides 32, 16, 8 (16x16, 32x32, 64x64 at 512)."""
    return _sam(
        backbone,
        image_size,
        fid_list=["stage4", "stage3", "stage2"],
        in_channel_list=[512, 256, 128],
        head_depth=head_depth,
        expand_ratio=1,
    )


def _sam_xl(backbone: EfficientViTLargeBackbone, image_size: int, head_depth: int) -> EfficientViTSam:
    """XL models: the neck reads strides 64, 32, 16 (16x16, 32x32, 64x64 at 1024)."""
    return _sam(
        backbone,
        image_size,
        fid_list=["stage5", "stage4", "stage3"],
        in_channel_list=[1024, 512, 256],
        head_depth=head_depth,
        expand_ratio=4,
    )


def efficientvit_sam_l0(image_size: int = 512) -> EfficientViTSam:
    return _sam_l(efficientvit_backbone_l0(), image_size, head_depth=4)


def efficientvit_sam_l1(image_size: int = 512) -> EfficientViTSam:
    return _sam_l(efficientvit_backbone_l1(), image_size, head_depth=8)


def efficientvit_sam_l2(image_size: int = 512) -> EfficientViTSam:
    return _sam_l(efficientvit_backbone_l2(), image_size, head_depth=12)


def efficientvit_sam_xl0(image_size: int = 1024) -> EfficientViTSam:
    return _sam_xl(efficientvit_backbone_xl0(), image_size, head_depth=6)


def efficientvit_sam_xl1(image_size: int = 1024) -> EfficientViTSam:
    return _sam_xl(efficientvit_backbone_xl1(), image_size, head_depth=12)


SAM_BUILDERS = {
    fn.__name__: fn
    for fn in (
        efficientvit_sam_l0,
        efficientvit_sam_l1,
        efficientvit_sam_l2,
        efficientvit_sam_xl0,
        efficientvit_sam_xl1,
    )
}
