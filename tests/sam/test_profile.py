"""``evit profile`` of a SAM bundle: the encoder per image, the decoder per prompt batch (B = 1 and 16
prompts of N = 1 and 4 points) on a dynamic export, and one photo end to end (16 clicks)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evit_deploy import api
from evit_deploy.bundle import load_bundle
from evit_deploy.errors import UsageError
from evit_deploy.pipeline.bundle_profile import END_TO_END, profile_points
from evit_deploy.sam import generated_prompts, prompt_batches

pytest.importorskip("onnxruntime", reason="pip install 'evit-deploy[onnx]'")

DECODER_POINTS = [f"decoder num_prompts={b} num_points={n}" for b in (1, 16) for n in (1, 4)]


def test_a_dynamic_bundle_is_timed_per_graph_per_prompt_batch_and_end_to_end(l0_bundle: Path, cli: Any) -> None:
    results = api.profile(l0_bundle, warmup=0, iters=1, threads=1)
    assert isinstance(results, dict) and list(results) == ["encoder", *DECODER_POINTS, END_TO_END]
    assert results["encoder"].input_shape == [1, 3, 512, 512] and results["encoder"].dims == {"batch": 1}
    for key in DECODER_POINTS:
        prompts, points = (int(part.split("=")[1]) for part in key.split()[1:])
        assert results[key].dims == {"num_points": points, "num_prompts": prompts}
        assert results[key].latency_ms.p50 > 0
    whole = results[END_TO_END]
    assert whole.dims == {"images": 1, "prompts": 16} and whole.runner["decoder_runs_per_image"] == 1
    assert whole.runner["backend"] == "onnxruntime" and whole.input_shape == [1, 3, 512, 512]
    # one photo costs at least its encoder run: the figure is the chain, not a part of it
    assert whole.latency_ms.min >= 0.5 * results["encoder"].latency_ms.min

    done = cli("profile", l0_bundle, "--warmup", "0", "--iters", "1", "--json", "-")
    assert done.code == 0, done
    assert list(json.loads(done.stdout)["graphs"]) == ["encoder", *DECODER_POINTS, END_TO_END]


def test_a_fixed_size_decoder_is_timed_at_its_size_and_runs_once_per_prompt(l0_bundle: Path, tmp_path: Path,
                                                                            l0_weights: Path) -> None:
    static = api.export("efficientvit-sam-l0", target="onnx", weights=l0_weights, out=tmp_path, graphs="decoder")
    path = static.graphs["decoder"].artifact
    assert profile_points(path) == [("decoder", {})]
    assert profile_points(load_bundle(l0_bundle)[1]["decoder"])[-1] == (DECODER_POINTS[-1],
                                                                        {"num_prompts": 16, "num_points": 4})
    with pytest.raises(UsageError, match="has no dynamic num_prompts \\(dynamic: none\\); re-export it with --dynamic"):
        api.profile(path, dims={"num_prompts": 16}, warmup=0, iters=1)
    # what the end-to-end figure feeds a decoder of one prompt of two points: 16 runs per photo
    runs = prompt_batches(generated_prompts((512, 512), grid=4, boxes=0), (512, 512), fixed=(1, 2))
    assert len(runs) == 16 and all(r["point_coords"].shape == (1, 2, 2) for r in runs)


def test_eager_pytorch_times_one_graph_at_the_sizes_asked(cli: Any, l0_weights: Path, l0_bundle: Path) -> None:
    """What benchmarks/sam.py compares the artifacts with: ``--target torch --graph decoder --dims ...``."""
    done = cli("profile", "efficientvit-sam-l0", "--target", "torch", "--graph", "decoder", "--dims",
               "num_prompts=2,num_points=3", "--weights", l0_weights, "--warmup", "0", "--iters", "1", "--json", "-")
    assert done.code == 0, done
    data = json.loads(done.stdout)
    assert data["target"] == "torch" and data["dims"] == {"num_prompts": 2, "num_points": 3}
    assert data["input_shape"] == [1, 256, 64, 64]
    for args, message in (
        (["efficientvit-sam-l0", "--target", "torch", "--graph", "decoder", "--dims", "num_prompts"],
         "--dims 'num_prompts': give NAME=SIZE pairs, e.g. num_prompts=16,num_points=4"),
        (["efficientvit-sam-l0", "--target", "torch", "--graph", "encoder", "--dims", "num_prompts=2"],
         "graph encoder of efficientvit-sam-l0 has no dim num_prompts"),
        (["efficientvit-sam-l0", "--target", "torch", "--graph", "neck"], "has no graph 'neck'; its graphs: encoder"),
        ([load_bundle(l0_bundle)[1]["encoder"], "--graph", "encoder"], "--graph picks a graph of a zoo model"),
        (["efficientvit-b1-r224", "--target", "torch", "--graph", "encoder"], "efficientvit-b1-r224 is one graph"),
    ):
        refused = cli("profile", *args, "--iters", "1")
        assert refused.code == 2 and message in refused.error_lines[0], refused
