"""The EfficientViT architecture (classification, segmentation and, in ``sam/``, EfficientViT-SAM),
layout-identical to the official checkpoints (mit-han-lab/efficientvit) so they load with
``strict=True``.

Entry points: ``BUILDERS`` (official builder name -> builder), ``build_model`` (build, set the
zoo's norm eps, eval mode), ``official_registry`` (zoo name -> builder, kwargs, eps).
"""

from __future__ import annotations

from .attention import EfficientViTBlock, LiteMLA
from .backbone import EfficientViTBackbone, EfficientViTLargeBackbone
from .blocks import DAGBlock, DSConv, FusedMBConv, MBConv, OpSequential, ResBlock, ResidualBlock
from .builders import BACKBONES, BUILDERS, build_model, norm_eps_for, official_registry, register_builder
from .cls import ClsHead, EfficientViTCls
from .layers import (
    ConvLayer,
    IdentityLayer,
    LayerNorm2d,
    LinearLayer,
    UpSampleLayer,
    build_act,
    build_norm,
    set_norm_eps,
)
from .sam import EfficientViTSam
from .seg import EfficientViTSeg, SegHead

__all__ = [
    "BACKBONES",
    "BUILDERS",
    "ClsHead",
    "ConvLayer",
    "DAGBlock",
    "DSConv",
    "EfficientViTBackbone",
    "EfficientViTBlock",
    "EfficientViTCls",
    "EfficientViTLargeBackbone",
    "EfficientViTSam",
    "EfficientViTSeg",
    "FusedMBConv",
    "IdentityLayer",
    "LayerNorm2d",
    "LinearLayer",
    "LiteMLA",
    "MBConv",
    "OpSequential",
    "ResBlock",
    "ResidualBlock",
    "SegHead",
    "UpSampleLayer",
    "build_act",
    "build_model",
    "build_norm",
    "norm_eps_for",
    "official_registry",
    "register_builder",
    "set_norm_eps",
]
