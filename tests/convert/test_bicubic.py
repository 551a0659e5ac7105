"""The exact bicubic rewrite: same numbers as F.interpolate, converter-friendly ops only."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evit_deploy.convert.bicubic import (
    BicubicUpsample,
    bicubic_phase_weights,
    bicubic_upsample_layers,
    replace_bicubic_upsampling,
)
from evit_deploy.nn.layers import UpSampleLayer


def _reference(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False)


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("shape", [(1, 5, 7, 9), (2, 3, 1, 1), (1, 64, 16, 32), (1, 2, 2, 3)])
@pytest.mark.parametrize("channels_known", [True, False])
def test_matches_interpolate(factor: int, shape: tuple[int, ...], channels_known: bool) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    layer = BicubicUpsample(factor, shape[1] if channels_known else None)
    ref = _reference(x, factor)
    out = layer(x)
    assert out.shape == ref.shape
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-6


def test_other_integer_factors_are_close() -> None:
    x = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(1))
    for factor in (3, 8):  # 1/3 is inexact in binary, so PyTorch's own coordinates round
        ref = _reference(x, factor)
        assert float((BicubicUpsample(factor, 4)(x) - ref).abs().max() / ref.abs().max()) < 1e-5


def test_edges_follow_the_clamped_border() -> None:
    """A ramp with a step at the border: only replicate padding reproduces PyTorch here."""
    x = torch.zeros(1, 1, 4, 4)
    x[..., 0, :] = 10.0
    x[..., :, -1] = -5.0
    assert torch.allclose(BicubicUpsample(2, 1)(x), _reference(x, 2), atol=1e-5)


def test_phase_weights_are_keys_cubic() -> None:
    w = bicubic_phase_weights(2)
    assert w.shape == (2, 5)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)  # interpolation preserves constants
    np.testing.assert_allclose(w[0], w[1][::-1])  # the two phases mirror each other
    # t = 0.75 for phase 0: Keys' weights with A = -0.75
    np.testing.assert_allclose(w[0, :4], [-0.03515625, 0.26171875, 0.87890625, -0.10546875])
    with pytest.raises(ValueError, match="integer factor"):
        bicubic_phase_weights(1)


def test_half_input_computes_in_float() -> None:
    x = torch.randn(1, 3, 5, 5)
    out = BicubicUpsample(2, 3)(x.half())
    assert out.dtype == torch.float32
    assert torch.allclose(out, _reference(x.half().float(), 2), atol=1e-5)


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="built for 3 channels"):
        BicubicUpsample(2, 3)(torch.zeros(1, 4, 2, 2))


def _seg_model(name: str = "efficientvit-seg-b0-cityscapes") -> torch.nn.Module:
    from evit_deploy import zoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zoo.create_model(name, None, seed=0).eval()


def test_replace_swaps_seg_head_upsampling_in_place() -> None:
    model = _seg_model()
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(x)
    names = bicubic_upsample_layers(model)
    assert names and all(n.startswith("head.") for n in names)
    same = replace_bicubic_upsampling(model)
    assert same is model  # in place, documented
    assert bicubic_upsample_layers(model) == []
    swapped = [m for m in model.modules() if isinstance(m, BicubicUpsample)]
    assert len(swapped) == len(names)
    assert all(m.channels is not None for m in swapped)  # channels read from the conv before
    with torch.no_grad():
        after = model(x)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-6


def test_replace_leaves_other_resizes_alone() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1),
        UpSampleLayer(mode="bicubic", factor=2),
        UpSampleLayer(mode="bilinear", factor=2),
        UpSampleLayer(mode="bicubic", size=(8, 8)),
        UpSampleLayer(mode="bicubic", factor=2, align_corners=True),
    )
    assert bicubic_upsample_layers(model) == ["1"]
    copied = replace_bicubic_upsampling(copy.deepcopy(model))
    assert isinstance(copied[1], BicubicUpsample) and copied[1].channels == 4
    assert [type(m).__name__ for m in copied[2:]] == ["UpSampleLayer"] * 3
    x = torch.randn(1, 3, 4, 4)
    assert torch.allclose(copied(x), model(x), atol=1e-5)


def test_standalone_layer_gets_the_channel_agnostic_form() -> None:
    holder = torch.nn.Module()
    holder.up = UpSampleLayer(mode="bicubic", factor=4)
    replace_bicubic_upsampling(holder)
    assert isinstance(holder.up, BicubicUpsample) and holder.up.channels is None
    x = torch.randn(1, 2, 3, 3)
    assert torch.allclose(holder.up(x), _reference(x, 4), atol=1e-5)


class _Neck(torch.nn.Module):
    """SAM's neck in small: three scales, each projected and resized to one fixed size, summed."""

    def __init__(self) -> None:
        super().__init__()
        self.scales = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), UpSampleLayer(mode="bicubic", size=(16, 16)))
            for _ in range(3))
        self.odd = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), UpSampleLayer(mode="bicubic", size=(16, 16)))

    def forward(self, x4: torch.Tensor, x8: torch.Tensor, x16: torch.Tensor, x6: torch.Tensor) -> torch.Tensor:
        return sum(scale(x) for scale, x in zip([*self.scales, self.odd], (x4, x8, x16, x6)))


def test_fixed_size_resizes_become_factors_at_the_examples_sizes() -> None:
    """Given the inputs of a static export, a resize to 16x16 of a 4x4 map is a factor-4 resize and of
    a 16x16 map the identity; 6x6 -> 16x16 is no integer factor and stays as it is."""
    model = _Neck().eval()
    generator = torch.Generator().manual_seed(3)
    examples = tuple(torch.randn(1, 3, s, s, generator=generator) for s in (4, 8, 16, 6))
    assert bicubic_upsample_layers(model) == []  # without the sizes, nothing is known
    assert bicubic_upsample_layers(model, examples) == ["scales.0.1", "scales.1.1", "scales.2.1"]
    with torch.no_grad():
        before = model(*examples)
    replace_bicubic_upsampling(model, examples)
    assert [type(s[1]).__name__ for s in model.scales] == ["BicubicUpsample", "BicubicUpsample", "Identity"]
    assert [s[1].factor for s in model.scales[:2]] == [4, 2] and isinstance(model.odd[1], UpSampleLayer)
    with torch.no_grad():
        after = model(*examples)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-6
