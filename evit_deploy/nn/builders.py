"""One builder per official model, the builder registry, and the zoo-name table.

Builder names are the official function names (``efficientvit_cls_b1``,
``efficientvit_seg_l2``, ``efficientvit_sam_xl0``...; the SAM builders live in ``sam/``), so
``state_dict_keys/<builder>.txt`` and checkpoints line up with them one to one. The norm eps
is *not* a builder argument: it belongs to the zoo entry (section 7 of the spec) and is applied
by ``build_model``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..errors import UsageError
from .backbone import (
    EfficientViTBackbone,
    EfficientViTLargeBackbone,
    efficientvit_backbone_b0,
    efficientvit_backbone_b1,
    efficientvit_backbone_b2,
    efficientvit_backbone_b3,
    efficientvit_backbone_l0,
    efficientvit_backbone_l1,
    efficientvit_backbone_l2,
    efficientvit_backbone_l3,
    efficientvit_backbone_xl0,
    efficientvit_backbone_xl1,
)
from .cls import ClsHead, EfficientViTCls
from .layers import set_norm_eps
from .sam.builders import SAM_BUILDERS, SAM_NORM_EPS
from .seg import EfficientViTSeg, SegHead

__all__ = [
    "BACKBONES",
    "BUILDERS",
    "build_model",
    "efficientvit_cls_b0",
    "efficientvit_cls_b1",
    "efficientvit_cls_b2",
    "efficientvit_cls_b3",
    "efficientvit_cls_l1",
    "efficientvit_cls_l2",
    "efficientvit_cls_l3",
    "efficientvit_seg_b0",
    "efficientvit_seg_b1",
    "efficientvit_seg_b2",
    "efficientvit_seg_b3",
    "efficientvit_seg_l1",
    "efficientvit_seg_l2",
    "norm_eps_for",
    "official_registry",
    "register_builder",
]

# Norm eps the official zoo sets per family (not stored in checkpoints).
B_NORM_EPS = 1e-5
L_NORM_EPS = 1e-7

N_CLASSES: dict[str, int] = {"cityscapes": 19, "ade20k": 150}


# --- classification ---------------------------------------------------------------------------


def _cls(
    backbone: EfficientViTBackbone | EfficientViTLargeBackbone,
    in_channels: int,
    width_list: Sequence[int],
    act_func: str,
    n_classes: int,
    dropout: float,
) -> EfficientViTCls:
    head = ClsHead(in_channels, width_list, n_classes=n_classes, dropout=dropout, act_func=act_func)
    return EfficientViTCls(backbone, head)


def efficientvit_cls_b0(n_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> EfficientViTCls:
    return _cls(efficientvit_backbone_b0(in_channels), 128, [1024, 1280], "hswish", n_classes, dropout)


def efficientvit_cls_b1(n_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> EfficientViTCls:
    return _cls(efficientvit_backbone_b1(in_channels), 256, [1536, 1600], "hswish", n_classes, dropout)


def efficientvit_cls_b2(n_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> EfficientViTCls:
    return _cls(efficientvit_backbone_b2(in_channels), 384, [2304, 2560], "hswish", n_classes, dropout)


def efficientvit_cls_b3(n_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> EfficientViTCls:
    return _cls(efficientvit_backbone_b3(in_channels), 512, [2304, 2560], "hswish", n_classes, dropout)


def efficientvit_cls_l1(n_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> EfficientViTCls:
    return _cls(efficientvit_backbone_l1(in_channels), 512, [3072, 3200], "gelu", n_classes, dropout)


def efficientvit_cls_l2(n_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> EfficientViTCls:
    return _cls(efficientvit_backbone_l2(in_channels), 512, [3072, 3200], "gelu", n_classes, dropout)


def efficientvit_cls_l3(n_classes: int = 1000, dropout: float = 0.0, in_channels: int = 3) -> EfficientViTCls:
    return _cls(efficientvit_backbone_l3(in_channels), 1024, [6144, 6400], "gelu", n_classes, dropout)


# --- segmentation -----------------------------------------------------------------------------


def _seg(
    backbone: EfficientViTBackbone | EfficientViTLargeBackbone,
    dataset: str,
    *,
    in_channel_list: Sequence[int],
    act_func: str,
    heads: dict[str, dict[str, Any]],
) -> EfficientViTSeg:
    """Every official seg head reads stage4/3/2 (strides 32/16/8) and predicts at stride 8."""
    if dataset not in heads:
        raise UsageError(f"no official head for dataset {dataset!r}; choose one of {sorted(heads)}")
    head = SegHead(
        fid_list=["stage4", "stage3", "stage2"],
        in_channel_list=in_channel_list,
        stride_list=[32, 16, 8],
        head_stride=8,
        n_classes=N_CLASSES[dataset],
        act_func=act_func,
        **heads[dataset],
    )
    return EfficientViTSeg(backbone, head)


def _head(
    width: int, depth: int, expand_ratio: float, middle_op: str, final_expand: int | None
) -> dict[str, Any]:
    return {
        "head_width": width,
        "head_depth": depth,
        "expand_ratio": expand_ratio,
        "middle_op": middle_op,
        "final_expand": final_expand,
    }


def _b_heads(width: int) -> dict[str, dict[str, Any]]:
    """B heads: MBConv trunk; Cityscapes widens 4x before the classifier, ADE20K does not."""
    return {"cityscapes": _head(width, 3, 4, "mbconv", 4), "ade20k": _head(width, 3, 4, "mbconv", None)}


def _l_heads(cityscapes_depth: int) -> dict[str, dict[str, Any]]:
    """L heads: FusedMBConv trunk; Cityscapes is 256 wide without widening, ADE20K widens 8x at the end."""
    return {
        "cityscapes": _head(256, cityscapes_depth, 1, "fmbconv", None),
        "ade20k": _head(128, 3, 4, "fmbconv", 8),
    }


def efficientvit_seg_b0(dataset: str, in_channels: int = 3) -> EfficientViTSeg:
    heads = {"cityscapes": _head(32, 1, 4, "mbconv", 4)}  # B0 was only released for Cityscapes
    return _seg(
        efficientvit_backbone_b0(in_channels),
        dataset,
        in_channel_list=[128, 64, 32],
        act_func="hswish",
        heads=heads,
    )


def efficientvit_seg_b1(dataset: str, in_channels: int = 3) -> EfficientViTSeg:
    return _seg(
        efficientvit_backbone_b1(in_channels),
        dataset,
        in_channel_list=[256, 128, 64],
        act_func="hswish",
        heads=_b_heads(64),
    )


def efficientvit_seg_b2(dataset: str, in_channels: int = 3) -> EfficientViTSeg:
    return _seg(
        efficientvit_backbone_b2(in_channels),
        dataset,
        in_channel_list=[384, 192, 96],
        act_func="hswish",
        heads=_b_heads(96),
    )


def efficientvit_seg_b3(dataset: str, in_channels: int = 3) -> EfficientViTSeg:
    return _seg(
        efficientvit_backbone_b3(in_channels),
        dataset,
        in_channel_list=[512, 256, 128],
        act_func="hswish",
        heads=_b_heads(128),
    )


def efficientvit_seg_l1(dataset: str, in_channels: int = 3) -> EfficientViTSeg:
    return _seg(
        efficientvit_backbone_l1(in_channels),
        dataset,
        in_channel_list=[512, 256, 128],
        act_func="gelu",
        heads=_l_heads(cityscapes_depth=3),
    )


def efficientvit_seg_l2(dataset: str, in_channels: int = 3) -> EfficientViTSeg:
    return _seg(
        efficientvit_backbone_l2(in_channels),
        dataset,
        in_channel_list=[512, 256, 128],
        act_func="gelu",
        heads=_l_heads(cityscapes_depth=5),
    )


# --- registries -------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    fn.__name__: fn
    for fn in (
        efficientvit_cls_b0,
        efficientvit_cls_b1,
        efficientvit_cls_b2,
        efficientvit_cls_b3,
        efficientvit_cls_l1,
        efficientvit_cls_l2,
        efficientvit_cls_l3,
        efficientvit_seg_b0,
        efficientvit_seg_b1,
        efficientvit_seg_b2,
        efficientvit_seg_b3,
        efficientvit_seg_l1,
        efficientvit_seg_l2,
    )
} | SAM_BUILDERS
"""Official builder name -> builder. Seg builders take ``dataset``; SAM builders ``image_size``."""

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    fn.__name__: fn
    for fn in (
        efficientvit_backbone_b0,
        efficientvit_backbone_b1,
        efficientvit_backbone_b2,
        efficientvit_backbone_b3,
        efficientvit_backbone_l0,
        efficientvit_backbone_l1,
        efficientvit_backbone_l2,
        efficientvit_backbone_l3,
        efficientvit_backbone_xl0,
        efficientvit_backbone_xl1,
    )
}
"""Backbone builder name -> builder. L0 exists for SAM-L0 only; XL0/XL1 are SAM-XL's six-stage
backbones, which the official code builds inline (the names are ours)."""


def norm_eps_for(builder: str) -> float:
    """The zoo's norm eps for a builder (or backbone): B-series 1e-5, L-series 1e-7, SAM 1e-6.

    SAM-L reuses the L backbones yet uses 1e-6: the eps belongs to the model, not the backbone.
    """
    if builder not in BUILDERS and builder not in BACKBONES:
        raise UsageError(f"unknown builder {builder!r}; known: {', '.join(sorted(BUILDERS))}")
    if builder in SAM_BUILDERS or builder.endswith(("_xl0", "_xl1")):
        return SAM_NORM_EPS
    family = builder.rsplit("_", 1)[-1][:1]
    return B_NORM_EPS if family == "b" else L_NORM_EPS


def register_builder(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``builder`` buildable by name (cards made in code: a family under development, tests)."""
    BUILDERS[name] = builder


def build_model(builder: str, *, norm_eps: float, **kwargs: Any) -> nn.Module:
    """Build ``builder(**kwargs)``, set every BN/LN eps to ``norm_eps``, return it in eval mode.

    Eval mode because every consumer here runs inference: in train mode BN would use batch
    statistics (the official zoo returns train mode and leaves ``.eval()`` to the caller).
    """
    try:
        fn = BUILDERS[builder]
    except KeyError:
        raise UsageError(f"unknown builder {builder!r}; known: {', '.join(sorted(BUILDERS))}") from None
    model = fn(**kwargs)
    set_norm_eps(model, norm_eps)
    return model.eval()


_CLS_RESOLUTIONS: dict[str, tuple[int, ...]] = {
    "b0": (224,),
    "b1": (224, 256, 288),
    "b2": (224, 256, 288),
    "b3": (224, 256, 288),
    "l1": (224,),
    "l2": (224, 256, 288, 320, 384),
    "l3": (224, 256, 288, 320, 384),
}
_SEG_DATASETS: dict[str, tuple[str, ...]] = {
    "b0": ("cityscapes",),
    "b1": ("cityscapes", "ade20k"),
    "b2": ("cityscapes", "ade20k"),
    "b3": ("cityscapes", "ade20k"),
    "l1": ("cityscapes", "ade20k"),
    "l2": ("cityscapes", "ade20k"),
}


def official_registry() -> dict[str, tuple[str, dict[str, Any], float]]:
    """Every official zoo name -> (builder name, builder kwargs, norm eps).

    Classification: a bare name (``efficientvit-b1``, no checkpoint) plus one name per released
    resolution (``efficientvit-b1-r224``); the resolution never changes the architecture.
    Segmentation: ``efficientvit-seg-<model>-<dataset>`` with ``dataset`` bound.
    SAM: ``efficientvit-sam-<model>``, the builder's default encoder input size.
    """
    registry: dict[str, tuple[str, dict[str, Any], float]] = {}
    for model, resolutions in _CLS_RESOLUTIONS.items():
        builder = f"efficientvit_cls_{model}"
        eps = norm_eps_for(builder)
        registry[f"efficientvit-{model}"] = (builder, {}, eps)
        for r in resolutions:
            registry[f"efficientvit-{model}-r{r}"] = (builder, {}, eps)
    for model, datasets in _SEG_DATASETS.items():
        builder = f"efficientvit_seg_{model}"
        for dataset in datasets:
            registry[f"efficientvit-seg-{model}-{dataset}"] = (
                builder,
                {"dataset": dataset},
                norm_eps_for(builder),
            )
    for builder in SAM_BUILDERS:
        registry[builder.replace("_", "-")] = (builder, {}, SAM_NORM_EPS)
    return registry
