"""int8 calibration one image at a time gives exactly the ranges of today's one-shot calibration.

Issue 14: seg-B1 int8 at 512x1024 with 64 photos was OOM-killed (24 GB): both calibrators held
every image (and onnxruntime's histogram calibrators every intermediate tensor of every image).
The streamed calibrations must not change the int8 numbers: each is compared here, range by
range and bit for bit, with the one-shot calibration it replaces, on real photos and seeded
(trained-looking) weights.

TFLite's MSE pass streams too (groups of graph outputs, at most 32 images), and the accuracy
control's ranking is built on its ranges: both are checked here on the same small graph.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from evit_deploy.data import CalibrationImages
from evit_deploy.spec import GraphIO, InputSpec

SEG = "efficientvit-seg-b0-cityscapes"
SPEC = InputSpec(batch=1, height=64, width=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def seg_model(seeded_checkpoint):
    from evit_deploy import zoo

    return zoo.create_model(SEG, seeded_checkpoint("efficientvit_seg_b0_cityscapes"))


@pytest.fixture(scope="module")
def images(calib_photos) -> CalibrationImages:
    return CalibrationImages(calib_photos, SPEC, 6)


# ------------------------------------------------------------------------------ TensorRT Q/DQ (ORT)


class _ListReader:
    """Today's reader: every batch in a list, handed to quantize_static's calibrator at once."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches, self.index = batches, 0

    def get_next(self):
        if self.index == len(self.batches):
            return None
        self.index += 1
        return {"input": self.batches[self.index - 1]}

    def __len__(self) -> int:
        return len(self.batches)


@pytest.fixture(scope="module")
def seg_onnx(seg_model, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="pip install 'evit-deploy[onnx]'")
    from evit_deploy.onnx.export import export_onnx_graph
    from evit_deploy.onnx.options import OnnxOptions

    return export_onnx_graph(seg_model, GraphIO.image(SPEC), OnnxOptions(), tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("method,budget", [("percentile", None), ("percentile", 2**20), ("minmax", None),
                                           ("entropy", 2**20)], ids=["percentile", "percentile-1MiB-runs",
                                                                     "minmax", "entropy-1MiB-runs"])
def test_streamed_qdq_ranges_equal_the_one_shot_ones(seg_onnx, images, tmp_path, method, budget):
    """``budget``: a histogram-pass run outputs at most that many bytes (1 MiB: dozens of runs per image)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import load_tensors_data

    from evit_deploy.onnx.calibrate import METHODS, stream_ranges

    streamed = stream_ranges(copy.deepcopy(seg_onnx), images, input_name="input", op_types=["Conv"], method=method,
                             **({"budget": budget} if budget else {}))
    cache = tmp_path / "one-shot.json"
    quantize_static(copy.deepcopy(seg_onnx), str(tmp_path / "q.onnx"), _ListReader(list(images)),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True}, calibration_cache_path=str(cache))
    one_shot = load_tensors_data(cache)
    assert streamed.calibration_method == one_shot.calibration_method
    assert set(streamed.data) == set(one_shot.data) and len(streamed.data) > 50
    for name, expected in one_shot.data.items():
        got = streamed.data[name]
        assert np.array_equal(got.range_value, expected.range_value), (name, got.range_value, expected.range_value)


def test_mse_qdq_ranges_clip_inside_the_extremes_and_the_hardswish_inputs_most(seg_onnx, images):
    """ORT's ``mse`` ranges (``calib_method: auto`` for segmentation): each holds 0, lies inside the
    tensor's min/max, and clips; a conv output that only a HardSwish reads gives up more of its
    negative tail (which HardSwish maps to about 0) than the tensors read as they are."""
    from evit_deploy.activation_ranges import HARDSWISH
    from evit_deploy.onnx.calibrate import read_through, stream_ranges

    extremes = stream_ranges(copy.deepcopy(seg_onnx), images, input_name="input", op_types=["Conv"], method="minmax")
    mse = stream_ranges(copy.deepcopy(seg_onnx), images, input_name="input", op_types=["Conv"], method="mse",
                        budget=2**20)
    assert set(mse.data) == set(extremes.data) and len(mse.data) > 50
    kept_low: dict[bool, list[float]] = {True: [], False: []}
    clipped_high = 0
    for name, extreme in extremes.data.items():
        (low, high), (lowest, highest) = mse.data[name].range_value, extreme.range_value
        assert lowest - 1e-6 <= low <= 0 <= high <= highest + 1e-6, name
        clipped_high += high < highest
        if lowest < 0:
            kept_low[read_through(seg_onnx, name) is HARDSWISH].append(float(low / lowest))
    assert clipped_high > len(mse.data) // 2  # most ranges clip
    assert len(kept_low[True]) > 10 and len(kept_low[False]) > 10
    assert np.median(kept_low[True]) < np.median(kept_low[False])


def test_a_calibration_that_cannot_fit_is_refused_before_it_starts(seg_onnx, images, monkeypatch, cli, tmp_path,
                                                                   calib_photos):
    """``MemAvailable`` read as 1 MiB: the export stops at once with one line and writes nothing.
    (The check that one inference fits, made before building, is passed by here: it would refuse first.)"""
    from evit_deploy import memory
    from evit_deploy.pipeline import export

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    monkeypatch.setattr(export, "check_card_fits", lambda card, shape: None)
    out = tmp_path / "out"
    result = cli("export", SEG, "--target", "trt", "--plan-only", "--precision", "int8", "--resolution", "64x128",
                 "--calib", calib_photos, "--calib-samples", 3, "--out", out)
    assert result.code == 2, result
    (line,) = result.error_lines
    assert line.startswith("error: int8 calibration (percentile) of this graph needs about ") and \
        "iB of memory but 1 MiB are available; calibrate at a lower --resolution" in line, line
    assert not list(out.glob("*.onnx"))


def test_required_bytes_grows_with_the_pixels(seg_model, tmp_path):
    from evit_deploy.onnx.calibrate import required_bytes
    from evit_deploy.onnx.export import export_onnx_graph
    from evit_deploy.onnx.options import OnnxOptions

    small = export_onnx_graph(seg_model, GraphIO.image(SPEC), OnnxOptions(), tmp_path)
    large = export_onnx_graph(seg_model, GraphIO.image(SPEC.with_resolution(128, 256)), OnnxOptions(), tmp_path)
    need = {m: (required_bytes(small, ["Conv"], m), required_bytes(large, ["Conv"], m)) for m in ("percentile", "minmax")}
    weights = sum(int(np.prod(i.dims)) * 4 for i in small.graph.initializer)
    for lo, hi in need.values():  # activations scale with the pixels (x4), the weights do not
        assert (hi - 2 * weights) == pytest.approx(4 * (lo - 2 * weights), rel=0.02)
    assert need["percentile"][1] > need["minmax"][1]


# ------------------------------------------------------------------------------ TFLite (ai-edge-quantizer)


@pytest.fixture(scope="module")
def seg_tflite(seg_model):
    pytest.importorskip("ai_edge_quantizer", reason="pip install 'evit-deploy[tflite]'")
    from evit_deploy.tflite.convert import convert_fp32
    from evit_deploy.tflite.options import TfliteOptions
    from evit_deploy.tflite.quantize import int8_plan

    options = TfliteOptions()
    content, _ = convert_fp32(seg_model, GraphIO.image(SPEC), options)
    return options, int8_plan(content, options), content


@pytest.mark.parametrize("mode", ["min_max", "moving_average"])
def test_streamed_tflite_int8_equals_the_one_shot_one(seg_tflite, images, mode):
    """The profiler-based calibrator fed image by image gives the int8 model, byte for byte, that the
    default (all tensors kept) calibrator gave with every image in one call."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer, recipe_manager
    from ai_edge_quantizer.utils.qsv_utils import min_max_update

    from evit_deploy.tflite.export import _Batches
    from evit_deploy.tflite.quantize import _calibrate

    options, plan, _ = seg_tflite
    batches = _Batches(images, 1, nhwc=options.layout == "nhwc")  # what the export feeds its calibration
    signature = Interpreter(model_content=plan.marked).get_signature_list()
    (key,) = list(signature)[:1]
    (name,) = signature[key]["inputs"][:1]
    streamed = _calibrate(plan.marked, plan.recipe, key, name, batches, mode)
    # the calibration it replaces: the default calibrator, every image in one list, one call
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(plan.recipe)
    update = {"qsv_update_func": min_max_update} if mode == "min_max" else {}
    one_shot = calibrator.Calibrator(plan.marked, num_threads=2, **update)
    one_shot.calibrate({key: [{name: x} for x in batches]}, manager)
    expected = one_shot.get_model_qsvs()
    assert set(expected) <= set(streamed) and len(expected) > 50
    for tensor, qsv in expected.items():
        for field in ("min", "max"):
            got = streamed[tensor][field]
            assert got.dtype == qsv[field].dtype and np.array_equal(got, qsv[field]), (tensor, field, got, qsv[field])

    def quantized(ranges):
        return bytes(quantizer.Quantizer(bytearray(plan.marked), plan.recipe)
                     .quantize(ranges, enable_progress_bar=False, enable_progress_report=False).quantized_model)

    assert quantized(streamed) == quantized(expected)


def test_mse_ranges_in_output_groups_are_those_of_every_tensor_kept(seg_tflite, images, monkeypatch):
    """The histogram pass run in groups of graph outputs (here many tiny groups) chooses the ranges
    the preserved tensors of whole inferences give, judged after the HardSwish that reads most of
    them; each narrowed range lies inside its min/max."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from test_activation_ranges import error

    from evit_deploy.activation_ranges import BINS, HARDSWISH, Histogram
    from evit_deploy.tflite import ranges as mse
    from evit_deploy.tflite.export import _Batches

    options, plan, _ = seg_tflite
    batches = _Batches(images, 1, nhwc=options.layout == "nhwc")
    extremes = plan.calibrate(batches, "min_max")
    monkeypatch.setattr(mse, "GROUP_BYTES", 64 * 2**10)
    assert len(mse._groups(list(range(len(plan.graph.tensors))),
                           dict.fromkeys(range(len(plan.graph.tensors)), 2**14))) > 10
    narrowed = mse.mse_ranges(plan.marked, extremes, batches)
    whole = Interpreter(model_content=plan.marked, experimental_preserve_all_tensors=True,
                        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    whole.allocate_tensors()
    index = {d["name"]: d["index"] for d in whole.get_tensor_details()}
    histograms = {name: Histogram(float(r["min"].min()), float(r["max"].max())) for name, r in extremes.items()
                  if name in index and index[name] in plan.graph.producer and r["max"].max() > r["min"].min()}
    for image in batches:
        whole.set_tensor(whole.get_input_details()[0]["index"], image)
        whole.invoke()
        for name, histogram in histograms.items():
            histogram.add(whole.get_tensor(index[name]))
    assert len(histograms) > 50
    clipped = 0
    before_hardswish = []
    for name, histogram in histograms.items():
        width = (histogram.high - histogram.low) / BINS
        got = (float(narrowed[name]["min"].min()), float(narrowed[name]["max"].max()))
        then = mse.read_through(plan.graph, index[name])
        # XNNPACK and the reference kernels may round a value into the next bin, and the error is flat
        # near its least: the range chosen is judged by its error on the preserved tensors' counts
        best = error(histogram.counts, histogram.low, histogram.high, *histogram.mse_range(then=then), 256, then)
        assert error(histogram.counts, histogram.low, histogram.high, *got, 256, then) <= 1.01 * best + 1e-12, name
        assert min(histogram.low, 0) - 1e-6 <= got[0] <= 0 <= got[1] <= max(histogram.high, 0) + 1e-6
        clipped += got[1] < histogram.high - width or got[0] > histogram.low + width
        if then is HARDSWISH and histogram.low < -3.5:
            before_hardswish.append(got[0])
    assert clipped > len(histograms) // 4
    assert len(before_hardswish) > 10 and min(before_hardswish) > -3.5  # no levels on what HardSwish zeroes


def test_the_histograms_take_at_most_32_images_spread_over_the_set(seg_tflite, images, monkeypatch):
    """64 calibration images at 1024x2048 made the MSE pass take 23 minutes: past 32 images the
    histograms run every k-th one (the extremes, from the min/max pass, still come from all)."""
    from evit_deploy.tflite import ranges as mse
    from evit_deploy.tflite.export import _Batches

    options, plan, _ = seg_tflite
    batches = list(_Batches(images, 1, nhwc=options.layout == "nhwc"))
    extremes = plan.calibrate(batches, "min_max")
    run: list[int] = []  # the image (its constant value) of every inference the pass makes
    made = mse._with_outputs

    def recording(graph, tensors):
        interpreter = made(graph, tensors)
        original = interpreter.set_tensor
        interpreter.set_tensor = lambda index, value: (run.append(int(value.flat[0])), original(index, value))[1]
        return interpreter

    monkeypatch.setattr(mse, "_with_outputs", recording)

    class Tagged:
        """``count`` images, image i filled with the value i."""

        def __init__(self, count: int) -> None:
            self.count = count

        def __len__(self) -> int:
            return self.count

        def __iter__(self):
            return (np.full_like(batches[0], i) for i in range(self.count))

    for count, taken in ((70, list(range(0, 70, 3))), (32, list(range(32))), (5, list(range(5)))):
        run.clear()
        mse.mse_ranges(plan.marked, extremes, Tagged(count))
        runs = len(run) // len(taken)
        assert runs >= 1 and run == taken * runs, count


@pytest.fixture(scope="module")
def mse_tflite(seg_tflite, images):
    """(plan, MSE ranges, the calibration batches) of the small seg-B0 graph."""
    from evit_deploy.tflite.export import _Batches

    options, plan, _ = seg_tflite
    batches = list(_Batches(images, 1, nhwc=options.layout == "nhwc"))
    return plan, plan.calibrate(batches, "mse"), batches


def test_the_control_ranks_first_the_layer_whose_rounding_alone_hurts_the_output_most(mse_tflite, seg_model):
    """The TFLite control's ranking: each layer quantised alone, the class margin it takes away
    where float's top two classes are nearly tied. A depthwise conv whose int8 output range is
    wrecked (a hundredth of its calibrated one) ranks first, more than 5x ahead of the next layer
    (6.7x here: a margin lost saturates, where noise power grew with the square of the damage)."""
    from evit_deploy.tflite import accuracy

    plan, ranges, batches = mse_tflite
    layers = accuracy.quantised_layers(plan, plan.quantize(ranges), seg_model)
    (victim,) = [layer for layer in layers if layer.name == "backbone.stages.1.op_list.0.main.depth_conv.norm"]
    wrecked = {**ranges, victim.tensor: {**ranges[victim.tensor], "min": ranges[victim.tensor]["min"] / 100,
                                         "max": ranges[victim.tensor]["max"] / 100}}
    ranking = accuracy.rank_layers(plan, wrecked, layers, batches[:2], -1, 1, lambda message: None)  # NHWC logits
    assert len(ranking) == len(layers) and all(r.score >= 0 for r in ranking)
    assert ranking[0].name == victim.name and ranking[0].score > 5 * ranking[1].score, ranking[:3]


def test_a_strided_conv_kept_float_keeps_its_pad_float(mse_tflite, seg_model):
    """litert-torch splits a strided conv's padding off as a PAD op. Left int8 under a float conv,
    it still rounded the conv's input, with a QUANTIZE, PAD, DEQUANTIZE round trip over the whole
    map: the trained instrument's 7 layers float at 512x1024 ran at 1.25x TFLite fp32 that way,
    and at 1.46x with their pads float too (agreement on unseen photos 0.9898 -> 0.9902)."""
    from evit_deploy.tflite import accuracy
    from evit_deploy.tflite.graph import QUANT_OPS, Graph, op_is_int8

    plan, ranges, _ = mse_tflite
    layers = accuracy.quantised_layers(plan, plan.quantize(ranges), seg_model)
    producer_type = {plan.graph.tensor_name(t): plan.graph.ops[i]["type"] for t, i in plan.graph.producer.items()}
    assert not [layer.name for layer in layers if producer_type[layer.tensor] in accuracy.PADDING]
    padded = {layer.name: layer for layer in layers if len(layer.own) > 1}
    assert len(padded) >= 4 and all(producer_type[t] in accuracy.PADDING for layer in padded.values()
                                    for t in layer.own[1:])
    stem = padded["backbone.input_stem.op_list.0.norm"]  # the first conv: stride 2, on the image
    graph = Graph(plan.quantize(ranges, list(stem.selects)))
    (conv,) = [op for op in graph.ops if op["outputs"] and graph.tensor_name(op["outputs"][0]) == stem.tensor]
    chain, index = [], conv["index"]
    while index is not None:  # back from the conv to the image: float ops only, nothing rounded
        op = graph.ops[index]
        chain.append((op["type"], op_is_int8(graph, op)))
        index = graph.producer.get(op["inputs"][0])
    assert [t for t, _ in chain] == ["CONV_2D", "PAD"] and not any(int8 for _, int8 in chain), chain
    assert not any(t in QUANT_OPS for t, _ in chain)


def test_a_tflite_calibration_that_cannot_fit_is_refused_before_it_starts(seg_tflite, images, monkeypatch):
    from evit_deploy import memory
    from evit_deploy.errors import UsageError
    from evit_deploy.tflite.export import _Batches
    from evit_deploy.tflite.quantize import quantize_int8

    options, _, content = seg_tflite
    options = options.model_copy(update={"int8_ranges": "mse"})  # what auto is for a segmenter
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    started = []
    batches = _Batches(images, 1, nhwc=options.layout == "nhwc")
    with pytest.raises(UsageError, match=r"^int8 calibration of this TFLite graph needs about .*iB of memory but "
                                         r"1 MiB are available; calibrate at a lower --resolution, use "
                                         r"--int8-ranges min_max \(its histogram pass needs more\), or free memory$"):
        quantize_int8(content, options, batches, started.append)
    assert not any("calibrating" in m for m in started)


def test_tflite_batches_wrap_around_like_before(images):
    """Batch 4 over 6 images: the last group completes itself from the first images, as the list
    version did (``singles[(start + b) % n]``)."""
    from evit_deploy.tflite.export import _Batches

    singles = list(images)
    groups = list(_Batches(images, 4, nhwc=False))
    assert len(groups) == len(_Batches(images, 4, nhwc=False)) == 2
    order = [0, 1, 2, 3, 4, 5, 0, 1]
    assert np.array_equal(np.concatenate(groups), np.concatenate([singles[i] for i in order]))


def test_images_are_read_lazily(images):
    """Iterating twice reads the files twice: nothing is held between passes."""
    first, second = next(iter(images)), next(iter(images))
    assert np.array_equal(first, second) and first is not second and len(images) == 6
    assert isinstance(images.source, Path)
