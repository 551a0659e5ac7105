"""A model that deploys as several graphs: seg-B0 split into its backbone ("encoder") and its seg
head ("decoder"), exported, verified and profiled per graph on every target that runs here, with
one bundle manifest naming both."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from evit_deploy import api, zoo
from evit_deploy.bundle import load_bundle
from evit_deploy.errors import UsageError
from evit_deploy.manifest import load_manifest
from evit_deploy.nn import EfficientViTSeg
from evit_deploy.nn.builders import efficientvit_seg_b0
from evit_deploy.parity import BundleReport

MODEL = "efficientvit-test-two-graph"
RESOLUTION = (64, 128)


class _Encoder(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        return features["stage2"], features["stage3"], features["stage4"]


class _Decoder(torch.nn.Module):
    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, stage2: torch.Tensor, stage3: torch.Tensor, stage4: torch.Tensor) -> torch.Tensor:
        return self.head({"stage2": stage2, "stage3": stage3, "stage4": stage4})["segout"]


class TwoGraphSeg(EfficientViTSeg):
    """seg-B0 with the official keys, deployable as two graphs."""

    def graph(self, name: str) -> torch.nn.Module:
        return {"encoder": _Encoder(self.backbone), "decoder": _Decoder(self.head)}[name]


def _two_graph_builder(dataset: str = "cityscapes") -> TwoGraphSeg:
    seg = efficientvit_seg_b0(dataset=dataset)
    return TwoGraphSeg(seg.backbone, seg.head)


def _feature(name: str, channels: int, stride: int) -> dict[str, Any]:
    return {"name": name, "shape": ["batch", channels, RESOLUTION[0] // stride, RESOLUTION[1] // stride]}


@pytest.fixture(scope="module", autouse=True)
def two_graph_card(registered_model: Any) -> Iterator[zoo.ModelCard]:
    base = zoo.get_card("efficientvit-seg-b0-cityscapes").to_dict()
    base.pop("computed")
    features = [_feature("stage2", 32, 8), _feature("stage3", 64, 16), _feature("stage4", 128, 32)]
    card = zoo.ModelCard.model_validate({**base, "name": MODEL, "builder": "test_two_graph_seg", "graphs": [
        {"name": "encoder", "inputs": [{"name": "input", "shape": ["batch", 3, *RESOLUTION], "feed": "image"}],
         "outputs": features, "verify": "tensor"},
        {"name": "decoder", "inputs": [{**f, "feed": f"encoder.{f['name']}"} for f in features],
         "outputs": [{"name": "logits", "shape": ["batch", 19, 8, 16]}], "verify": "logits"},
    ]})
    with registered_model("test_two_graph_seg", _two_graph_builder, card):
        yield card


@pytest.fixture(scope="module")
def weights(seeded_checkpoint) -> Path:
    return seeded_checkpoint("efficientvit_seg_b0_cityscapes")


TARGETS = [("onnx", {}), ("tflite", {}), ("coreml", {}), ("trt", {"options": {"plan_only": True}})]


@pytest.mark.parametrize(("target", "extra"), TARGETS, ids=[t for t, _ in TARGETS])
def test_two_graphs_export_verify_and_profile_per_graph(target: str, extra: dict[str, Any], weights: Path,
                                                        tmp_path: Path) -> None:
    result = api.export(MODEL, target=target, weights=weights, out=tmp_path, resolution=RESOLUTION, **extra)
    assert result.artifact == tmp_path / f"{MODEL}.evit.json" and result.bundle is not None
    assert set(result.graphs) == {"encoder", "decoder"}
    bundle, artifacts = load_bundle(result.artifact)  # every graph complete, hashes as exported
    assert set(bundle.graphs) == {"encoder", "decoder"} and bundle.target == target
    encoder, decoder = (load_manifest(artifacts[g]) for g in ("encoder", "decoder"))
    assert encoder.graph == "encoder" and encoder.bundle == result.artifact.name
    assert [t.name for t in encoder.outputs] == ["stage2", "stage3", "stage4"]
    assert [t.name for t in decoder.inputs] == ["stage2", "stage3", "stage4"]
    assert artifacts["encoder"].name.startswith(f"{MODEL}.encoder.")

    report = api.verify(result.artifact, samples=2)
    assert isinstance(report, BundleReport) and set(report.graphs) == {"encoder", "decoder"}
    assert report.passed, report.to_dict()["failed"]
    assert report.graphs["encoder"].task == "tensor" and not report.graphs["encoder"].task_metrics
    assert report.graphs["decoder"].task_metrics["pixel_agreement"] >= 0.999
    assert all(r.outputs[name].max_rel < 1e-4 for r in report.graphs.values() for name in r.outputs)

    if target == "coreml":  # latency needs the Core ML runtime; the MIL interpreter only checks
        with pytest.raises(UsageError, match="Core ML latency needs macOS"):
            api.profile(result.artifact, warmup=0, iters=1)
        return
    timings = api.profile(result.artifact, warmup=0, iters=2)
    assert set(timings) == {"encoder", "decoder"}
    assert timings["decoder"].input_shape  # each graph timed at its own input


def test_one_graph_alone_and_the_cli(cli, weights: Path, tmp_path: Path) -> None:
    done = cli("export", MODEL, "--target", "onnx", "--weights", weights, "--resolution", "64x128",
               "--out", tmp_path, "--graph", "encoder", "--json")
    assert done.code == 0, done
    data = json.loads(done.stdout)
    assert set(data["graphs"]) == {"encoder"} and set(data["bundle"]["graphs"]) == {"encoder"}
    verified = cli("verify", tmp_path / f"{MODEL}.evit.json", "--samples", "1", "--json", "-")
    assert verified.code == 0, verified
    assert json.loads(verified.stdout)["graphs"]["encoder"]["passed"] is True
    refused = cli("export", MODEL, "--graph", "neck", "--out", tmp_path / "x")
    assert refused.code == 2 and "has no graph 'neck'; its graphs: encoder, decoder" in refused.error_lines[0]
    assert not (tmp_path / "x").exists()


def test_int8_needs_image_graphs(tmp_path: Path, calib_photos: Path) -> None:
    with pytest.raises(UsageError, match="graph\\(s\\) decoder of efficientvit-test-two-graph take other inputs"):
        api.export(MODEL, target="tflite", precision="int8", calib=calib_photos, calib_samples=2,
                   out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_bundle_whose_graph_was_swapped_is_refused(weights: Path, tmp_path: Path) -> None:
    first = api.export(MODEL, target="onnx", weights=weights, out=tmp_path / "a", resolution=RESOLUTION)
    api.export(MODEL, target="onnx", out=tmp_path / "b", resolution=RESOLUTION, seed=5)
    for suffix in (".encoder.onnx", ".encoder.evit.json"):
        (tmp_path / "b" / f"{MODEL}{suffix}").replace(tmp_path / "a" / f"{MODEL}{suffix}")
    with pytest.raises(UsageError, match="graph 'encoder' .* is not the one exported with this bundle"):
        api.verify(first.artifact)
