"""Profiling a several-graph export: each graph at the sizes its card lists for a dynamic export, and,
for a model that takes prompts (SAM), the whole path an app runs per photo: one image through the
encoder, then its prompts through the decoder in as many runs as the decoder's fixed sizes need."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.artifact import open_artifact
from evit_deploy.contracts import Runner
from evit_deploy.data import input_batches
from evit_deploy.profiling import ProfileResult, measure
from evit_deploy.requests import ProfileRequest
from evit_deploy.sam import generated_prompts, prompt_batches

Tick = Callable[[int, int], None]
END_TO_END = "end-to-end"
E2E_GRID = 4  # 4 x 4 = 16 single clicks per image, each a click and its padding point


def profile_points(path: Path) -> list[tuple[str, dict[str, int]]]:
    """(result key, dim sizes) for one graph of a bundle: the card's ``profile`` sizes that the export
    left dynamic, else the graph once at its own sizes."""
    from evit_deploy import zoo

    handle = open_artifact(path)
    name = str(handle.manifest.graph)
    graph = zoo.get_card(handle.manifest.model).graph(name)
    dynamic = {str(dim) for tensor in graph.inputs for dim, size in
               zip(tensor.shape, next((i.shape for i in handle.manifest.inputs if i.name == tensor.name), ()))
               if size is None and isinstance(dim, str)}
    points = [sizes for sizes in graph.profile if set(sizes) <= dynamic]
    if not points:
        return [(name, {})]
    return [(f"{name} " + " ".join(f"{dim}={size}" for dim, size in sizes.items()), sizes) for sizes in points]


class EndToEndRunner(Runner):
    """One photo's work: ``encoder.run`` on the image, then ``decoder.run`` on each prompt batch with
    that image's embeddings (canonical arrays between them, as an app hands them over)."""

    backend = "end-to-end"

    def __init__(self, encoder: Runner, decoder: Runner, link: tuple[str, str],
                 prompts: list[dict[str, np.ndarray]]) -> None:
        super().__init__()
        self.encoder, self.decoder, self.link, self.prompts = encoder, decoder, link, prompts

    def load(self) -> None:
        self.encoder.__enter__()
        self.decoder.__enter__()
        self.inputs, self.outputs = self.encoder.inputs, self.decoder.outputs

    def prepare(self, feed: dict[str, np.ndarray], layout: Any = "NCHW") -> dict[str, np.ndarray]:
        return feed  # each graph's run converts its own inputs

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        output, decoder_input = self.link
        embeddings = self.encoder.run(feed)[output]
        out: dict[str, np.ndarray] = {}
        for batch in self.prompts:
            out = self.decoder.run({decoder_input: embeddings, **batch})
        return out

    def close(self) -> None:
        self.decoder.close()
        self.encoder.close()

    def describe(self) -> dict[str, Any]:
        encoder = self.encoder.describe()
        return {"backend": encoder.get("backend", "?"), "version": encoder.get("version"),
                "threads": encoder.get("threads"), "encoder": encoder, "decoder": self.decoder.describe(),
                "decoder_runs_per_image": len(self.prompts)}


def end_to_end_here(request: ProfileRequest, graphs: dict[str, Path], *,
                    on_iteration: Tick = lambda done, total: None) -> ProfileResult | None:
    """The per-photo figure of a bundle whose second graph takes prompts and the first graph's output
    (SAM: 16 single clicks on one image); None for other bundles."""
    from evit_deploy import zoo

    handles = {name: open_artifact(path) for name, path in graphs.items()}
    card = zoo.get_card(next(iter(handles.values())).manifest.model)
    prompted = [g for g in card.graphs if g.name in handles and any(t.feed == "prompts" for t in g.inputs)]
    if not prompted:
        return None
    graph = prompted[0]
    fed = next((t for t in graph.inputs if "." in (t.feed or "")), None)
    upstream, _, output = (fed.feed or "").partition(".") if fed is not None else ("", "", "")
    if fed is None or upstream not in handles:
        return None
    encoder, decoder = handles[upstream], handles[graph.name]
    spec = encoder.spec.with_resolution(encoder.spec.height, encoder.spec.width, batch=1)
    fixed_inputs = {t.name: t for t in decoder.manifest.inputs}
    fixed = fixed_inputs["point_coords"].shape[:2] if "point_coords" in fixed_inputs else (None, None)
    size = (spec.height, spec.width)
    prompts = prompt_batches(generated_prompts(size, grid=E2E_GRID, boxes=0), size, int(card.prompt_frame or 1024),
                             fixed=fixed, mask_input="mask_input" in fixed_inputs)
    image = next(iter(input_batches(spec, samples=1, seed=request.seed)))
    feed = {encoder.manifest.inputs[0].name: image}

    def runner() -> Runner:
        return EndToEndRunner(encoder.runner(device=request.device, threads=request.threads),
                              decoder.runner(device=request.device, threads=request.threads), (output, fed.name),
                              prompts)

    measured = measure(runner, feed, warmup=request.warmup, iters=request.iters, on_iteration=on_iteration)
    bundle = Path(request.artifact)
    return ProfileResult(artifact=str(bundle), model=card.name, target=encoder.manifest.target,
                         precision=encoder.manifest.precision, batch=1, input_shape=list(spec.shape),
                         threads=request.threads, warmup=request.warmup, iters=request.iters, device=request.device,
                         dims={"images": 1, "prompts": E2E_GRID * E2E_GRID}, **measured)
