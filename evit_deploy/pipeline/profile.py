"""Timing on this machine: an artifact through its runner, or a zoo model in eager PyTorch.

The device worker calls ``profile_here`` too, so a profile on a Jetson is measured by the same
code, with the device's clocks and power sampled around the timed runs when asked.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.artifact import ArtifactHandle, open_artifact
from evit_deploy.data import input_batches
from evit_deploy.errors import RuntimeMissing, UsageError
from evit_deploy.profiling import ProfileResult, measure, warn_oversubscribed
from evit_deploy.requests import ProfileRequest
from evit_deploy.spec import Precision, TensorInfo

Tick = Callable[[int, int], None]


def profile_here(request: ProfileRequest, *, on_iteration: Tick = lambda done, total: None) -> ProfileResult:
    """Time ``request.artifact`` (or, with ``target='torch'``, the zoo model) on this machine."""
    warn_oversubscribed(request.threads)
    if request.target == "torch":
        return _profile_torch(request, on_iteration)
    if request.target is not None:
        raise UsageError(f"--target is for profiling a model name in eager PyTorch (--target torch), "
                         f"not {request.target!r}")
    if request.graph is not None:
        raise UsageError("--graph picks a graph of a zoo model with --target torch; an artifact is one graph "
                         "(a bundle times each of its graphs)")
    path = Path(request.artifact)
    if not path.exists():
        from evit_deploy import zoo

        if path.suffix == "" and request.artifact in zoo.model_names():
            raise UsageError(f"{request.artifact} is a model name: profile it with --target torch, or export it first")
        raise UsageError(f"{request.artifact}: no such artifact")
    handle = open_artifact(path)
    reason = handle.target.timing_available(request.device)
    if reason is not None:
        raise RuntimeMissing(f"cannot profile {path.name} here: {reason}")
    spec = handle.run_spec(request.resolution, request.batch)
    if (request.resolution or request.batch) and not handle.manifest.graph and importlib.util.find_spec("torch"):
        from evit_deploy import zoo
        from evit_deploy.memory import check_card_fits

        check_card_fits(zoo.get_card(handle.manifest.model), spec.shape)  # devices without torch skip this
    if handle.manifest.graph:
        sizes, shapes = graph_shapes(handle, request.dims, request.batch)
        feed = _graph_feed(shapes, request.seed)
    else:
        if request.dims:
            raise UsageError(f"{path.name} has no named dims to size ({', '.join(request.dims)})")
        sizes, feed = {}, {spec.name: next(iter(input_batches(spec, samples=1, seed=request.seed)))}

    def timed(tick: Tick) -> dict[str, Any]:
        return measure(lambda: handle.runner(device=request.device, threads=request.threads), feed,
                       warmup=request.warmup, iters=request.iters, per_layer=request.per_layer, on_iteration=tick)

    if request.lock_clocks or request.power:  # Jetson: jetson_clocks around the run, tegrastats during the timed part
        from evit_deploy.jetson import ProfileConditions

        conditions = ProfileConditions(lock_clocks=request.lock_clocks, power=request.power, warmup=request.warmup,
                                       on_iteration=on_iteration)
        with conditions.applied():
            measured = timed(conditions.tick)
        conditions.annotate(measured["host"], measured["throughput_ips"])
    else:
        measured = timed(on_iteration)
    first = next(iter(feed.values()))
    shape = list(first.shape) if handle.manifest.graph else list(spec.shape)
    return ProfileResult(artifact=str(path), model=handle.manifest.model, target=handle.manifest.target,
                         precision=handle.manifest.precision, batch=int(shape[0]) if shape else spec.batch,
                         input_shape=shape, threads=request.threads, warmup=request.warmup, iters=request.iters,
                         device=request.device, dims=sizes, **measured)


def graph_shapes(handle: ArtifactHandle, asked: dict[str, int],
                 batch: int | None = None) -> tuple[dict[str, int], dict[str, list[int]]]:
    """The size of each named dynamic dim of one graph (``asked``; ``batch`` for a dynamic batch; else
    the card's static size) and the canonical (NCHW) shape of each input at those sizes.

    A dim the artifact was exported with fixed cannot be resized; asking for it is refused.
    """
    from evit_deploy import zoo

    graph = zoo.get_card(handle.manifest.model).graph(str(handle.manifest.graph))
    named = {tensor.name: tensor.shape for tensor in graph.inputs}
    axes: dict[str, list[int | str]] = {}
    for info in handle.manifest.inputs:
        shape = list(info.shape)
        if info.layout == "NHWC" and len(shape) == 4:
            shape = [shape[0], shape[3], shape[1], shape[2]]
        card_shape = named.get(info.name, ())
        axes[info.name] = [dim if size is None and isinstance(dim, str) else (size or 1)
                           for dim, size in zip(card_shape or [None] * len(shape), shape)]
    dynamic = {dim for shape in axes.values() for dim in shape if isinstance(dim, str)}
    fixed = sorted(set(asked) - dynamic)
    if fixed:
        raise UsageError(f"{handle.path.name} has no dynamic {', '.join(fixed)} (dynamic: "
                         f"{', '.join(sorted(dynamic)) or 'none'}); re-export it with --dynamic to time other sizes")
    if batch is not None and "batch" in dynamic:
        asked = {"batch": batch, **asked}
    sizes = {dim: asked.get(dim, graph.static_size(dim)) for dim in sorted(dynamic)}
    return sizes, {name: [sizes[d] if isinstance(d, str) else d for d in shape] for name, shape in axes.items()}


def _graph_feed(shapes: dict[str, list[int]], seed: int) -> dict[str, np.ndarray]:
    """Seeded normal values for a graph that takes no image: timing needs sizes, not meaning (and a
    device has no torch to make the upstream graph's real outputs)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _profile_torch(request: ProfileRequest, on_iteration: Tick) -> ProfileResult:
    from evit_deploy import zoo
    from evit_deploy.pipeline.reference import quiet_model
    from evit_deploy.targets.torch_ref import TorchRunner

    card = zoo.get_card(request.artifact)
    spec = card.input_spec(request.resolution, request.batch or 1)
    module = quiet_model(card.name, request.weights, request.seed)
    image = next(iter(input_batches(spec, samples=1, seed=request.seed)))
    sizes: dict[str, int] = {}
    if card.graphs:  # one graph of a several-graph model, at the sizes asked (else its static export's)
        graph = card.graph(request.graph or card.graphs[0].name)
        unknown = sorted(set(request.dims) - set(graph.dynamic) - {"batch"})
        if unknown:
            raise UsageError(f"graph {graph.name} of {card.name} has no dim {', '.join(unknown)} "
                             f"(its dims: {', '.join(graph.dynamic) or 'batch only'})")
        sizes = {"batch": spec.batch, **request.dims}
        tensors = graph.inputs_for({})
        shapes = {t.name: [d if isinstance(d, int) else sizes.get(d, graph.static_size(d)) for d in t.shape]
                  for t in tensors}
        feed = _graph_feed(shapes, request.seed)
        feed |= {t.name: image for t in tensors if t.feed == "image"}
        sizes = {d: sizes.get(d, graph.static_size(d)) for t in tensors for d in t.shape if isinstance(d, str)}
        module = module.graph(graph.name)
        runner_inputs: Any = [TensorInfo(t.name, ()) for t in tensors]
        outputs = [t.name for t in graph.outputs]
    else:
        if request.graph or request.dims:
            raise UsageError(f"{card.name} is one graph: drop --graph and --dims")
        feed, runner_inputs, outputs = {spec.name: image}, spec, None
    measured = measure(lambda: TorchRunner(module, runner_inputs, threads=request.threads, output_names=outputs),
                       feed, warmup=request.warmup, iters=request.iters, on_iteration=on_iteration)
    first = next(iter(feed.values()))
    return ProfileResult(artifact=card.name, model=card.name, target="torch", precision=Precision.FP32,
                         batch=int(first.shape[0]), input_shape=list(first.shape), threads=request.threads,
                         warmup=request.warmup, iters=request.iters, dims=sizes, **measured)
