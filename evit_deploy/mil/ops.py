"""MIL operations in numpy: the ones EfficientViT's ML programs contain, and their near kin.

Each function takes the op's inputs by their MIL names (optional ones default as the MIL
spec says) and returns its output(s). The interpreter casts every result to the type the
program declares for it, so fp16 tensors are rounded to fp16 between operations exactly
where the program says; inside one op, fp16 operands are widened to fp32 (products and sums
accumulate in fp32). Semantics follow the MIL op reference (coremltools ``mil.ops.defs``).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from evit_deploy.mil.blob import unpack_bits


@dataclass(frozen=True)
class OpDef:
    fn: Callable[..., Any]
    lists: tuple[str, ...] = ()  # inputs that are variadic (always passed as a list)


REGISTRY: dict[str, OpDef] = {}

_DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int8": np.int8, "uint8": np.uint8,
           "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "int64": np.int64, "bool": np.bool_}


def op(*names: str, lists: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            REGISTRY[name] = OpDef(fn, lists)
        return fn

    return register


def _f32(x: np.ndarray) -> np.ndarray:
    """Compute type of a float operand: fp16 widens to fp32, everything else stays."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _axes(axes: Any, rank: int) -> tuple[int, ...]:
    return tuple(int(a) % rank for a in np.atleast_1d(axes))


# ---------------------------------------------------------------- constants and casts


@op("const")
def const(val: Any) -> Any:
    return val


@op("identity")
def identity(x: np.ndarray) -> np.ndarray:
    return x


@op("cast")
def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype not in _DTYPES:
        raise NotImplementedError(f"cast to {dtype!r}")
    target = _DTYPES[dtype]
    x = np.asarray(x)
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)  # MIL casts float -> int by truncation toward zero
    return x.astype(target)


@op("constexpr_cast")
def constexpr_cast(source_val: np.ndarray, output_dtype: str) -> np.ndarray:
    return np.asarray(source_val).astype(_DTYPES[output_dtype])


@op("constexpr_affine_dequantize")
def constexpr_affine_dequantize(quantized_data: np.ndarray, zero_point: np.ndarray, scale: np.ndarray,
                                axis: int) -> np.ndarray:
    """iOS16: ``scale * (data - zero_point)``, scale/zero_point scalar or a vector along ``axis``."""
    data = quantized_data.astype(np.float32)
    shape = [1] * data.ndim
    scale = np.asarray(scale)
    zero = np.asarray(zero_point).astype(np.float32)
    if scale.ndim:
        shape[int(axis)] = -1
    return (scale.astype(np.float32).reshape(shape if scale.ndim else ()) *
            (data - (zero.reshape(shape) if zero.ndim else zero))).astype(scale.dtype)


@op("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """iOS18: ``scale * (data - offset)`` with scale/offset repeated over blocks of ``data``."""
    values = data.astype(np.float32)
    s, o = scale.astype(np.float32), None if offset is None else offset.astype(np.float32)
    for axis, (full, part) in enumerate(zip(values.shape, scale.shape)):
        if full != part:
            s = np.repeat(s, full // part, axis)
            if o is not None:
                o = np.repeat(o, full // part, axis)
    if o is not None:
        values = values - o
    return (s * values).astype(scale.dtype)


@op("constexpr_lut_to_dense")
def constexpr_lut_to_dense(lut: np.ndarray, indices: np.ndarray, shape: np.ndarray | None = None,
                           vector_axis: int | None = None) -> np.ndarray:
    """Palettized weights: iOS16 (one LUT, packed uint8 indices, ``shape``) or iOS18 (per-block LUTs)."""
    if shape is not None:  # iOS16 form
        nbits = int(math.log2(lut.size))
        count = int(np.prod(shape))
        unpacked = unpack_bits(indices, nbits, count)
        return lut[unpacked].reshape(tuple(int(d) for d in shape))
    # iOS18: lut has rank(indices) + 2: [blocks per axis..., palettes, vector_size]
    rank = indices.ndim
    vector = lut.shape[-1]
    blocks = [indices.shape[a] // lut.shape[a] for a in range(rank)]
    block_index = tuple(
        (np.arange(indices.shape[a]) // blocks[a]).reshape([-1 if b == a else 1 for b in range(rank)])
        for a in range(rank)
    )
    picked = lut[block_index + (indices.astype(np.int64),)]  # indices.shape + (vector,)
    if vector == 1:
        return picked[..., 0]
    axis = int(vector_axis) % rank
    moved = np.moveaxis(picked, -1, axis + 1)  # put the vector right after its axis
    out_shape = list(indices.shape)
    out_shape[axis] *= vector
    return moved.reshape(out_shape)


# ---------------------------------------------------------------- elementwise


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def apply(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return fn(np.asarray(x), np.asarray(y))

    return apply


for _name, _fn in {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide,
    "maximum": np.maximum, "minimum": np.minimum, "pow": np.power, "floor_div": np.floor_divide,
    "mod": np.mod, "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}.items():
    REGISTRY[_name] = OpDef(_binary(_fn))


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def apply(x: np.ndarray) -> np.ndarray:
        return fn(_f32(x))

    return apply


for _name, _fn in {
    "abs": np.abs, "ceil": np.ceil, "floor": np.floor, "round": np.round, "sign": np.sign, "exp": np.exp,
    "exp2": np.exp2, "sqrt": np.sqrt, "square": np.square, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0), "relu6": lambda x: np.clip(x, 0, 6),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "silu": lambda x: x / (1 + np.exp(-x)),
    "logical_not": np.logical_not,
}.items():
    REGISTRY[_name] = OpDef(_unary(_fn))


@op("erf")
def erf(x: np.ndarray) -> np.ndarray:
    return _erf(_f32(x).astype(np.float64))


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 without scipy (Abramowitz-Stegun 7.1.26 is too coarse; use math.erf per value)."""
    return np.vectorize(math.erf, otypes=[np.float64])(x)


@op("rsqrt")
def rsqrt(x: np.ndarray, epsilon: float = 1e-12) -> np.ndarray:
    return 1 / np.sqrt(_f32(x) + epsilon)


@op("inverse")
def inverse(x: np.ndarray, epsilon: float = 1e-4) -> np.ndarray:
    return 1 / (_f32(x) + epsilon)


@op("log")
def log(x: np.ndarray, epsilon: float = 1e-45) -> np.ndarray:
    return np.log(_f32(x) + epsilon)


@op("clip")
def clip(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.minimum(np.maximum(_f32(x), alpha), beta)


@op("thresholded_relu")
def thresholded_relu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    x = _f32(x)
    return x * (x >= np.asarray(alpha, dtype=x.dtype))


@op("leaky_relu")
def leaky_relu(x: np.ndarray, alpha: float = 0.01) -> np.ndarray:
    x = _f32(x)
    return np.where(x >= 0, x, alpha * x)


@op("elu")
def elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    x = _f32(x)
    return np.where(x > 0, x, alpha * (np.exp(x) - 1))


@op("sigmoid_hard")
def sigmoid_hard(x: np.ndarray, alpha: float = 0.2, beta: float = 0.5) -> np.ndarray:
    out = np.multiply(_f32(x), np.float32(alpha))  # a new array: the in-place steps below never touch x
    out += np.float32(beta)
    return np.clip(out, 0, 1, out=out)


@op("linear_activation")
def linear_activation(x: np.ndarray, alpha: float, beta: float = 0.0) -> np.ndarray:
    return np.float32(alpha) * _f32(x) + np.float32(beta)


@op("softplus")
def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, _f32(x))


@op("gelu")
def gelu(x: np.ndarray, mode: str = "EXACT") -> np.ndarray:
    v = _f32(x)
    if mode == "EXACT":
        return (0.5 * v.astype(np.float64) * (1 + _erf(v.astype(np.float64) / math.sqrt(2)))).astype(v.dtype)
    if mode == "TANH_APPROXIMATION":
        return 0.5 * v * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (v + np.float32(0.044715) * v ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return v / (1 + np.exp(-1.702 * v))
    raise NotImplementedError(f"gelu mode {mode!r}")


@op("softmax")
def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    v = _f32(x)
    e = np.exp(v - v.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


@op("select")
def select(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(cond, a, b)


# ---------------------------------------------------------------- linear algebra


@op("matmul")
def matmul(x: np.ndarray, y: np.ndarray, transpose_x: bool = False, transpose_y: bool = False) -> np.ndarray:
    a, b = _f32(x), _f32(y)
    if transpose_x and a.ndim > 1:
        a = np.swapaxes(a, -1, -2)
    if transpose_y and b.ndim > 1:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


@op("linear")
def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    out = np.matmul(_f32(x), _f32(weight).T)
    return out if bias is None else out + _f32(bias)


@op("einsum", lists=("values",))
def einsum(values: list[np.ndarray], equation: str) -> np.ndarray:
    return np.einsum(equation, *[_f32(v) for v in values])



def _conv_padding(pad_type: str, pad: np.ndarray | None, size: tuple[int, ...], kernel: tuple[int, ...],
                  strides: tuple[int, ...], dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    if pad_type == "custom":
        p = [int(v) for v in np.asarray(pad).ravel()]
        return [(p[2 * i], p[2 * i + 1]) for i in range(len(size))]
    if pad_type == "valid":
        return [(0, 0)] * len(size)
    if pad_type in ("same", "same_lower"):
        pads = []
        for n, k, s, d in zip(size, kernel, strides, dilations):
            out = -(-n // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
            before = total // 2 if pad_type == "same" else total - total // 2
            pads.append((before, total - before))
        return pads
    raise NotImplementedError(f"conv pad_type {pad_type!r}")


@op("conv")
def conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, strides: np.ndarray | None = None,
         pad_type: str = "valid", pad: np.ndarray | None = None, dilations: np.ndarray | None = None,
         groups: int = 1) -> np.ndarray:
    """1-D and 2-D convolution (NCHW), any stride/dilation/groups; fp32 accumulation."""
    x, w = _f32(x), _f32(weight)
    if x.ndim == 3:  # 1-D: run as 2-D with H = 1
        out = conv(x[:, :, None], w[:, :, None], bias, None if strides is None else [1, *np.ravel(strides)],
                   pad_type, None if pad is None else [0, 0, *np.ravel(pad)],
                   None if dilations is None else [1, *np.ravel(dilations)], groups)
        return out[:, :, 0]
    if x.ndim != 4:
        raise NotImplementedError(f"conv on rank-{x.ndim} input")
    n, cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    s = tuple(int(v) for v in np.ravel(strides)) if strides is not None else (1, 1)
    d = tuple(int(v) for v in np.ravel(dilations)) if dilations is not None else (1, 1)
    g = int(groups)
    pads = _conv_padding(pad_type, pad, (h, wd), (kh, kw), s, d)
    xp = np.pad(x, [(0, 0), (0, 0), *pads]) if any(p for pair in pads for p in pair) else x
    ho = (xp.shape[2] - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (xp.shape[3] - d[1] * (kw - 1) - 1) // s[1] + 1

    def tap(i: int, j: int) -> np.ndarray:
        return xp[:, :, i * d[0]: i * d[0] + s[0] * (ho - 1) + 1: s[0], j * d[1]: j * d[1] + s[1] * (wo - 1) + 1: s[1]]

    if g == cin and cin_g == 1 and cout == cin:  # depthwise: one multiply-add per tap
        out = np.zeros((n, cout, ho, wo), dtype=np.float32)
        scratch = np.empty_like(out)
        for i in range(kh):
            for j in range(kw):
                np.multiply(tap(i, j), w[:, 0, i, j][None, :, None, None], out=scratch)
                out += scratch
    else:
        cout_g = cout // g
        wg = w.reshape(g, cout_g, cin_g, kh, kw)
        out = np.zeros((n, g, cout_g, ho * wo), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                cols = np.ascontiguousarray(tap(i, j)).reshape(n, g, cin_g, ho * wo)
                out += np.matmul(wg[:, :, :, i, j], cols)
        out = out.reshape(n, cout, ho, wo)
    if bias is not None:
        out += _f32(bias)[None, :, None, None]
    return out


@op("conv_transpose")
def conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, pad: np.ndarray | None = None,
                   output_shape: np.ndarray | None = None, pad_type: str = "valid", strides: np.ndarray | None = None,
                   dilations: np.ndarray | None = None, groups: int = 1) -> np.ndarray:
    """2-D transposed convolution: scatter each input pixel's kernel, then crop ``pad``."""
    x, w = _f32(x), _f32(weight)
    if x.ndim != 4:
        raise NotImplementedError(f"conv_transpose on rank-{x.ndim} input")
    n, cin, h, wd = x.shape
    _, cout_g, kh, kw = w.shape  # weight: (Cin, Cout/groups, kh, kw)
    g = int(groups)
    s = tuple(int(v) for v in np.ravel(strides)) if strides is not None else (1, 1)
    d = tuple(int(v) for v in np.ravel(dilations)) if dilations is not None else (1, 1)
    full_h, full_w = (h - 1) * s[0] + d[0] * (kh - 1) + 1, (wd - 1) * s[1] + d[1] * (kw - 1) + 1
    full = np.zeros((n, g, cout_g, full_h, full_w), dtype=np.float32)
    xg = x.reshape(n, g, cin // g, h * wd)
    wg = w.reshape(g, cin // g, cout_g, kh, kw)
    for i in range(kh):
        for j in range(kw):
            contrib = np.matmul(np.swapaxes(wg[:, :, :, i, j], 1, 2), xg).reshape(n, g, cout_g, h, wd)
            full[:, :, :, i * d[0]: i * d[0] + s[0] * (h - 1) + 1: s[0], j * d[1]: j * d[1] + s[1] * (wd - 1) + 1: s[1]] += contrib
    full = full.reshape(n, g * cout_g, full_h, full_w)
    if pad_type == "custom" and pad is not None:
        t, b, l, r = (int(v) for v in np.ravel(pad))
        full = full[:, :, t: full_h - b, l: full_w - r]
    elif pad_type != "valid":
        raise NotImplementedError(f"conv_transpose pad_type {pad_type!r}")
    if bias is not None:
        full = full + _f32(bias)[None, :, None, None]
    return full


# ---------------------------------------------------------------- normalisation and reduction


@op("layer_norm")
def layer_norm(x: np.ndarray, axes: np.ndarray | None = None, gamma: np.ndarray | None = None,
               beta: np.ndarray | None = None, epsilon: float = 1e-5) -> np.ndarray:
    v = _f32(x)
    ax = _axes(axes, v.ndim) if axes is not None else tuple(range(v.ndim))
    mean = v.mean(axis=ax, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=ax, keepdims=True)
    out = (v - mean) / np.sqrt(var + np.float32(epsilon))
    if gamma is not None:
        out = out * _f32(gamma)
    if beta is not None:
        out = out + _f32(beta)
    return out


@op("batch_norm")
def batch_norm(x: np.ndarray, mean: np.ndarray, variance: np.ndarray, gamma: np.ndarray | None = None,
               beta: np.ndarray | None = None, epsilon: float = 1e-5) -> np.ndarray:
    v = _f32(x)
    shape = (1, -1) + (1,) * (v.ndim - 2)
    out = (v - _f32(mean).reshape(shape)) / np.sqrt(_f32(variance).reshape(shape) + np.float32(epsilon))
    if gamma is not None:
        out = out * _f32(gamma).reshape(shape)
    if beta is not None:
        out = out + _f32(beta).reshape(shape)
    return out


@op("instance_norm")
def instance_norm(x: np.ndarray, gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                  epsilon: float = 1e-5) -> np.ndarray:
    v = _f32(x)
    ax = tuple(range(2, v.ndim))
    out = (v - v.mean(axis=ax, keepdims=True)) / np.sqrt(v.var(axis=ax, keepdims=True) + np.float32(epsilon))
    shape = (1, -1) + (1,) * (v.ndim - 2)
    if gamma is not None:
        out = out * _f32(gamma).reshape(shape)
    if beta is not None:
        out = out + _f32(beta).reshape(shape)
    return out


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def apply(x: np.ndarray, axes: np.ndarray | None = None, keep_dims: bool = False) -> np.ndarray:
        v = _f32(x)
        ax = _axes(axes, v.ndim) if axes is not None else None
        return fn(v, axis=ax, keepdims=bool(keep_dims))

    return apply


for _name, _fn in {
    "reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min,
    "reduce_prod": np.prod,
    "reduce_l2_norm": lambda v, axis, keepdims: np.sqrt(np.sum(v * v, axis=axis, keepdims=keepdims)),
    "reduce_sum_square": lambda v, axis, keepdims: np.sum(v * v, axis=axis, keepdims=keepdims),
    "reduce_log_sum_exp": lambda v, axis, keepdims: np.log(np.sum(np.exp(v), axis=axis, keepdims=keepdims)),
}.items():
    REGISTRY[_name] = OpDef(_reduce(_fn))


def _argreduce(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def apply(x: np.ndarray, axis: int = -1, keep_dims: bool = False, output_dtype: str = "int32") -> np.ndarray:
        out = fn(x, axis=int(axis))
        return np.expand_dims(out, int(axis)) if keep_dims else out

    return apply


REGISTRY["reduce_argmax"] = OpDef(_argreduce(np.argmax))
REGISTRY["reduce_argmin"] = OpDef(_argreduce(np.argmin))


# ---------------------------------------------------------------- pooling


def _pool(x: np.ndarray, kernel_sizes: np.ndarray, strides: np.ndarray | None, pad_type: str,
          pad: np.ndarray | None, ceil_mode: bool, fill: float) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    v = _f32(x)
    k = tuple(int(a) for a in np.ravel(kernel_sizes))
    s = tuple(int(a) for a in np.ravel(strides)) if strides is not None else (1,) * len(k)
    pads = _conv_padding(pad_type, pad, v.shape[2:], k, s, (1,) * len(k))
    if ceil_mode:
        extra = []
        for size, kk, ss, (b, a) in zip(v.shape[2:], k, s, pads):
            out = -(-(size + b + a - kk) // ss) + 1
            extra.append(max((out - 1) * ss + kk - (size + b + a), 0))
        pads = [(b, a + e) for (b, a), e in zip(pads, extra)]
    padded = np.pad(v, [(0, 0), (0, 0), *pads], constant_values=fill)
    mask = np.pad(np.ones(v.shape[2:], np.float32), pads)
    windows = np.lib.stride_tricks.sliding_window_view(padded, k, axis=tuple(range(2, v.ndim)))
    mwin = np.lib.stride_tricks.sliding_window_view(mask, k)
    sl = tuple(slice(None, None, ss) for ss in s)
    return windows[(slice(None), slice(None)) + sl], mwin[sl], pads


@op("max_pool")
def max_pool(x: np.ndarray, kernel_sizes: np.ndarray, strides: np.ndarray | None = None, pad_type: str = "valid",
             pad: np.ndarray | None = None, ceil_mode: bool = False) -> np.ndarray:
    windows, _, _ = _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, -np.inf)
    return windows.reshape(*windows.shape[:-len(np.ravel(kernel_sizes))], -1).max(axis=-1)


@op("avg_pool")
def avg_pool(x: np.ndarray, kernel_sizes: np.ndarray, strides: np.ndarray | None = None, pad_type: str = "valid",
             pad: np.ndarray | None = None, exclude_padding_from_average: bool = False,
             ceil_mode: bool = False) -> np.ndarray:
    windows, mask, _ = _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, 0.0)
    nk = len(np.ravel(kernel_sizes))
    total = windows.reshape(*windows.shape[:-nk], -1).sum(axis=-1)
    if exclude_padding_from_average:
        return total / mask.reshape(*mask.shape[:-nk], -1).sum(axis=-1)
    return total / np.prod([int(a) for a in np.ravel(kernel_sizes)])


# ---------------------------------------------------------------- shapes and layout


@op("reshape")
def reshape(x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    dims = [int(d) for d in np.ravel(shape)]
    if len(dims) == x.ndim:  # 0 inherits the input's dimension (only when the ranks match)
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return np.reshape(x, dims)


@op("transpose")
def transpose(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    return np.transpose(x, [int(p) for p in np.ravel(perm)])


@op("squeeze")
def squeeze(x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=_axes(axes, x.ndim))


@op("expand_dims")
def expand_dims(x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    out = np.asarray(x)
    rank = out.ndim + len(np.ravel(axes))
    for axis in sorted(int(a) % rank for a in np.ravel(axes)):
        out = np.expand_dims(out, axis)
    return out


@op("concat", lists=("values",))
def concat(values: list[np.ndarray], axis: int, interleave: bool = False) -> np.ndarray:
    arrays = [np.asarray(v) for v in values]
    if not interleave:
        return np.concatenate(arrays, axis=int(axis))
    axis = int(axis) % arrays[0].ndim
    stacked = np.stack(arrays, axis=axis + 1)
    shape = list(arrays[0].shape)
    shape[axis] = -1
    return stacked.reshape(shape)


@op("stack", lists=("values",))
def stack(values: list[np.ndarray], axis: int) -> np.ndarray:
    return np.stack([np.asarray(v) for v in values], axis=int(axis))


@op("split")
def split(x: np.ndarray, axis: int, num_splits: int | None = None, split_sizes: np.ndarray | None = None) -> list[np.ndarray]:
    axis = int(axis)
    if split_sizes is not None:
        bounds = np.cumsum([int(s) for s in np.ravel(split_sizes)])[:-1]
        return np.split(x, bounds, axis=axis)
    return np.split(x, int(num_splits), axis=axis)


@op("slice_by_index")
def slice_by_index(x: np.ndarray, begin: np.ndarray, end: np.ndarray, stride: np.ndarray | None = None,
                   begin_mask: np.ndarray | None = None, end_mask: np.ndarray | None = None,
                   squeeze_mask: np.ndarray | None = None) -> np.ndarray:
    rank = x.ndim
    stride = np.ones(rank, int) if stride is None else np.ravel(stride)
    begin_mask = np.zeros(rank, bool) if begin_mask is None else np.ravel(begin_mask)
    end_mask = np.zeros(rank, bool) if end_mask is None else np.ravel(end_mask)
    squeeze_mask = np.zeros(rank, bool) if squeeze_mask is None else np.ravel(squeeze_mask)
    index: list[Any] = []
    for axis in range(rank):
        b, e, s = int(np.ravel(begin)[axis]), int(np.ravel(end)[axis]), int(stride[axis])
        if squeeze_mask[axis]:
            index.append(b)
            continue
        start = None if begin_mask[axis] else b
        stop = None if end_mask[axis] else e
        index.append(slice(start, stop, s))
    return x[tuple(index)]


@op("slice_by_size")
def slice_by_size(x: np.ndarray, begin: np.ndarray, size: np.ndarray) -> np.ndarray:
    index = []
    for axis, (b, n) in enumerate(zip(np.ravel(begin), np.ravel(size))):
        b, n = int(b) % x.shape[axis] if int(b) < 0 else int(b), int(n)
        index.append(slice(b, None if n == -1 else b + n))
    return x[tuple(index)]


@op("tile")
def tile(x: np.ndarray, reps: np.ndarray) -> np.ndarray:
    return np.tile(x, [int(r) for r in np.ravel(reps)])


@op("pad")
def pad(x: np.ndarray, pad: np.ndarray, mode: str = "constant", constant_val: float = 0.0) -> np.ndarray:
    """``pad`` lists (before, after) for the last len(pad)/2 axes."""
    p = [int(v) for v in np.ravel(pad)]
    k = len(p) // 2
    widths = [(0, 0)] * (x.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(constant_val, dtype=x.dtype))
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    if mode == "replicate":
        return np.pad(x, widths, mode="edge")
    raise NotImplementedError(f"pad mode {mode!r}")


@op("shape")
def shape(x: np.ndarray) -> np.ndarray:
    return np.array(np.shape(x), dtype=np.int32)


@op("gather")
def gather(x: np.ndarray, indices: np.ndarray, axis: int = 0, batch_dims: int = 0,
           validate_indices: bool = False) -> np.ndarray:
    if int(batch_dims):
        raise NotImplementedError("gather with batch_dims")
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[int(axis)], idx)
    return np.take(x, idx, axis=int(axis))


@op("pixel_shuffle")
def pixel_shuffle(x: np.ndarray, upscale_factor: int) -> np.ndarray:
    r = int(upscale_factor)
    n, c, h, w = x.shape
    return x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


@op("pixel_unshuffle")
def pixel_unshuffle(x: np.ndarray, downscale_factor: int) -> np.ndarray:
    r = int(downscale_factor)
    n, c, h, w = x.shape
    return x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h // r, w // r)


@op("depth_to_space")
def depth_to_space(x: np.ndarray, block_size: int) -> np.ndarray:
    r = int(block_size)
    n, c, h, w = x.shape
    return x.reshape(n, r, r, c // (r * r), h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, c // (r * r), h * r, w * r)


@op("space_to_depth")
def space_to_depth(x: np.ndarray, block_size: int) -> np.ndarray:
    r = int(block_size)
    n, c, h, w = x.shape
    return x.reshape(n, c, h // r, r, w // r, r).transpose(0, 3, 5, 1, 2, 4).reshape(n, c * r * r, h // r, w // r)


# ---------------------------------------------------------------- resizing


def _linear_weights(out_size: int, in_size: int, scale: float, align_corners: bool,
                    half_pixel: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and the weight of hi for 1-D linear interpolation."""
    i = np.arange(out_size, dtype=np.float64)
    if align_corners:
        src = i * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(i)
    elif half_pixel:
        src = np.maximum((i + 0.5) / scale - 0.5, 0)
    else:
        src = i / scale
    src = np.minimum(src, in_size - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _bilinear(x: np.ndarray, out_h: int, out_w: int, scale_h: float, scale_w: float, align_corners: bool,
              half_pixel: bool) -> np.ndarray:
    v = _f32(x)
    h, w = v.shape[-2:]
    lo_h, hi_h, fh = _linear_weights(out_h, h, scale_h, align_corners, half_pixel)
    lo_w, hi_w, fw = _linear_weights(out_w, w, scale_w, align_corners, half_pixel)
    rows = v[..., lo_h, :] * (1 - fh)[:, None] + v[..., hi_h, :] * fh[:, None]
    return rows[..., lo_w] * (1 - fw) + rows[..., hi_w] * fw


@op("upsample_bilinear")
def upsample_bilinear(x: np.ndarray, scale_factor_height: float = 1, scale_factor_width: float = 1,
                      align_corners: bool = True, half_pixel_centers: bool | None = None) -> np.ndarray:
    half = (not align_corners) if half_pixel_centers is None else bool(half_pixel_centers)
    h, w = x.shape[-2:]
    out_h, out_w = math.floor(h * float(scale_factor_height)), math.floor(w * float(scale_factor_width))
    return _bilinear(x, out_h, out_w, float(scale_factor_height), float(scale_factor_width), bool(align_corners), half)


@op("resize_bilinear")
def resize_bilinear(x: np.ndarray, target_size_height: int = 1, target_size_width: int = 1,
                    sampling_mode: str = "DEFAULT") -> np.ndarray:
    h, w = x.shape[-2:]
    oh, ow = int(target_size_height), int(target_size_width)
    if sampling_mode == "ALIGN_CORNERS" or sampling_mode == "STRICT_ALIGN_CORNERS":
        return _bilinear(x, oh, ow, oh / h, ow / w, True, False)
    if sampling_mode == "HALF_PIXEL_CENTERS":
        return _bilinear(x, oh, ow, oh / h, ow / w, False, True)
    if sampling_mode == "DEFAULT":
        return _bilinear(x, oh, ow, oh / h, ow / w, False, False)
    raise NotImplementedError(f"resize_bilinear sampling_mode {sampling_mode!r}")


@op("upsample_nearest_neighbor")
def upsample_nearest_neighbor(x: np.ndarray, scale_factor_height: float = 1, scale_factor_width: float = 1) -> np.ndarray:
    h, w = x.shape[-2:]
    sh, sw = float(scale_factor_height), float(scale_factor_width)
    rows = np.minimum(np.floor(np.arange(int(h * sh)) / sh).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(int(w * sw)) / sw).astype(np.int64), w - 1)
    return x[..., rows, :][..., cols]


@op("resize_nearest_neighbor")
def resize_nearest_neighbor(x: np.ndarray, target_size_height: int, target_size_width: int) -> np.ndarray:
    h, w = x.shape[-2:]
    oh, ow = int(target_size_height), int(target_size_width)
    return upsample_nearest_neighbor(x, oh / h, ow / w)


def supported() -> list[str]:
    return sorted(REGISTRY)
