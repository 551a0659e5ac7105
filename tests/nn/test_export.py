"""The models export with torch.export and torch's dynamo ONNX exporter, eps intact."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.export import Dim

SEG_B0 = ("efficientvit_seg_b0", {"dataset": "cityscapes"}, 1e-5)


@pytest.fixture(scope="module")
def seg_b0(reference_dir: Path, seeded_model: Any) -> torch.nn.Module:
    builder, kwargs, eps = SEG_B0
    return seeded_model(
        builder, kwargs, eps, reference_dir / "state_dict_keys/efficientvit_seg_b0_cityscapes.txt", 1234
    )


def _tol(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, float(reference.abs().max()))


def test_torch_export_static(seg_b0: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    exported = torch.export.export(seg_b0, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), seg_b0(x), rtol=0, atol=1e-6)


def test_torch_export_dynamic_hw(seg_b0: torch.nn.Module) -> None:
    """H, W as multiples of 32 (what the seg head needs); min 2 avoids torch's size-1 specialisation."""
    x = torch.randn(2, 3, 128, 256)
    dims = {
        0: Dim("batch", min=1, max=8),
        2: 32 * Dim("h32", min=2, max=64),
        3: 32 * Dim("w32", min=2, max=64),
    }
    exported = torch.export.export(seg_b0, (x,), dynamic_shapes={"x": dims}).module()
    # 64x64 is quadratic in eager (stage 3 and 4 have <= 16 tokens) but linear in the symbolic
    # graph: same function, rounding-level differences only.
    for shape in [(1, 3, 64, 64), (3, 3, 96, 160), (1, 3, 256, 192)]:
        xi = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            got, want = exported(xi), seg_b0(xi)
        assert got.shape == (shape[0], 19, shape[2] // 8, shape[3] // 8)
        assert float((got - want).abs().max()) <= _tol(want)


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'evit-deploy[onnx]')")


def test_onnx_dynamo_export_keeps_eps(reference_dir: Path, seeded_model: Any, tmp_path: Path) -> None:
    """seg-B1 on the 128x256 fixture: stage 4 has tokens whose ReLU(q) meets no key mass, so an
    exporter that drops ``+ 1e-15`` turns them into 0/0 and the whole output into NaN."""
    _need("onnxscript")
    import onnx
    from onnx import numpy_helper

    fixtures = reference_dir / "fixtures"
    model = seeded_model(
        "efficientvit_seg_b1",
        {"dataset": "cityscapes"},
        1e-5,
        reference_dir / "state_dict_keys/efficientvit_seg_b1_cityscapes.txt",
        1234,
    )
    x = torch.from_numpy(np.load(fixtures / "efficientvit_seg_b1_cityscapes_128x256.input.npy"))
    path = tmp_path / "seg_b1.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)

    graph = onnx.load(str(path)).graph
    tiny = [
        t.name
        for t in graph.initializer
        if np.prod(t.dims) == 1 and 0 < abs(float(numpy_helper.to_array(t).reshape(-1)[0])) < 1e-12
    ]
    assert tiny, "LiteMLA's eps (1e-15) was optimised out of the ONNX graph"

    _need("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert not np.isnan(got).any()
    official = np.load(fixtures / "efficientvit_seg_b1_cityscapes_128x256.output.npy")
    assert float(np.abs(got - official).max()) <= 1e-5 * max(1.0, float(np.abs(official).max()))


@pytest.mark.slow
def test_onnx_dynamo_export_dynamic_hw(seg_b0: torch.nn.Module, tmp_path: Path) -> None:
    _need("onnxscript")
    _need("onnxruntime")
    import onnxruntime as ort

    path = tmp_path / "seg_b0_dynamic.onnx"
    dims = {2: 32 * Dim("h32", min=2, max=64), 3: 32 * Dim("w32", min=2, max=64)}
    torch.onnx.export(
        seg_b0, (torch.randn(1, 3, 128, 256),), str(path), dynamo=True, dynamic_shapes={"x": dims}
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (1, 3, 256, 384)]:
        xi = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        (got,) = session.run(None, {session.get_inputs()[0].name: xi.numpy()})
        with torch.no_grad():
            want = seg_b0(xi)
        assert float(np.abs(got - want.numpy()).max()) <= _tol(want)
