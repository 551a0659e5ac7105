"""``evit segment``: one SAM prompt on one photo -> a binary mask, an overlay with the prompt drawn,
and the scores.

An export runs through its runners alone (no PyTorch), with the official predictor's numpy pre- and
postprocessing (``evit_deploy.sam``): long side to the encoder's input, pad; prompts into the 1024
frame; the chosen 256x256 logits upscaled, the padding cropped, resized to the photo, > 0. A zoo
model name runs the same steps with the PyTorch graphs as runners, so the two answers can be
compared by eye. Every input is checked before a model is loaded, and files are written only
when the mask exists.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.artifact import ArtifactHandle, open_artifact
from evit_deploy.bundle import is_bundle, load_bundle
from evit_deploy.contracts import Runner
from evit_deploy.errors import UsageError
from evit_deploy.manifest import write_json_atomic
from evit_deploy.requests import SegmentRequest
from evit_deploy.sam import Prompt, postprocess_masks, preprocess, prompt_batches, read_image
from evit_deploy.sam.overlay import draw_overlay
from evit_deploy.spec import TensorInfo

ENCODER, DECODER = "encoder", "decoder"


@dataclass
class SamEngine:
    """The two graphs as runners (not yet loaded), the encoder's input side and what runs them."""

    encoder: Runner
    decoder: Runner
    image_size: int
    frame: int
    decoder_inputs: dict[str, TensorInfo]  # the decoder's fixed sizes (None: dynamic); empty for PyTorch
    describe: dict[str, Any] = field(default_factory=dict)


@dataclass
class SegmentResult:
    """One answer: the mask on the photo, every candidate's score, which one was chosen."""

    mask: np.ndarray  # (H, W) bool
    scores: list[float]  # predicted IoU of each candidate
    tokens: list[int]  # the decoder's mask token of each candidate
    chosen: int  # index into scores / tokens
    prompt: Prompt
    image_size: tuple[int, int]
    engine: dict[str, Any]
    timings_ms: dict[str, float]
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        pixels = int(self.mask.sum())
        return {"image_size": list(self.image_size), "prompt": {"points": [list(p) for p in self.prompt.points],
                                                                "labels": list(self.prompt.labels),
                                                                "box": list(self.prompt.box) if self.prompt.box else None},
                "scores": self.scores, "tokens": self.tokens, "chosen": self.chosen,
                "score": self.scores[self.chosen], "mask_pixels": pixels,
                "mask_fraction": pixels / max(1, self.mask.size), "engine": self.engine,
                "timings_ms": self.timings_ms, "files": self.files}


def segment(request: SegmentRequest) -> SegmentResult:
    """Run ``request`` and write its files (mask, overlay); the result says where they went."""
    image = read_image(request.image)
    prompt = _prompt(request)
    prompt.check(image.shape[:2])
    for path, flag in ((request.out, "--out"), (request.overlay_path, "--overlay")):
        _check_destination(path, flag)
    engine = open_engine(request)
    result = run_engine(engine, image, prompt, multimask=request.multimask)
    result.files = write_outputs(result, image, request.out, request.overlay_path)
    return result


def _check_destination(path: Path, flag: str) -> None:
    """Refused before any model runs: a destination below a file, or a folder where the PNG goes."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a .png file name")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"cannot write {path}: {blocker} is a file, not a folder")


def _prompt(request: SegmentRequest) -> Prompt:
    return Prompt(points=tuple((x, y) for x, y, _ in request.points),
                  labels=tuple(label for _, _, label in request.points), box=request.box)


def open_engine(request: SegmentRequest) -> SamEngine:
    """The exported graphs (bundle, or encoder + its or the given decoder), else the zoo model in PyTorch."""
    path = Path(request.artifact)
    if path.exists():
        if request.weights is not None:
            raise UsageError("--weights is for a zoo model name; an export carries its own weights")
        return _artifact_engine(path, request)
    from evit_deploy import zoo

    card = zoo.get_card(request.artifact)  # not a file: a zoo name (unknown names suggest the closest)
    _check_sam(card, request.artifact)
    if request.decoder is not None:
        raise UsageError("--decoder pairs a decoder artifact with an exported encoder, not with a zoo model")
    return _torch_engine(card, request)


def _check_sam(card: Any, what: str) -> None:
    if card.task != "sam":
        raise UsageError(f"{what} is a {card.task} model; segment takes an EfficientViT-SAM export or model "
                         "(evit models --task sam)")


def _artifact_engine(path: Path, request: SegmentRequest) -> SamEngine:
    from evit_deploy import zoo

    if is_bundle(path):
        _, graphs = load_bundle(path)
        encoder_path = graphs.get(ENCODER)
        decoder_path = request.decoder or graphs.get(DECODER)
        if encoder_path is None:
            raise UsageError(f"{path} holds no encoder graph (only {', '.join(graphs)}); export it with "
                             "--graph encoder,decoder")
    else:
        encoder_path, decoder_path = path, request.decoder
    encoder = open_artifact(encoder_path)
    card = zoo.get_card(encoder.manifest.model)
    _check_sam(card, encoder_path.name)
    _expect_graph(encoder, ENCODER, "ARTIFACT")
    if decoder_path is None:
        decoder_path = _bundled_decoder(encoder)
    decoder = open_artifact(decoder_path)
    _expect_graph(decoder, DECODER, "--decoder")
    if decoder.manifest.model != encoder.manifest.model:
        raise UsageError(f"{decoder.path.name} is {decoder.manifest.model}'s decoder, the encoder is "
                         f"{encoder.manifest.model}'s; give the decoder exported with it")
    spec = encoder.manifest.input
    return SamEngine(encoder.runner(device=request.device, threads=request.threads),
                     decoder.runner(device=request.device, threads=request.threads), spec.height,
                     int(card.prompt_frame), {t.name: t for t in decoder.manifest.inputs},
                     {"engine": "artifacts", "encoder": _about(encoder), "decoder": _about(decoder)})


def _expect_graph(handle: ArtifactHandle, graph: str, where: str) -> None:
    found = handle.manifest.graph
    if found != graph:
        needed = "the encoder (or the bundle)" if graph == ENCODER else "a decoder"
        raise UsageError(f"{handle.path.name} is the {found or 'whole-model'} graph of {handle.manifest.model}; "
                         f"{where} must be {needed}")


def _bundled_decoder(encoder: ArtifactHandle) -> Path:
    """The decoder exported with ``encoder``: its bundle, beside it, names it."""
    if encoder.manifest.bundle is None:
        raise UsageError(f"{encoder.path.name} has no bundle naming its decoder; pass --decoder PATH")
    bundle = encoder.path.parent / encoder.manifest.bundle
    if not bundle.is_file():
        raise UsageError(f"{encoder.path.name}: its bundle {bundle.name} is not beside it; pass --decoder PATH")
    _, graphs = load_bundle(bundle)
    if DECODER not in graphs:
        raise UsageError(f"{bundle.name} holds no decoder; pass --decoder PATH")
    return graphs[DECODER]


def _about(handle: ArtifactHandle) -> dict[str, Any]:
    m = handle.manifest
    return {"artifact": str(handle.path), "model": m.model, "target": m.target, "precision": str(m.precision)}


def _torch_engine(card: Any, request: SegmentRequest) -> SamEngine:
    from evit_deploy.pipeline.reference import quiet_model
    from evit_deploy.targets.torch_ref import TorchRunner

    model = quiet_model(card.name, request.weights, request.seed)
    runners = {}
    for graph in card.graphs:
        inputs = [TensorInfo(t.name, ()) for t in graph.inputs_for({})]
        runners[graph.name] = TorchRunner(model.graph(graph.name), inputs, threads=request.threads,
                                          output_names=[t.name for t in graph.outputs])
    weights = str(request.weights) if request.weights else f"random (seed {request.seed})"
    return SamEngine(runners[ENCODER], runners[DECODER], int(card.input_size[0]), int(card.prompt_frame), {},
                     {"engine": "pytorch", "model": card.name, "weights": weights})


def run_engine(engine: SamEngine, image: np.ndarray, prompt: Prompt, *, multimask: bool | None = None) -> SegmentResult:
    """Preprocess, encode, decode, choose the candidate, postprocess: the official predictor's path."""
    size = image.shape[:2]
    needs = engine.decoder_inputs
    fixed = needs["point_coords"].shape[:2] if "point_coords" in needs else (None, None)
    # a refinement (--mask-input) decoder on a first click: no previous mask
    (feed,) = prompt_batches([prompt], size, engine.frame, fixed=fixed, mask_input="mask_input" in needs)
    with contextlib.ExitStack() as stack:
        encoder, decoder = stack.enter_context(engine.encoder), stack.enter_context(engine.decoder)
        start = time.perf_counter()
        (embeddings,) = encoder.run({encoder.inputs[0].name: preprocess(image, engine.image_size)}).values()
        middle = time.perf_counter()
        outputs = list(decoder.run({"image_embeddings": embeddings, **feed}).values())
        done = time.perf_counter()
    masks, scores = outputs[0][0], outputs[1][0]  # (K, 256, 256), (K,): the first (only) prompt
    if multimask is None:
        multimask = len(prompt.points) == 1 and prompt.box is None  # one click is ambiguous: three candidates
    tokens = [0] if len(scores) == 1 else ([1, 2, 3] if multimask else [0])
    chosen = int(np.argmax(scores[tokens]))
    mask = postprocess_masks(masks[tokens[chosen]], size) > 0
    return SegmentResult(mask, [float(scores[t]) for t in tokens], tokens, chosen, prompt, size, engine.describe,
                         {"encoder": round((middle - start) * 1e3, 2), "decoder": round((done - middle) * 1e3, 2)})


def write_outputs(result: SegmentResult, image: np.ndarray, mask_path: Path, overlay_path: Path) -> dict[str, str]:
    """The mask (255 = object) and the overlay, each written beside its destination and renamed into place."""
    from PIL import Image

    pictures = {mask_path: result.mask.astype(np.uint8) * 255,
                overlay_path: draw_overlay(image, result.mask, result.prompt)}
    created = [p for p in {mask_path.parent, overlay_path.parent} for p in (p, *p.parents) if not p.exists()]
    written: list[Path] = []
    try:
        for path, picture in pictures.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial")
            Image.fromarray(picture).save(partial, format="PNG")
            partial.replace(path)
            written.append(path)
    except OSError as err:
        for leftover in [*written, *(p.with_name(f".{p.name}.partial") for p in pictures)]:
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        for folder in sorted(set(created), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
    return {"mask": str(mask_path), "overlay": str(overlay_path)}


def write_scores(path: Path, result: SegmentResult) -> None:
    try:
        write_json_atomic(path, result.to_dict())
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror or err}") from None
