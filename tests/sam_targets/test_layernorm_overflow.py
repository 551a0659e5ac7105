"""Why SAM's encoder keeps its LayerNorm2d in fp32 under fp16 (official issue #142, #113), shown on
weights that make its inputs loud: the neck's last conv (what feeds the LayerNorm2d) scaled by 8.

A LayerNorm divides any common scale out, so the model computes the same function in fp32 (up to
eps / variance, < 1e-7 here); but the squared deviations it averages now pass fp16's 65504 while
the inputs themselves stay well inside it. The typed fp16 graph with the ``layernorm`` island
keeps the masks; without it (and with no islands at all) they break, and TensorRT's export
refuses such a graph at its overflow check."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from evit_deploy import api
from evit_deploy.errors import CheckFailed
from evit_deploy.graph import select_islands
from evit_deploy.trt.typed import emulate_fp16, to_fp16

from .conftest import L0, SIZE
from .masks import encoder_agreement

FEEDS_NORM = "image_encoder.neck.output_ops.0.op_list.0.conv"
LOUD = 8.0
FP16_MAX = 65504.0


@pytest.fixture(scope="module")
def loud_weights(tmp_path_factory, sam_weights) -> Path:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(sam_weights(L0)))
    for key in (f"{FEEDS_NORM}.weight", f"{FEEDS_NORM}.bias"):
        weights[key] = weights[key] * np.float32(LOUD)
    path = tmp_path_factory.mktemp("loud") / "efficientvit_sam_l0_loud.safetensors"
    save_file(weights, str(path))
    return path


@pytest.fixture(scope="module")
def loud_model(loud_weights) -> Any:
    from evit_deploy import zoo

    return zoo.create_model(L0, loud_weights, seed=0).eval()


@pytest.fixture(scope="module")
def loud_fp32_encoder(tmp_path_factory, loud_weights) -> onnx.ModelProto:
    """The encoder as the TensorRT target exports it before typing (dynamo, opset 18)."""
    result = api.export(L0, target="onnx", precision="fp32", weights=loud_weights, graphs=["encoder"],
                        out=tmp_path_factory.mktemp("loud-onnx"), options={"opset": 18})
    return onnx.load(str(result.graphs["encoder"].artifact))


def test_the_loud_weights_compute_the_same_function(loud_model, sam_model, reference_dir):
    x = np.load(reference_dir / "fixtures" / "sam" / "efficientvit_sam_l0.encoder.input.npy")
    seen: dict[str, torch.Tensor] = {}

    def keep_input(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen["x"] = args[0].detach()

    hook = loud_model.image_encoder.norm.register_forward_pre_hook(keep_input)
    with torch.no_grad():
        loud = loud_model.image_encoder(torch.from_numpy(x))
        plain = sam_model(L0).image_encoder(torch.from_numpy(x))
    hook.remove()
    assert float((loud - plain).abs().max() / plain.abs().max()) < 1e-5
    inputs = seen["x"]
    squares = (inputs - inputs.mean(dim=1, keepdim=True)) ** 2
    assert float(inputs.abs().max()) < FP16_MAX / 10 < FP16_MAX < float(squares.max())


def _emulated_encoder(graph: onnx.ModelProto, kinds: list[str]) -> Any:
    import onnxruntime as ort

    typed = to_fp16(graph, select_islands(graph, kinds))  # what the TensorRT target builds
    session = ort.InferenceSession(emulate_fp16(typed)[0].SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input_image": x})[0]


def test_only_the_layernorm_island_keeps_the_masks(loud_fp32_encoder, loud_model, sam_photos):
    photos = sam_photos[:1]  # the fixture photo (three photos with the islands: test_tensorrt_sam)

    def worst_iou(kinds: list[str]) -> float:
        """The worst mask IoU over the photos' prompts; 0 when the embeddings are not even finite."""
        try:
            results = encoder_agreement(_emulated_encoder(loud_fp32_encoder, kinds), loud_model, photos, SIZE[L0])
        except AssertionError:  # encoder_agreement's finiteness check
            return 0.0
        return min(r.min_iou for r in results)

    worst = {", ".join(kinds) or "none": worst_iou(kinds) for kinds in (["attention", "layernorm", "resize"],
                                                                       ["attention", "resize"], [])}
    print(f"loud LayerNorm weights, worst mask IoU by fp32 islands: {worst}")
    kept, *lost = worst.values()
    assert kept >= 0.99
    assert all(iou < 0.5 for iou in lost), worst  # visibly worse: masks lost, or no finite embeddings at all


@pytest.mark.slow
def test_tensorrt_export_refuses_fp16_without_the_layernorm_island(tmp_path, loud_weights):
    with pytest.raises(CheckFailed, match="fp16 overflow .* tensor .* \\(output of (Pow|ReduceMean|Sqrt|Div) node"):
        api.export(L0, target="trt", precision="fp16", weights=loud_weights, graphs=["encoder"], out=tmp_path,
                   options={"plan_only": True, "keep_fp32": "attention,resize"})
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.evit.json"))
