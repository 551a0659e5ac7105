"""LiteMLA's maths, branch switch, eps handling and precision island."""

from __future__ import annotations

import pytest
import torch

from evit_deploy.nn import LiteMLA, UpSampleLayer


def _mla(channels: int = 64, dim: int = 16, seed: int = 0) -> LiteMLA:
    torch.manual_seed(seed)
    return LiteMLA(channels, channels, dim=dim).eval()


def _reference(qkv: torch.Tensor, dim: int, eps: float = 1e-15) -> torch.Tensor:
    """Closed form in float64: out_j = sum_i v_i (k_i . q_j) / (sum_i k_i . q_j + eps)."""
    B, C, H, W = qkv.shape
    z = qkv.double().reshape(B, C // (3 * dim), 3 * dim, H * W)
    q, k, v = z[:, :, :dim].relu(), z[:, :, dim : 2 * dim].relu(), z[:, :, 2 * dim :]
    sim = torch.einsum("bgdi,bgdj->bgij", k, q)  # [i, j] = k_i . q_j
    out = torch.einsum("bgdi,bgij->bgdj", v, sim) / (sim.sum(dim=2, keepdim=True) + eps)
    return out.reshape(B, -1, H, W)


@pytest.mark.parametrize("path", ["relu_linear_att", "relu_quadratic_att"])
def test_both_paths_compute_the_closed_form(path: str) -> None:
    mla = _mla()
    qkv = torch.randn(2, 2 * 3 * 64, 5, 7)  # base + one aggregated scale
    got = getattr(mla, path)(qkv)
    assert got.shape == (2, 2 * 64, 5, 7)
    torch.testing.assert_close(got.double(), _reference(qkv, 16), rtol=1e-5, atol=1e-6)


def test_quadratic_fallback_exactly_when_tokens_at_most_dim() -> None:
    mla = _mla(dim=16)
    calls: list[str] = []
    mla.relu_linear_att = lambda qkv, f=mla.relu_linear_att: calls.append("linear") or f(qkv)  # type: ignore[method-assign]
    mla.relu_quadratic_att = lambda qkv, f=mla.relu_quadratic_att: calls.append("quadratic") or f(qkv)  # type: ignore[method-assign]
    with torch.no_grad():
        mla(torch.randn(1, 64, 4, 4))  # 16 tokens == dim
        mla(torch.randn(1, 64, 1, 17))  # 17 tokens
    assert calls == ["quadratic", "linear"]


def test_symbolic_token_count_takes_linear_path() -> None:
    assert LiteMLA.uses_linear_path(_mla(dim=16), 16) is False
    assert LiteMLA.uses_linear_path(_mla(dim=16), 17) is True


@pytest.mark.parametrize("path", ["relu_linear_att", "relu_quadratic_att"])
def test_dead_query_gives_zero_not_nan(path: str) -> None:
    mla = _mla()
    qkv = torch.randn(1, 2 * 3 * 64, 4, 6)
    qkv.view(1, -1, 48, 24)[:, :, :16, 5] = -1.0  # token 5: ReLU(q) == 0 in every group
    out = getattr(mla, path)(qkv)
    assert torch.isfinite(out).all()
    assert (out.view(1, -1, 16, 24)[..., 5] == 0).all()


def test_eps_is_a_nonpersistent_fp32_tensor_that_survives_half() -> None:
    mla = _mla()
    assert "eps" not in mla.state_dict()
    assert mla.eps.shape == (1,) and mla.eps.dtype == torch.float32 and mla.eps.item() == pytest.approx(1e-15)
    mla.half()
    assert mla.eps.dtype == torch.float32 and mla.eps.item() == pytest.approx(1e-15)
    assert mla.qkv.conv.weight.dtype == torch.float16


def test_fp16_linear_attention_runs_in_fp32() -> None:
    """8192 tokens of N(0, 2^2): the normaliser exceeds fp16's max (65504) unless kept in fp32."""
    mla = _mla()
    qkv = 2 * torch.randn(1, 2 * 3 * 64, 64, 128, generator=torch.Generator().manual_seed(1))
    out = mla.relu_linear_att(qkv.half())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, mla.relu_linear_att(qkv.half().float()), rtol=0, atol=0)


def test_forward_returns_input_dtype() -> None:
    mla = _mla().to(torch.bfloat16)
    out = mla(torch.randn(1, 64, 8, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_upsample_bicubic_returns_fp32_for_half_input() -> None:
    x = torch.randn(1, 4, 5, 6)
    up = UpSampleLayer(factor=2)
    expected = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(up(x), expected, rtol=0, atol=0)
    assert up(x.half()).dtype == torch.float32
    assert up(x.bfloat16()).dtype == torch.float32


def test_upsample_only_factor_one_is_a_no_op() -> None:
    x = torch.randn(1, 2, 4, 4).half()
    assert UpSampleLayer(factor=1)(x) is x
    same = UpSampleLayer(size=(4, 4))(x)  # the official same-size shortcut never fires
    assert same.dtype == torch.float32
    torch.testing.assert_close(same, x.float(), rtol=0, atol=1e-6)
