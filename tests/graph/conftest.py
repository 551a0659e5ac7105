"""Seeded EfficientViT models exported once per session, and ONNX Runtime helpers."""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from evit_deploy.nn import LiteMLA, build_model

ort = pytest.importorskip("onnxruntime")

KEY_FILES = {
    "efficientvit_seg_b1": "efficientvit_seg_b1_cityscapes.txt",
    "efficientvit_seg_l1": "efficientvit_seg_l1_cityscapes.txt",
    "efficientvit_cls_b1": "efficientvit_cls_b1.txt",
    "efficientvit_cls_l1": "efficientvit_cls_l1.txt",
}


def seeded_model(builder: str, seeded_weights, reference_dir: Path, seed: int = 1234) -> torch.nn.Module:
    """``builder`` with the fixtures' trained-looking weights (BN stats far from (0, 1))."""
    kwargs = {"dataset": "cityscapes"} if "_seg_" in builder else {}
    eps = 1e-7 if builder.split("_")[-1].startswith("l") else 1e-5
    model = build_model(builder, norm_eps=eps, **kwargs)
    sd = seeded_weights.state_dict(reference_dir / "state_dict_keys" / KEY_FILES[builder], seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    return model.eval()


def litemla_count(model: torch.nn.Module) -> int:
    return sum(isinstance(m, LiteMLA) for m in model.modules())


def export(model: torch.nn.Module, height: int, width: int, dynamic: bool = False) -> onnx.ModelProto:
    """torch's dynamo exporter with its optimizer on (the default), as the ONNX target uses it."""
    example = torch.zeros(1, 3, height, width)
    shapes = None
    if dynamic:
        dim = torch.export.Dim
        shapes = ({2: 32 * dim("h32", min=2, max=64), 3: 32 * dim("w32", min=2, max=64)},)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(model, (example,), f"{tmp}/m.onnx", dynamo=True, dynamic_shapes=shapes)
        finally:
            logging.disable(logging.NOTSET)
        return onnx.load(f"{tmp}/m.onnx")


def ort_run(model: onnx.ModelProto, x: np.ndarray, threads: int = 2) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed_type = session.get_inputs()[0].type
    feed = x.astype(np.float16) if "float16" in feed_type else x
    return session.run(None, {session.get_inputs()[0].name: feed})[0].astype(np.float32)


def torch_run(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def inputs(height: int, width: int, n: int, seed: int = 0) -> list[np.ndarray]:
    return [np.random.default_rng(seed + i).standard_normal((1, 3, height, width)).astype(np.float32)
            for i in range(n)]


def scale_qk(model: torch.nn.Module, factor: float) -> torch.nn.Module:
    """Scale the q and k rows of every LiteMLA qkv conv by ``factor``.

    ReLU attention is invariant to that (numerator and normaliser both scale by factor^2), so
    the fp32 output does not move, but the token sums grow by factor^2: with a large enough
    factor they pass fp16's 65504 while torch's fp32 output stays finite and unchanged.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LiteMLA):
                weight = module.qkv.conv.weight
                row = torch.arange(weight.shape[0]) % (3 * module.dim)  # q0 k0 v0 | q1 k1 v1 | ...
                weight[row < 2 * module.dim] *= factor
    return model


class Exports:
    """Session cache: (builder, H, W, dynamic, variant) -> (torch model, fp32 ONNX).

    Variants: "seeded" (the fixtures' weights), "overflow" (q/k scaled past fp16's range),
    "exact_bicubic" (the seg head's bicubic Resize replaced by its exact conv form)."""

    def __init__(self, seeded_weights, reference_dir: Path) -> None:
        self._sw, self._ref = seeded_weights, reference_dir
        self._models: dict[tuple, torch.nn.Module] = {}
        self._graphs: dict[tuple, onnx.ModelProto] = {}

    def model(self, builder: str, variant: str = "seeded") -> torch.nn.Module:
        key = (builder, variant)
        if key not in self._models:
            model = seeded_model(builder, self._sw, self._ref)
            if variant == "overflow":
                scale_qk(model, 16.0)
            if variant == "exact_bicubic":  # the seg head's upsampling as the ONNX target exports it
                from evit_deploy.convert.bicubic import replace_bicubic_upsampling

                replace_bicubic_upsampling(model)
            self._models[key] = model
        return self._models[key]

    def graph(self, builder: str, height: int, width: int, dynamic: bool = False,
              variant: str = "seeded") -> onnx.ModelProto:
        key = (builder, height, width, dynamic, variant)
        if key not in self._graphs:
            self._graphs[key] = export(self.model(builder, variant), height, width, dynamic)
        copy = onnx.ModelProto()
        copy.CopyFrom(self._graphs[key])
        return copy


@pytest.fixture(scope="session")
def exports(seeded_weights, reference_dir) -> Exports:
    return Exports(seeded_weights, reference_dir)


@pytest.fixture(scope="session")
def run_ort() -> Callable[..., np.ndarray]:
    return ort_run
