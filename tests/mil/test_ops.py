"""Each MIL op the interpreter implements, checked against PyTorch on the program coremltools writes.

A case is a tiny module: it is exported and converted exactly as the Core ML target does, the
program must contain the MIL op under test (so the case really exercises it), and the
interpreter's output must match PyTorch's to float32 rounding.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from evit_deploy.mil import load_program

from .conftest import rel_err, run_mil, run_torch


class Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def seeded(module: nn.Module) -> nn.Module:
    """Non-trivial parameters and buffers (BN statistics far from 0/1)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=g) * 1.5 + 0.25 if tensor.ndim == 1
                             else torch.randn(tensor.shape, generator=g) * 0.3)
    return module


def x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CASES = {
    # name: (module, inputs, MIL op that must appear)
    "conv3x3_bias": (lambda: nn.Conv2d(8, 16, 3, padding=1), [x(1, 8, 12, 20)], "conv"),
    "conv_stride2": (lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), [x(1, 3, 17, 22)], "conv"),
    "conv_depthwise5x5": (lambda: nn.Conv2d(12, 12, 5, padding=2, groups=12), [x(1, 12, 9, 11)], "conv"),
    "conv_grouped1x1": (lambda: nn.Conv2d(12, 24, 1, groups=4), [x(2, 12, 5, 7)], "conv"),
    "conv_dilated": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2), [x(1, 4, 10, 10)], "conv"),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), [x(1, 4, 16)], "conv"),
    "conv_transpose": (lambda: nn.ConvTranspose2d(6, 4, 2, stride=2), [x(1, 6, 5, 7)], "conv_transpose"),
    "linear": (lambda: nn.Linear(24, 10), [x(3, 24)], "linear"),
    "matmul_batched": (lambda: Fn(lambda a, b: torch.matmul(a, b.transpose(-1, -2))), [x(2, 3, 5, 8), x(2, 3, 7, 8, seed=1)],
                       "matmul"),
    "layer_norm": (lambda: nn.LayerNorm(16), [x(2, 5, 16)], "layer_norm"),
    "batch_norm": (lambda: nn.BatchNorm2d(6), [x(1, 6, 4, 5)], "batch_norm"),
    "relu": (lambda: nn.ReLU(), [x(1, 4, 6, 6)], "relu"),
    "relu6": (lambda: Fn(lambda a: F.relu6(a * 4)), [x(1, 4, 6, 6)], "relu6"),
    "hardswish": (lambda: nn.Hardswish(), [x(1, 4, 6, 6) * 4], "sigmoid_hard"),
    "hardsigmoid": (lambda: nn.Hardsigmoid(), [x(1, 4, 6, 6) * 4], "sigmoid_hard"),
    "gelu_erf": (lambda: nn.GELU(), [x(1, 4, 6, 6) * 3], "gelu"),
    "silu": (lambda: nn.SiLU(), [x(1, 4, 6, 6) * 3], "silu"),
    "sigmoid": (lambda: nn.Sigmoid(), [x(1, 4, 6, 6) * 3], "sigmoid"),
    "tanh": (lambda: nn.Tanh(), [x(1, 4, 6, 6)], "tanh"),
    "leaky_relu": (lambda: nn.LeakyReLU(0.1), [x(1, 4, 6, 6)], "leaky_relu"),
    "pad_ones": (lambda: Fn(lambda a: F.pad(a, (0, 0, 0, 1), value=1.0)), [x(1, 2, 8, 5)], "pad"),
    "pad_replicate": (lambda: Fn(lambda a: F.pad(a, (2, 1, 1, 2), mode="replicate")), [x(1, 2, 6, 5)], "pad"),
    "pad_reflect": (lambda: Fn(lambda a: F.pad(a, (2, 1, 1, 2), mode="reflect")), [x(1, 2, 6, 5)], "pad"),
    "reshape_transpose": (lambda: Fn(lambda a: a.reshape(1, 4, 3, 30).permute(0, 2, 3, 1) * 2), [x(1, 12, 5, 6)],
                          "transpose"),
    "concat": (lambda: Fn(lambda a, b: torch.cat([a, b * 2, a], dim=1)), [x(1, 3, 4, 4), x(1, 2, 4, 4, seed=1)],
               "concat"),
    "slice_step": (lambda: Fn(lambda a: a[:, 1:7:2, :, 2:] * 3), [x(1, 8, 5, 6)], "slice_by_index"),
    "split": (lambda: Fn(lambda a: torch.stack(torch.chunk(a, 3, dim=1), dim=0).sum(0)), [x(1, 9, 4, 4)], None),
    "reduce_mean_hw": (lambda: Fn(lambda a: a.mean(dim=(2, 3), keepdim=True)), [x(2, 5, 7, 9)], "reduce_mean"),
    "reduce_sum": (lambda: Fn(lambda a: a.sum(dim=-1)), [x(2, 5, 7)], "reduce_sum"),
    "reduce_max": (lambda: Fn(lambda a: a.amax(dim=1)), [x(2, 5, 7)], "reduce_max"),
    "arith_broadcast": (lambda: Fn(lambda a, b: (a - b) * a / (b.abs() + 1e-3) + 2.0),
                        [x(1, 3, 4, 5), x(1, 3, 1, 5, seed=1)], "real_div"),
    "clamp_sqrt_exp": (lambda: Fn(lambda a: torch.sqrt(a.clamp(0.1, 2.0)) + torch.exp(a * 0.5)), [x(1, 3, 4, 5)], "sqrt"),
    "upsample_nearest": (lambda: Fn(lambda a: F.interpolate(a, scale_factor=2, mode="nearest")), [x(1, 3, 4, 5)],
                         "upsample_nearest_neighbor"),
    "upsample_bilinear": (lambda: Fn(lambda a: F.interpolate(a, scale_factor=2, mode="bilinear", align_corners=False)),
                          [x(1, 3, 4, 5)], "upsample_bilinear"),
    "upsample_bilinear_corners": (lambda: Fn(lambda a: F.interpolate(a, scale_factor=2, mode="bilinear",
                                                                     align_corners=True)), [x(1, 3, 4, 5)], None),
    "pixel_shuffle": (lambda: nn.PixelShuffle(2), [x(1, 12, 3, 5)], "pixel_shuffle"),
    "avg_pool": (lambda: nn.AvgPool2d(3, stride=2, padding=1), [x(1, 3, 9, 10)], "avg_pool"),
    "max_pool": (lambda: nn.MaxPool2d(3, stride=2, padding=1), [x(1, 3, 9, 10)], "max_pool"),
    "softmax": (lambda: nn.Softmax(dim=-1), [x(2, 3, 7)], "softmax"),
    "flatten_linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 5)), [x(2, 3, 4, 4)], "linear"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_pytorch(case, mlpackage):
    factory, inputs, mil_op = CASES[case]
    module = seeded(factory())
    path = mlpackage(module, inputs)
    program = load_program(path)
    if mil_op is not None:
        assert mil_op in program.op_counts(), f"{case}: no {mil_op} in {program.op_counts()}"
    got = run_mil(path, inputs)
    want = run_torch(module, inputs)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 2e-6, (case, rel_err(got, want))


def test_efficientvit_blocks_match_pytorch(mlpackage):
    """LiteMLA (linear and quadratic paths) and an MBConv: the ops EfficientViT's programs are made of."""
    from evit_deploy.nn.attention import EfficientViTBlock

    block = seeded(EfficientViTBlock(32, dim=8, expand_ratio=4))
    for shape in [(1, 32, 8, 12), (1, 32, 2, 2)]:  # 96 tokens: linear path; 4 tokens <= dim: quadratic path
        inputs = [x(*shape)]
        path = mlpackage(block, inputs)
        assert rel_err(run_mil(path, inputs), run_torch(block, inputs)) <= 1e-5


def test_fp16_program_rounds_where_the_program_says(mlpackage):
    """Elementwise fp16 ops give exactly what PyTorch's fp16 arithmetic gives, not the fp32 result."""
    module = Fn(lambda a: (a * 3.0 + 0.1) * a)
    inputs = [x(1, 4, 8, 8)]
    path = mlpackage(module, inputs, precision="fp16")
    counts = load_program(path).op_counts()
    assert counts.get("cast", 0) >= 2  # fp32 io, fp16 inside
    got = run_mil(path, inputs)
    half = torch.from_numpy(inputs[0]).half()
    want16 = ((half * 3.0 + 0.1) * half).float().numpy()
    want32 = run_torch(module, inputs)
    np.testing.assert_array_equal(got, want16)
    assert np.abs(got - want32).max() > 1e-4  # the rounding shows


def test_fp16_overflow_shows_as_inf(mlpackage):
    module = Fn(lambda a: a * 300.0 * 300.0)
    inputs = [np.full((1, 2, 2, 2), 2.0, np.float32)]
    got = run_mil(mlpackage(module, inputs, precision="fp16"), inputs)
    assert np.isinf(got).all()  # 180000 > 65504
    assert np.isfinite(run_mil(mlpackage(module, inputs), inputs)).all()


def test_fp16_conv_is_close_to_fp32(mlpackage):
    module = seeded(nn.Conv2d(16, 16, 3, padding=1))
    inputs = [x(1, 16, 10, 10)]
    got = run_mil(mlpackage(module, inputs, precision="fp16"), inputs)
    rel = rel_err(got, run_torch(module, inputs))
    assert 1e-5 < rel < 5e-3


def test_gelu_tanh_mode_matches_pytorch(tmp_path):
    """gelu(mode=TANH_APPROXIMATION), from a program built with coremltools' MIL builder (see below)."""
    from coremltools.converters.mil import Builder as mb

    from evit_deploy.coreml.tools import import_coremltools, quiet_coremltools

    ct = import_coremltools()

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 6, 6))], opset_version=ct.target.iOS17)
    def program(in0):
        return mb.gelu(x=in0, mode="TANH_APPROXIMATION", name="out")

    with quiet_coremltools():
        ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                   compute_precision=ct.precision.FLOAT32, skip_model_load=True).save(str(tmp_path / "g.mlpackage"))
    inputs = [x(1, 4, 6, 6) * 3]
    want = run_torch(nn.GELU(approximate="tanh"), inputs)
    assert rel_err(run_mil(tmp_path / "g.mlpackage", inputs), want) <= 2e-6


def test_coremltools_drops_tanh_gelu_on_the_export_path(mlpackage):
    """coremltools 9.0 reads ``approximate`` only as a positional argument; torch.export passes it as a
    keyword, so tanh-GELU is converted as erf-GELU (found by this interpreter). The Core ML target
    therefore rewrites tanh-GELUs before converting; when this test fails, coremltools fixed it."""
    inputs = [x(1, 4, 6, 6) * 3]
    module = nn.GELU(approximate="tanh")
    path = mlpackage(module, inputs)
    modes = [op.attributes["val"] for op in load_program(path).operations
             if op.type == "const" and "gelu_mode" in op.outputs[0][0]]
    assert modes == ["EXACT"]
    assert rel_err(run_mil(path, inputs), run_torch(module, inputs)) > 1e-5


def test_target_rewrite_keeps_tanh_gelu_exact(mlpackage):
    from evit_deploy.coreml.rewrite import replace_tanh_gelu

    module = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GELU(approximate="tanh"))
    inputs = [x(1, 4, 6, 6) * 3]
    want = run_torch(module, inputs)
    rewritten = replace_tanh_gelu(module)
    assert rewritten == 1
    assert rel_err(run_mil(mlpackage(module, inputs), inputs), want) <= 2e-6
