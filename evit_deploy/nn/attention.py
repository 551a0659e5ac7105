"""Multi-scale ReLU linear attention (LiteMLA) and the EfficientViT block built around it.

LiteMLA replaces softmax attention by ``ReLU(q) . ReLU(k)`` similarities, so the attention can
be associated as ``(V K^T) Q``: linear in the number of tokens. Small depthwise convs on the
qkv tensor add "multi-scale" tokens that act as extra heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import MBConv, ResidualBlock
from .layers import ConvLayer, IdentityLayer, autocast_disabled, build_act, per_conv

__all__ = ["EfficientViTBlock", "LiteMLA"]

_HALF = (torch.float16, torch.bfloat16)


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention, numerically identical to the official module.

    Layout: the qkv conv's output channels are head-interleaved (``q0 k0 v0 | q1 k1 v1 | ...``);
    the aggregation branches read the raw qkv and are concatenated after it, so their heads come
    after the base heads. The normaliser comes out of the same matmuls by appending a row of
    ones to V.

    Deployment notes:

    * ``eps`` is held as a 1-element fp32 buffer, not a Python float. torch's dynamo ONNX
      exporter runs an optimizer that treats scalars within 1e-8 of zero as zero and deletes
      ``x + 1e-15``; where ``ReLU(q)`` meets no key mass this turns ``0 / eps = 0`` into
      ``0 / 0 = NaN``. A tensor operand is not rewritten. The buffer is non-persistent (no
      state_dict key) and stays fp32 under ``.half()`` (1e-15 is 0 in fp16).
    * Half-precision input runs inside an fp32 island (see ``relu_linear_att``): in fp16 the
      token sums overflow at segmentation resolutions and eps underflows to 0. Autocast is
      switched off inside the island on the input's device; the official code names only CUDA,
      so under CPU autocast its matmuls could still drop to bf16 (ours stay as written).
    * The linear/quadratic choice depends only on static shapes. When the token count is
      symbolic (``torch.export`` with dynamic H/W) the linear form is taken unconditionally:
      both forms compute the same function and differ only by rounding (~1e-7), so a dynamic
      graph stays correct at every size without guards on H*W.
    """

    eps: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int | None = None,
        heads_ratio: float = 1.0,
        dim: int = 8,
        use_bias: bool | tuple[bool, ...] = False,
        norm: str | None | tuple[str | None, ...] = (None, "bn2d"),
        act_func: str | None | tuple[str | None, ...] = (None, None),
        kernel_func: str = "relu",
        scales: Sequence[int] = (5,),
        eps: float = 1.0e-15,
    ) -> None:
        super().__init__()
        heads = int(in_channels // dim * heads_ratio) if heads is None else heads
        total_dim = heads * dim
        use_bias, norm, act_func = per_conv(use_bias, 2), per_conv(norm, 2), per_conv(act_func, 2)

        self.dim = dim  # per-head dim; also the quadratic-fallback threshold (tokens)
        self.heads = heads
        self._eps_value = float(eps)
        self.register_buffer("eps", torch.tensor([eps], dtype=torch.float32), persistent=False)

        self.qkv = ConvLayer(
            in_channels, 3 * total_dim, 1, use_bias=use_bias[0], norm=norm[0], act_func=act_func[0]
        )
        self.aggreg = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(
                        3 * total_dim,
                        3 * total_dim,
                        scale,
                        padding=scale // 2,
                        groups=3 * total_dim,
                        bias=use_bias[0],
                    ),
                    # 3*heads groups of `dim` channels: exactly the q, k, v blocks of each head
                    nn.Conv2d(3 * total_dim, 3 * total_dim, 1, groups=3 * heads, bias=use_bias[0]),
                )
                for scale in scales
            ]
        )
        kernel = build_act(kernel_func)
        if kernel is None:
            raise ValueError(f"LiteMLA needs a kernel function, got {kernel_func!r}")
        self.kernel_func = kernel
        self.proj = ConvLayer(
            total_dim * (1 + len(scales)),
            out_channels,
            1,
            use_bias=use_bias[1],
            norm=norm[1],
            act_func=act_func[1],
        )

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> LiteMLA:
        """Keep eps in (at least) fp32 when the module is cast to half precision."""
        module = super()._apply(fn, recurse)
        if self.eps.dtype in _HALF:
            self.eps = torch.full((1,), self._eps_value, dtype=torch.float32, device=self.eps.device)
        return module

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, G*3*dim, H, W) -> q, k, v of shape (B, G, dim, H*W); group g = channel // (3*dim)."""
        B, _, H, W = qkv.shape
        qkv = torch.reshape(qkv, (B, -1, 3 * self.dim, H * W))
        return qkv[:, :, : self.dim], qkv[:, :, self.dim : 2 * self.dim], qkv[:, :, 2 * self.dim :]

    def relu_linear_att(self, qkv: torch.Tensor) -> torch.Tensor:
        """``(V1 K^T) Q`` with V1 = V plus a row of ones; returns fp32 for half input.

        fp16: everything from the ReLU to the division runs in fp32. bf16 has fp32's range, so
        (as in the official code) only the division is moved to fp32.
        """
        B, _, H, W = qkv.shape
        with autocast_disabled(qkv.device.type):
            if qkv.dtype == torch.float16:
                qkv = qkv.float()
            q, k, v = self._split(qkv)
            q = self.kernel_func(q)
            k = self.kernel_func(k)
            v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)
            vk = torch.matmul(v, k.transpose(-1, -2))  # (B, G, dim+1, dim): sums over all tokens
            out = torch.matmul(vk, q)  # (B, G, dim+1, N); last row = normaliser
            if out.dtype == torch.bfloat16:
                out = out.float()
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
            return torch.reshape(out, (B, -1, H, W))

    def relu_quadratic_att(self, qkv: torch.Tensor) -> torch.Tensor:
        """Explicit N x N attention, normalised over the key axis; official path for N <= dim."""
        B, _, H, W = qkv.shape
        with autocast_disabled(qkv.device.type):
            q, k, v = self._split(qkv)
            q = self.kernel_func(q)
            k = self.kernel_func(k)
            att = torch.matmul(k.transpose(-1, -2), q)  # att[i, j] = k_i . q_j
            dtype = att.dtype
            if dtype in _HALF:
                att = att.float()
            att = att / (torch.sum(att, dim=2, keepdim=True) + self.eps)
            att = att.to(dtype)
            out = torch.matmul(v, att)
            return torch.reshape(out, (B, -1, H, W))

    def uses_linear_path(self, tokens: int | torch.SymInt) -> bool:
        """The official switch ``H*W > dim``, decided only on static token counts."""
        if isinstance(tokens, int):
            return tokens > self.dim
        return True  # symbolic H*W: same function, no shape guard (see class docstring)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        multi_scale_qkv = [qkv] + [op(qkv) for op in self.aggreg]
        qkv = torch.cat(multi_scale_qkv, dim=1)
        if self.uses_linear_path(qkv.shape[-2] * qkv.shape[-1]):
            out = self.relu_linear_att(qkv).to(qkv.dtype)
        else:
            out = self.relu_quadratic_att(qkv)
        return self.proj(out)


class EfficientViTBlock(nn.Module):
    """Global context (LiteMLA) then local detail (fewer-norm MBConv), each with a residual.

    There is no pre-norm: the BN inside ``proj`` and after the MBConv projection are the only
    norms, which is what lets BN fold into the convs at deployment.
    """

    def __init__(
        self,
        in_channels: int,
        heads_ratio: float = 1.0,
        dim: int = 32,
        expand_ratio: float = 4,
        scales: Sequence[int] = (5,),
        norm: str = "bn2d",
        act_func: str = "hswish",
    ) -> None:
        super().__init__()
        self.context_module = ResidualBlock(
            LiteMLA(
                in_channels, in_channels, heads_ratio=heads_ratio, dim=dim, norm=(None, norm), scales=scales
            ),
            IdentityLayer(),
        )
        self.local_module = ResidualBlock(
            MBConv(
                in_channels,
                in_channels,
                expand_ratio=expand_ratio,
                use_bias=(True, True, False),
                norm=(None, None, norm),
                act_func=(act_func, act_func, None),
            ),
            IdentityLayer(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))
