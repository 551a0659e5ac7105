"""Build plans and trtexec commands for every TensorRT major, and the option rules (no model export)."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from evit_deploy.configs import Recipe
from evit_deploy.errors import UsageError
from evit_deploy.spec import DynamicDim, GraphInput, GraphIO, InputSpec
from evit_deploy.trt.options import (
    Profile,
    TrtOptions,
    check_dims,
    check_options,
    parse_shape,
    resolve_profile,
    resolve_profiles,
)
from evit_deploy.trt.plan import (
    BuildPlan,
    Island,
    expectations,
    script,
    trtexec_argv,
    weak_typing_constraints,
)

ISLAND = Island(kind="attention", nodes=["node_view", "node_relu", "node_matmul", "node_matmul_1", "node_add_4",
                                         "node_div"], reason="LiteMLA", eps=1e-15)
RESIZE = Island(kind="resize", nodes=["node_upsample"], reason="bicubic Resize")
OPS = {"node_view": "Reshape", "node_relu": "Relu", "node_matmul": "MatMul", "node_matmul_1": "MatMul",
       "node_add_4": "Add", "node_div": "Div", "node_upsample": "Resize", "node_Conv_1": "Conv"}


def plan(**changes) -> BuildPlan:
    expected = expectations([ISLAND, RESIZE], OPS)
    base = {"model": "m", "task": "segmentation", "precision": "fp16", "trt_version": "10", "trt_major": 10, "typing": "strong",
                "onnx": "m.onnx", "onnx_sha256": "0" * 64, "engine": "m.engine", "layer_info": "m.layers.json",
                "static_shape": [1, 3, 512, 1024], "islands": [ISLAND, RESIZE], "expected_layers": expected}
    base.update(changes)
    result = BuildPlan(**base)
    if result.typing == "weak":
        result.layer_precisions, result.layer_output_types = weak_typing_constraints(expected, {})
    return result


def test_trt10_is_strongly_typed_and_carries_no_precision_flags():
    argv = trtexec_argv(plan())
    assert argv[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--stronglyTyped" in argv
    assert not [a for a in argv if a.startswith(("--fp16", "--int8", "--best", "--precisionConstraints",
                                                 "--layerPrecisions"))]
    assert "--profilingVerbosity=detailed" in argv and "--exportLayerInfo=m.layers.json" in argv
    assert argv[-1] == "--skipInference"


def test_trt11_is_plain():
    argv = trtexec_argv(plan(trt_version="11", trt_major=11))
    assert "--stronglyTyped" not in argv  # strong typing is TensorRT 11's only mode
    assert not [a for a in argv if a.startswith(("--fp16", "--int8", "--precisionConstraints", "--layer"))]


@pytest.mark.parametrize("version,major,last", [("8.5", 8, "--buildOnly"), ("8.6", 8, "--skipInference"),
                                                ("10", 10, "--skipInference")])
def test_weak_typing_names_exactly_the_island_layers(version, major, last):
    argv = trtexec_argv(plan(trt_version=version, trt_major=major, typing="weak"))
    assert "--fp16" in argv and "--precisionConstraints=obey" in argv and "--stronglyTyped" not in argv
    spec = next(a for a in argv if a.startswith("--layerPrecisions="))
    named = dict(item.split(":") for item in spec.split("=", 1)[1].split(","))
    assert named == {n: "fp32" for n in ISLAND.nodes + RESIZE.nodes}
    outputs = next(a for a in argv if a.startswith("--layerOutputTypes="))
    assert set(dict(i.split(":") for i in outputs.split("=", 1)[1].split(","))) == set(named)
    assert argv[-1] == last


def test_int8_weak_typing_enables_int8_and_fp16():
    argv = trtexec_argv(plan(trt_version="8.6", trt_major=8, typing="weak", precision="int8"))
    assert "--int8" in argv and "--fp16" in argv


def test_shapes_workspace_dla_cache_and_level():
    p = plan(static_shape=None, profile={"min": [1, 3, 256, 512], "opt": [1, 3, 512, 1024], "max": [4, 3, 1024, 2048]},
             workspace_gib=2, dla_core=0, builder_optimization_level=3, timing_cache="t.cache")
    argv = trtexec_argv(p)
    assert {"--minShapes=input:1x3x256x512", "--optShapes=input:1x3x512x1024", "--maxShapes=input:4x3x1024x2048",
            "--memPoolSize=workspace:2048", "--useDLACore=0", "--allowGPUFallback", "--builderOptimizationLevel=3",
            "--timingCacheFile=t.cache"} <= set(argv)


def test_a_host_timing_cache_path_never_reaches_the_device(tmp_path):
    """Issue 20 item 8: plans written before held the host's absolute path; the device has only the name."""
    old = plan(timing_cache="/home/me/caches/orin.timing")
    assert "--timingCacheFile=orin.timing" in trtexec_argv(old)
    assert old.timing_cache_path(tmp_path) == tmp_path / "orin.timing"
    assert plan().timing_cache_path(tmp_path) is None


def test_fp32_turns_tf32_off():
    assert "--noTF32" in trtexec_argv(plan(precision="fp32", tf32=False, islands=[], expected_layers=[]))


def test_script_builds_then_checks(tmp_path):
    text = script(plan(), "m.trt-plan.json")
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert '"$TRTEXEC"' in text and "--stronglyTyped" in text
    assert "python3 -m evit_deploy.trt.inspect m.trt-plan.json m.layers.json" in text


def test_plan_round_trips(tmp_path):
    p = plan(trtexec=trtexec_argv(plan()))
    p.save(tmp_path / "m.trt-plan.json")
    assert BuildPlan.load(tmp_path / "m.trt-plan.json") == p


def test_constant_nodes_get_no_layer_spec():
    expected = expectations([Island(kind="attention", nodes=["c", "node_div"], reason="r")],
                            {"c": "Constant", "node_div": "Div"})
    assert [e.node for e in expected] == ["node_div"] and expected[0].key


# ----------------------------------------------------------------------------------- options


def recipe(**kw) -> Recipe:
    return Recipe.model_validate({"target": "trt", "precision": kw.pop("precision", "fp16"),
                                  "dynamic": kw.pop("dynamic", False), "options": kw})


@pytest.mark.parametrize("given,expected", [("10", "10"), (10, "10"), ("10.3.0", "10"), (8.6, "8.6"),
                                            ("8.5.2.2", "8.5"), ("11", "11")])
def test_trt_versions(given, expected):
    assert TrtOptions(trt_version=given).trt_version == expected


def test_typing_defaults_follow_the_major():
    assert TrtOptions(trt_version="8.5").typing_mode == "weak"
    assert TrtOptions(trt_version="10").typing_mode == "strong"
    assert TrtOptions(trt_version="11").typing_mode == "strong"


@pytest.mark.parametrize("options,message", [
    ({"trt_version": "11", "typing": "weak"}, "TensorRT 11 removed weak typing"),
    ({"trt_version": "8.6", "typing": "strong"}, "no strongly typed networks"),
    ({"trt_version": "11", "dla_core": 0}, "DLA exists only on Jetson"),
    ({"dla_core": 0}, "DLA exists only on Jetson"),
    ({"dla_core": 0, "platform": "datacenter"}, "DLA exists only on Jetson"),
    ({"trt_version": "8.5", "builder_opt_level": 3}, "arrived in TensorRT 8.6"),
    ({"min_shape": "512x1024"}, "need a dynamic ONNX: add --dynamic"),
])
def test_option_rules(options, message):
    with pytest.raises(UsageError, match=message):
        check_options(TrtOptions(**options), recipe(**options))


def test_dla_on_tensorrt_11_is_allowed_on_jetson():
    """Issue 20 item 5: TensorRT 11.4.1 brings DLA back on Jetson AGX Orin (JetPack 7.2.2+, strongly typed);
    the installed release is checked when the engine is built."""
    options = {"trt_version": "11", "dla_core": 0, "platform": "jetson"}
    check_options(TrtOptions(**options), recipe(**options))


def test_dla_needs_reduced_precision():
    options = {"dla_core": 0, "platform": "jetson"}
    with pytest.raises(UsageError, match="DLA runs fp16 or int8"):
        check_options(TrtOptions(**options), recipe(precision="fp32", **options))


@pytest.mark.parametrize("shapes", [{"min_shape": "1024x2048", "max_shape": "512x1024"},
                                    {"min_shape": "512x1024", "opt_shape": "1024x1024", "max_shape": "1024x512"},
                                    {"min_batch": 8, "max_batch": 2}])
def test_min_above_max_is_refused(shapes):
    with pytest.raises(UsageError, match="larger than"):
        check_options(TrtOptions(**shapes), recipe(dynamic=True, **shapes))


@pytest.mark.parametrize("text", ["512x1000", "axb", "1x2x3x4x5", "4x1x512x512"])
def test_bad_shapes(text):
    with pytest.raises(UsageError):
        parse_shape(text, "--max-shape")


def spec(h=512, w=1024, batch=1, dynamic=True) -> InputSpec:
    return InputSpec(batch=batch, height=h, width=w, mean=(0.5,) * 3, std=(0.5,) * 3, dynamic=dynamic)


def test_profile_defaults_to_the_export_shape():
    profile = resolve_profile(TrtOptions(max_shape="1024x2048"), spec())
    assert profile.min == (1, 3, 512, 1024) and profile.opt == (1, 3, 512, 1024) and profile.max == (1, 3, 1024, 2048)
    assert resolve_profile(TrtOptions(), spec(dynamic=False)) is None


def test_batch_profile():
    profile = resolve_profile(TrtOptions(min_batch=1, opt_batch=32, max_batch=64), spec(224, 224))
    assert profile.min == (1, 3, 224, 224) and profile.opt == (32, 3, 224, 224) and profile.max == (64, 3, 224, 224)
    assert resolve_profile(TrtOptions(max_shape="8x1024x2048"), spec()).max == (8, 3, 1024, 2048)


def test_export_shape_must_lie_inside_the_profile():
    with pytest.raises(UsageError, match="outside the profile"):
        resolve_profile(TrtOptions(min_shape="256x512", opt_shape="256x512", max_shape="384x768"), spec())


# ------------------------------------------------------------------ several inputs (SAM's decoder)


def decoder_io(prompts: int = 2, points: int = 2) -> GraphIO:
    """The SAM decoder's inputs as a dynamic export gives them: one image's embeddings, B x N points."""
    b, n = DynamicDim(0, "num_prompts", 1, 1024), DynamicDim(1, "num_points", 1, 64)
    return GraphIO((GraphInput("image_embeddings", (1, 256, 64, 64)),
                    GraphInput("point_coords", (prompts, points, 2), dynamic=(b, n)),
                    GraphInput("point_labels", (prompts, points), dynamic=(b, n))), ("masks", "iou_predictions"))


def test_each_dynamic_input_gets_its_profile_from_its_dims():
    options = TrtOptions(dim_profile="num_prompts=1:16:64,num_points=1:4:16")
    profiles = resolve_profiles(options, spec(), decoder_io(), image_graph=False)
    assert set(profiles) == {"point_coords", "point_labels"}  # the embeddings are static: no profile
    assert profiles["point_coords"] == Profile((1, 1, 2), (16, 4, 2), (64, 16, 2))
    assert profiles["point_labels"] == Profile((1, 1), (16, 4), (64, 16))


def test_unnamed_dims_default_to_their_least_size_and_the_export_size():
    profiles = resolve_profiles(TrtOptions(dim_profile="num_points=2:3:5"), spec(), decoder_io(3, 4), False)
    assert profiles["point_labels"] == Profile((1, 2), (3, 3), (3, 5))


def test_trtexec_lists_every_dynamic_input():
    profiles = resolve_profiles(TrtOptions(dim_profile=["num_prompts=1:16:64", "num_points=1:4:16"]), spec(),
                                decoder_io(), False)
    argv = trtexec_argv(plan(profiles={name: p.to_dict() for name, p in profiles.items()}, static_shape=None,
                             input_name="image_embeddings"))
    assert "--minShapes=point_coords:1x1x2,point_labels:1x1" in argv
    assert "--optShapes=point_coords:16x4x2,point_labels:16x4" in argv
    assert "--maxShapes=point_coords:64x16x2,point_labels:64x16" in argv


def test_a_schema_1_plan_still_loads(tmp_path):
    old = plan().model_dump(mode="json")
    old.pop("profiles")
    old.update(schema_version=1, profile={"min": [1, 3, 256, 512], "opt": [1, 3, 512, 1024], "max": [1, 3, 512, 1024]},
               static_shape=None)
    (tmp_path / "old.trt-plan.json").write_text(json.dumps(old))
    loaded = BuildPlan.load(tmp_path / "old.trt-plan.json")
    assert loaded.profiles == {"input": old["profile"]} and loaded.profile == old["profile"]
    assert "--minShapes=input:1x3x256x512" in trtexec_argv(loaded)


def test_an_encoder_with_a_fixed_size_takes_only_a_batch_profile():
    """SAM's encoder: 512x512 fixed, batch dynamic; a --max-shape that moves the size is refused."""
    io = GraphIO((GraphInput("input_image", (2, 3, 512, 512), dynamic=(DynamicDim(0, "batch", 1, 256),)),),
                 ("image_embeddings",))
    profiles = resolve_profiles(TrtOptions(max_batch=8), spec(512, 512), io, image_graph=True)
    assert profiles["input_image"] == Profile((1, 3, 512, 512), (1, 3, 512, 512), (8, 3, 512, 512))
    with pytest.raises(UsageError, match="changes the height of input_image, which is fixed at 512"):
        resolve_profiles(TrtOptions(max_shape="1024x1024"), spec(512, 512), io, image_graph=True)


@pytest.mark.parametrize("dims, message", [
    ({"num_prompt": (1, 2, 4)}, "--dim-profile num_prompt: no dynamic dim of that name .* their dims: num_points, num_prompts"),
    ({"num_prompts": (1, 2, 2048)}, r"--dim-profile num_prompts=1:..:2048 leaves the range the model takes \(1..1024\)"),
])
def test_dim_profiles_must_name_the_graphs_dims(dims, message):
    with pytest.raises(UsageError, match=message):
        check_dims(TrtOptions(dim_profile=dims), {"num_prompts": (1, 1024), "num_points": (1, 64)})
    with pytest.raises(UsageError, match="no dynamic dim of that name .* their dims: none besides the image's"):
        check_dims(TrtOptions(dim_profile={"num_prompts": (1, 2, 4)}), {})


@pytest.mark.parametrize("text", ["num_prompts=1:16", "num_prompts=16:1:64", "=1:2:3", "num_prompts=0:1:2"])
def test_bad_dim_profiles(text):
    with pytest.raises(ValidationError, match="dim_profile"):
        TrtOptions(dim_profile=text)


def test_a_dim_profile_needs_a_dynamic_export():
    with pytest.raises(UsageError, match="need a dynamic ONNX"):
        check_options(TrtOptions(dim_profile="num_prompts=1:2:4"), recipe(dynamic=False))
