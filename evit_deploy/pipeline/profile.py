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

from evit_deploy.artifact import open_artifact
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
    feed = (_graph_feed(handle.manifest.inputs, request.seed) if handle.manifest.graph
            else {spec.name: next(iter(input_batches(spec, samples=1, seed=request.seed)))})

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
    return ProfileResult(artifact=str(path), model=handle.manifest.model, target=handle.manifest.target,
                         precision=handle.manifest.precision, batch=spec.batch, input_shape=list(spec.shape),
                         threads=request.threads, warmup=request.warmup, iters=request.iters, device=request.device,
                         **measured)


def _graph_feed(inputs: list[TensorInfo], seed: int) -> dict[str, np.ndarray]:
    """Seeded normal values for a graph that takes no image (timing needs sizes, not meaning; no torch
    on a device to make the upstream graph's real outputs). Sizes canonical (NCHW), dynamic dims 1."""
    rng = np.random.default_rng(seed)
    feed = {}
    for tensor in inputs:
        shape = [d or 1 for d in tensor.shape]
        if tensor.layout == "NHWC" and len(shape) == 4:
            shape = [shape[0], shape[3], shape[1], shape[2]]
        feed[tensor.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def _profile_torch(request: ProfileRequest, on_iteration: Tick) -> ProfileResult:
    from evit_deploy import zoo
    from evit_deploy.pipeline.reference import quiet_model
    from evit_deploy.targets.torch_ref import TorchRunner

    card = zoo.get_card(request.artifact)
    spec = card.input_spec(request.resolution, request.batch or 1)
    module = quiet_model(card.name, request.weights, request.seed)
    feed = {spec.name: next(iter(input_batches(spec, samples=1, seed=request.seed)))}
    measured = measure(lambda: TorchRunner(module, spec, threads=request.threads), feed, warmup=request.warmup,
                       iters=request.iters, on_iteration=on_iteration)
    return ProfileResult(artifact=card.name, model=card.name, target="torch", precision=Precision.FP32,
                         batch=spec.batch, input_shape=list(spec.shape), threads=request.threads,
                         warmup=request.warmup, iters=request.iters, **measured)
