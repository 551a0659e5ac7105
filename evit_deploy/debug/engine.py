"""``debug_artifact``: the artifact and its PyTorch reference side by side, layer by layer.

Both run on the same inputs; every module the manifest's layer map names is compared by its
PyTorch path. Each layer gets two errors: the one its output carries (everything upstream
included), and the one it adds by itself, measured by running it alone on the reference's
inputs where the runtime allows that. The first carries the *where* (the first layer over the
threshold), the second the *who* (the layers to keep in float).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.debug.capture import CannotRunAlone, Capture
from evit_deploy.debug.metrics import TensorErrors, aligned
from evit_deploy.debug.reference import ReferenceTaps
from evit_deploy.debug.report import DebugReport, LayerResult
from evit_deploy.errors import UsageError
from evit_deploy.layer_map import LayerEntry, LayerMap
from evit_deploy.requests import DEBUG_THRESHOLDS, DebugRequest

if TYPE_CHECKING:  # pragma: no cover
    from evit_deploy.artifact import ArtifactHandle

THRESHOLDS = DEBUG_THRESHOLDS

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    return None


def layer_map_of(manifest: Any, artifact: Path) -> LayerMap:
    """The manifest's layer map, or a one-line reason to re-export."""
    data = manifest.details.get("layer_map")
    if not data:
        raise UsageError(f"{artifact.name}: its manifest has no layer map (exported before `evit debug` existed); "
                         "re-export it with `evit export` to debug it")
    layer_map = LayerMap.from_dict(data)
    if not layer_map.layers:
        raise UsageError(f"{artifact.name}: its layer map is empty (the converter kept no module provenance, e.g. the "
                         "TorchScript ONNX exporter); re-export it with the default exporter to debug it")
    return layer_map


def select_layers(layer_map: LayerMap, mode: str, tensor_modules: set[str],
                  absent: Collection[str] = ()) -> tuple[list[LayerEntry], list[str]]:
    """The entries to compare, and the mapped modules left out with why.

    ``all``: every mapped module whose PyTorch output is one tensor. ``auto``: the model's own
    modules (torch building blocks left out: a fused BatchNorm or an activation shares its
    ConvLayer's tensor or has none), one per computation: of the modules that turn the same
    input tensors into the same output tensor only the innermost is kept (a ConvLayer, not the
    ConvLayer-only OpSequential around it), while a block that ends in a layer (LiteMLA ending
    in ``proj``, an MBConv in ``point_conv``) stays, since run alone it adds its own error.
    """
    skipped = [f"{e.module or '(model)'}: " + ("not in the PyTorch model (swapped in by the export)"
                                               if e.module in absent else "its PyTorch output is not one tensor")
               for e in layer_map.layers if e.module not in tensor_modules]
    usable = [e for e in layer_map.layers if e.module in tensor_modules]
    if mode == "all":
        return usable, skipped
    same: dict[tuple[str, ...], list[LayerEntry]] = {}
    for entry in usable:
        if not entry.is_torch_primitive:
            same.setdefault((entry.tensor, *entry.inputs), []).append(entry)
    chosen = [max(group, key=lambda e: e.depth) for group in same.values()]
    return sorted(chosen, key=lambda e: (e.order, -e.depth)), skipped


def debug_artifact(artifact: str | Path | DebugRequest, *, progress: Progress = _quiet, **fields: Any) -> DebugReport:
    """Compare every mapped layer of ``artifact`` with its PyTorch module; ``fields`` are
    ``DebugRequest``'s (``alone``: also run each layer by itself on the reference's inputs)."""
    from evit_deploy.artifact import open_artifact
    from evit_deploy.data import input_batches, list_images
    from evit_deploy.pipeline.reference import reference_model

    request = artifact if isinstance(artifact, DebugRequest) else DebugRequest.parse(artifact=artifact, **fields)
    source, count, layers, threshold = request.images, request.samples, request.layers, request.threshold
    if source is not None and source.suffix != ".npy":
        list_images(source)
    handle = open_artifact(request.artifact)
    layer_map = layer_map_of(handle.manifest, handle.path)
    limit = threshold if threshold is not None else THRESHOLDS.get(handle.manifest.precision.value, THRESHOLDS["int8"])
    spec = handle.spec
    batches = input_batches(spec, samples=count, seed=request.seed, source=source)
    capture = capture_for(handle, request.threads)  # a missing runtime fails here, before the reference is built
    progress("building the PyTorch reference")
    model, _, notes = reference_model(handle.manifest, request.weights)

    results: dict[str, LayerResult] = {}
    skipped: list[str] = []
    output, deployed = TensorErrors(), TensorErrors()
    out_name = handle.manifest.outputs[0].name if handle.manifest.outputs else "logits"
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(ReferenceTaps(model, {e.module for e in layer_map.layers}))
        stack.enter_context(capture)
        chosen: list[LayerEntry] = []
        for index, batch in enumerate(batches):
            progress(f"sample {index + 1}/{count}: reference")
            ref_out, ref_in = reference.run(batch)
            if index == 0:
                chosen, skipped = select_layers(layer_map, layers, set(ref_out), reference.absent)
                progress(f"exposing {len(chosen)} tensors")
                for problem in capture.load(sorted({e.tensor for e in chosen})):
                    skipped.append(f"tensor {problem}")
                results = {e.module: LayerResult(e.module, e.cls.rsplit(".", 1)[-1], e.tensor, e.order)
                           for e in chosen}
            feed = {spec.name: batch}
            progress(f"sample {index + 1}/{count}: artifact")
            exposed = capture.run(feed)
            final = ref_out.get("")
            if final is not None:
                _compare(output, exposed.get(out_name), final)
                _compare(deployed, capture.run_deployed(feed).get(out_name), final)
            by_tensor = _reference_by_tensor(layer_map, ref_out, spec.name, batch)
            for number, entry in enumerate(chosen):
                result = results[entry.module]
                if not _compare(result.errors, _unscaled(layer_map, entry.tensor, exposed.get(entry.tensor)),
                                ref_out[entry.module]):
                    result.alone_note = result.alone_note or "shape differs from the PyTorch output"
                    continue
                if request.alone and result.alone_note is None:
                    progress(f"sample {index + 1}/{count}: layer {number + 1}/{len(chosen)} alone")
                    _run_alone(capture, entry, result, by_tensor, ref_in.get(entry.module), ref_out[entry.module],
                               layer_map)
        runner = capture.describe()
    compared = [results[e.module] for e in chosen if results[e.module].errors.elements]
    return DebugReport(
        artifact=str(handle.path), model=handle.manifest.model, target=handle.manifest.target,
        precision=handle.manifest.precision.value, threshold=limit, layers_mode=layers, samples=count,
        input_source=str(source) if source else f"random (seed {request.seed}, {spec.height}x{spec.width})",
        layers=compared, output=output, deployed_output=deployed, runner=runner, map_source=layer_map.source,
        skipped=skipped + [f"{e.module}: {results[e.module].alone_note}" for e in chosen
                           if not results[e.module].errors.elements],
        notes=notes + ([] if request.alone else ["layers were not run alone (--no-alone)"]),
    )


def _compare(errors: TensorErrors, art: np.ndarray | None, ref: np.ndarray) -> bool:
    if art is None:
        return False
    shaped = aligned(art, ref.shape)
    if shaped is None:
        return False
    errors.update(shaped, ref)
    return True


def _unscaled(layer_map: LayerMap, tensor: str, value: np.ndarray | None) -> np.ndarray | None:
    """The artifact's ``tensor`` at its module's scale (``LayerMap.scales``)."""
    scale = layer_map.scale(tensor)
    return value if value is None or scale == 1.0 else value / np.float32(scale)


def _reference_by_tensor(layer_map: LayerMap, ref_out: dict[str, np.ndarray], input_name: str,
                         batch: np.ndarray) -> dict[str, np.ndarray]:
    """The reference's value of every artifact tensor some module returns (and of the input),
    at the artifact's scale, ready to feed a layer run alone."""
    values = {input_name: batch}
    for entry in layer_map.layers:
        if entry.module in ref_out and entry.tensor not in values:
            values[entry.tensor] = ref_out[entry.module] * np.float32(layer_map.scale(entry.tensor))
    return values


def _run_alone(capture: Capture, entry: LayerEntry, result: LayerResult, by_tensor: dict[str, np.ndarray],
               module_input: np.ndarray | None, expected: np.ndarray, layer_map: LayerMap) -> None:
    inputs = {name: by_tensor[name] for name in entry.inputs if name in by_tensor}
    missing = [name for name in entry.inputs if name not in by_tensor]
    # A module's own input is the artifact tensor only for the model's modules: a fused torch
    # building block (Conv+BatchNorm under the BatchNorm's name) starts at the conv's input.
    if len(entry.inputs) == 1 and missing and module_input is not None and not entry.is_torch_primitive:
        inputs, missing = {entry.inputs[0]: module_input * np.float32(layer_map.scale(entry.inputs[0]))}, []
    if missing:
        result.alone_note = f"no reference value for its input {missing[0]}"
        return
    try:
        value = capture.run_alone(entry, inputs)
    except CannotRunAlone as err:
        result.alone_note = str(err)
        return
    if result.alone is None:
        result.alone = TensorErrors()
    if not _compare(result.alone, _unscaled(layer_map, entry.tensor, value), expected):
        result.alone, result.alone_note = None, "run alone, it gives another shape than the PyTorch output"


def capture_for(handle: ArtifactHandle, threads: int | None) -> Capture:
    """The capture for an artifact's target (its runner, opened the way verify opens it)."""
    target = handle.manifest.target
    if target in ("onnx", "trt"):
        from evit_deploy.debug.capture_onnx import OnnxCapture

        return OnnxCapture(handle.runner(threads=threads))
    if target == "tflite":
        from evit_deploy.debug.capture_tflite import TfliteCapture

        return TfliteCapture(handle.runner(threads=threads))
    if target == "coreml":
        from evit_deploy.debug.capture_coreml import MilCapture

        image_input = bool(handle.manifest.recipe.options.get("image_input", False))
        return MilCapture(handle.runner(threads=threads), handle.path, handle.spec, image_input)
    raise UsageError(f"evit debug cannot look inside {target} artifacts; it reads onnx, trt (typed ONNX), tflite "
                     "and coreml")
