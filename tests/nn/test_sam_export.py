"""EfficientViT-SAM's graphs export with torch's dynamo ONNX exporter and run on ONNX Runtime.

The decoder keeps the prompt batch B and the point count N dynamic, matches eager PyTorch at
several (B, N) to 1e-4 relative, passes the ONNX checker and strict shape inference (also with
B and N fixed), and contains none of ``SAM_DECODER_UNFRIENDLY_OPS``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from evit_deploy.nn.sam import EfficientViTSam
from evit_deploy.nn.sam.graphs import (
    SAM_DECODER_UNFRIENDLY_OPS,
    SamDecoderGraph,
    SamEncoderGraph,
    unfriendly_ops,
)

SHAPES = [(1, 1), (1, 4), (16, 1), (16, 4), (3, 5)]  # (prompts B, points N)

_NEEDS = "pip install 'evit-deploy[onnx]'"
onnx = pytest.importorskip("onnx", reason=_NEEDS)
ort = pytest.importorskip("onnxruntime", reason=_NEEDS)
pytest.importorskip("onnxscript", reason=_NEEDS)
shape_inference = onnx.shape_inference


@pytest.fixture(scope="module")
def l0(reference_dir: Path, seeded_model: Any) -> EfficientViTSam:
    keys = reference_dir / "state_dict_keys/efficientvit_sam_l0.txt"
    return seeded_model("efficientvit_sam_l0", {}, 1e-6, keys, 1234)


def _export(graph: torch.nn.Module, path: Path) -> onnx.ModelProto:
    torch.onnx.export(
        graph,
        graph.example_inputs(),
        str(path),
        dynamo=True,
        dynamic_shapes=graph.dynamic_shapes(),
        input_names=list(graph.input_names),
        output_names=list(graph.output_names),
    )
    return onnx.load(str(path))


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max()) / max(1e-12, float(np.abs(want).max()))


def _matches_eager(graph: SamDecoderGraph, path: Path, shapes: list[tuple[int, int]]) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for prompts, points in shapes:
        inputs = graph.example_inputs(prompts, points)
        with torch.no_grad():
            expected = [t.numpy() for t in graph(*inputs)]
        got = session.run(list(graph.output_names), dict(zip(graph.input_names, (t.numpy() for t in inputs))))
        for name, g, e in zip(graph.output_names, got, expected):
            assert g.shape == e.shape, (name, prompts, points)
            assert _relative_error(g, e) <= 1e-4, (name, prompts, points, _relative_error(g, e))


def _fixed(model: onnx.ModelProto, **dims: int) -> onnx.ModelProto:
    """A copy with the named dynamic input dims set and every inferred shape dropped."""
    fixed = copy.deepcopy(model)
    for value in fixed.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]
    del fixed.graph.value_info[:]
    for value in fixed.graph.output:
        value.type.tensor_type.ClearField("shape")
    return fixed


def _strict_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


@pytest.fixture(scope="module")
def decoder_onnx(
    l0: EfficientViTSam, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, onnx.ModelProto]:
    path = tmp_path_factory.mktemp("sam") / "decoder.onnx"
    return path, _export(SamDecoderGraph(l0).eval(), path)


def test_decoder_contract(decoder_onnx: tuple[Path, onnx.ModelProto]) -> None:
    _, model = decoder_onnx
    inputs = {v.name: _dims(v) for v in model.graph.input}
    outputs = {v.name: _dims(v) for v in model.graph.output}
    assert inputs == {
        "image_embeddings": [1, 256, 64, 64],
        "point_coords": ["num_prompts", "num_points", 2],
        "point_labels": ["num_prompts", "num_points"],
    }
    assert outputs == {"masks": ["num_prompts", 4, 256, 256], "iou_predictions": ["num_prompts", 4]}


@pytest.mark.parametrize("prompts, points", SHAPES)
def test_decoder_onnx_matches_eager(
    l0: EfficientViTSam, decoder_onnx: tuple[Path, onnx.ModelProto], prompts: int, points: int
) -> None:
    _matches_eager(SamDecoderGraph(l0).eval(), decoder_onnx[0], [(prompts, points)])


def test_decoder_onnx_is_tensorrt_friendly(decoder_onnx: tuple[Path, onnx.ModelProto]) -> None:
    _, model = decoder_onnx
    assert unfriendly_ops(model) == []
    onnx.checker.check_model(model, full_check=True)
    inferred = _strict_inference(model)
    assert {v.name: _dims(v) for v in inferred.graph.output}["masks"] == ["num_prompts", 4, 256, 256]
    for prompts, points in SHAPES:  # every output shape follows from the inputs, data-independent
        fixed = _strict_inference(_fixed(model, num_prompts=prompts, num_points=points))
        onnx.checker.check_model(fixed, full_check=True)
        shapes = {v.name: _dims(v) for v in fixed.graph.output}
        assert shapes == {"masks": [prompts, 4, 256, 256], "iou_predictions": [prompts, 4]}


class _MetaStylePoints(torch.nn.Module):
    """Meta's predictor-side point embedding: boolean-mask assignment (``x[labels == -1] = 0``)."""

    def __init__(self) -> None:
        super().__init__()
        self.not_a_point = torch.nn.Parameter(torch.randn(1, 8))

    def forward(self, code: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        code = code.clone()
        code[labels == -1] = 0.0
        code[labels == -1] += self.not_a_point
        return code


def test_unfriendly_ops_finds_what_the_official_formulation_exports(tmp_path: Path) -> None:
    """The checker is not vacuous: boolean indexing exports as NonZero + ScatterND."""
    module = _MetaStylePoints()
    dims = {0: torch.export.Dim("b", min=1, max=64), 1: torch.export.Dim("n", min=1, max=16)}
    args = (torch.randn(3, 4, 8), torch.tensor([[1.0, 0.0, -1.0, 1.0]] * 3))
    torch.onnx.export(module, args, str(tmp_path / "meta.onnx"), dynamo=True, dynamic_shapes=(dims, dims))
    found = {entry.split()[0] for entry in unfriendly_ops(onnx.load(str(tmp_path / "meta.onnx")))}
    assert {"NonZero", "ScatterND"} <= found <= set(SAM_DECODER_UNFRIENDLY_OPS)


@pytest.mark.slow
def test_decoder_options_export(l0: EfficientViTSam, tmp_path: Path) -> None:
    """Every option at once, at every shape of SHAPES (each option alone is exported and verified in
    the default suite: tests/sam/test_deploy.py)."""
    graph = SamDecoderGraph(l0, mask_input=True, single_mask=True, embeddings_per_prompt=True).eval()
    model = _export(graph, tmp_path / "decoder.onnx")
    assert [v.name for v in model.graph.input] == list(graph.input_names)
    assert _dims(model.graph.output[0]) == ["num_prompts", 1, 256, 256]  # the single best mask
    inputs = {v.name: _dims(v) for v in model.graph.input}
    assert inputs["mask_input"] == ["num_prompts", 1, 256, 256] and inputs["has_mask_input"] == ["num_prompts"]
    assert unfriendly_ops(model) == []
    _strict_inference(model)
    _matches_eager(graph, tmp_path / "decoder.onnx", SHAPES)


@pytest.mark.slow
def test_encoder_exports_with_dynamic_batch(l0: EfficientViTSam, reference_dir: Path, tmp_path: Path) -> None:
    """The fixture photo and its mirror image in one batch: ORT matches eager and the fixture
    (LiteMLA's eps survives the exporter's optimizer; the neck's bicubic resizes export)."""
    graph = SamEncoderGraph(l0).eval()
    model = _export(graph, tmp_path / "encoder.onnx")
    assert _dims(model.graph.input[0]) == ["batch", 3, 512, 512]
    assert _dims(model.graph.output[0]) == ["batch", 256, 64, 64]
    tiny = [
        t.name
        for t in model.graph.initializer
        if np.prod(t.dims) == 1 and 0 < abs(float(onnx.numpy_helper.to_array(t).reshape(-1)[0])) < 1e-12
    ]
    assert tiny, "LiteMLA's eps (1e-15) was optimised out of the ONNX graph"
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    modes = [a.s.decode() for n in resizes for a in n.attribute if a.name == "mode"]
    assert modes == ["cubic"] * 3, modes  # the neck resizes all three scales to 64x64, bicubic
    fixtures = reference_dir / "fixtures" / "sam"
    x = np.load(fixtures / "efficientvit_sam_l0.encoder.input.npy")
    batch = np.concatenate([x, x[..., ::-1]])
    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input_image": batch})
    with torch.no_grad():
        expected = graph(torch.from_numpy(batch)).numpy()
    assert np.isfinite(got).all() and _relative_error(got, expected) <= 1e-4
    official = np.load(fixtures / "efficientvit_sam_l0.encoder.output.npy")
    assert float(np.abs(got[:1] - official).max()) <= 1e-4 * float(np.abs(official).max())


def test_decoder_written_for_opset_17_still_matches_eager(l0: EfficientViTSam, tmp_path: Path) -> None:
    """TensorRT 8.x parses opsets up to 17. The decoder exported at 18 (as evit's TensorRT export
    asks; the exporter's default opset writes GELU as opset 20's Gelu) and written back to 17
    (``onnx.opset.to_opset_17``) passes the checker at 17, holds no op newer than 17 (its GELU is
    the Erf form) and computes what eager PyTorch computes."""
    from collections import Counter

    from evit_deploy.onnx.opset import to_opset_17

    graph = SamDecoderGraph(l0).eval()
    path = tmp_path / "decoder18.onnx"
    torch.onnx.export(graph, graph.example_inputs(), str(path), dynamo=True, opset_version=18,
                      dynamic_shapes=graph.dynamic_shapes(), input_names=list(graph.input_names),
                      output_names=list(graph.output_names))
    model = onnx.load(str(path))
    changed = Counter(n.op_type for n in model.graph.node if onnx.defs.get_schema(n.op_type, 18).since_version == 18)
    written = to_opset_17(model)
    assert [o.version for o in written.opset_import if o.domain == ""] == [17] and written.ir_version == 8
    onnx.checker.check_model(_strict_inference(written), full_check=True)
    assert all(onnx.defs.get_schema(n.op_type, 17) for n in written.graph.node)
    assert "Gelu" not in {n.op_type for n in written.graph.node}
    onnx.save(written, str(path.with_name("decoder17.onnx")))
    _matches_eager(graph, path.with_name("decoder17.onnx"), [(1, 1), (3, 5), (16, 4)])
    print("opset-18 forms rewritten:", dict(changed))
