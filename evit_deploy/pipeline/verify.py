"""An artifact's runner against its PyTorch reference on the same inputs, compared and recorded.

The artifact's runner is given (a local one, or a device's ``RemoteRunner``): inputs, the
reference and the comparison always stay on this machine.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evit_deploy.artifact import ArtifactHandle
from evit_deploy.configs import Tolerances
from evit_deploy.contracts import Runner
from evit_deploy.data import count_inputs
from evit_deploy.errors import UsageError
from evit_deploy.manifest import Manifest, ParityRecord, manifest_path_for, write_json_atomic
from evit_deploy.memory import check_card_fits
from evit_deploy.parity import Comparator, ParityReport
from evit_deploy.pipeline.feeds import graph_feeds, graph_inputs, graph_module
from evit_deploy.pipeline.reference import reference_model
from evit_deploy.requests import VerifyRequest

Progress = Callable[[str], None]


def verify_runner(handle: ArtifactHandle, artifact_runner: Runner, request: VerifyRequest, *,
                  progress: Progress = lambda message: None) -> ParityReport:
    """Compare ``artifact_runner`` (not yet loaded) with the reference; record the result unless asked not to.

    ``request.weight_rounding``: for an fp16/int8 artifact, also run the reference with only its
    weights rounded to that precision, so a shortfall shows whether the precision or the export
    caused it (``evit_deploy.weight_rounding``; one more reference inference per sample).
    """
    from evit_deploy import zoo
    from evit_deploy.targets.torch_ref import TorchRunner
    from evit_deploy.weight_rounding import rounded_copy

    manifest = handle.manifest
    card = zoo.get_card(manifest.model)
    graph = card.graph(manifest.graph) if manifest.graph else None
    source = request.images
    samples = request.samples or (4 if source is None else count_inputs(source))
    spec = handle.run_spec(request.resolution)
    if request.resolution is not None and graph is None:
        check_card_fits(card, spec.shape)
    criteria = manifest.recipe.resolved_tolerances(artifact_runner.tolerance_profile).model_dump()
    criteria.update(request.tolerances.model_dump(exclude_none=True))
    tol = Tolerances.model_validate(criteria)
    task = manifest.task if graph is None or graph.verify == "logits" else graph.verify
    if task not in ("classification", "segmentation", "tensor", "sam-masks"):
        raise UsageError(f"{handle.path.name}: verify does not judge {task!r} graphs here yet")
    if request.prompts is not None and not any(t.feed == "prompts" for g in card.graphs for t in g.inputs):
        raise UsageError(f"--prompts is for models that take prompts (SAM); {card.name} takes none")
    progress("building the PyTorch reference")
    model, reference_info, notes = reference_model(manifest, request.weights)
    options = manifest.recipe.model_options
    feeds = graph_feeds(card, graph, model, spec, options, samples=samples, seed=request.seed, source=source,
                        artifact_inputs=manifest.inputs, prompts=request.prompts)
    num_classes = int(card.num_classes or 0)
    comparator = Comparator(task, num_classes, tol)
    out_names = [o.name for o in manifest.outputs] or ["logits"]
    inputs = graph_inputs(spec, graph, options)
    rounded = rounded_copy(model, manifest.precision) if request.weight_rounding else None
    rounding = Comparator(task, num_classes, tol) if rounded is not None else None
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(TorchRunner(graph_module(model, card, graph, options), inputs,
                                                    output_names=out_names))
        runner = stack.enter_context(artifact_runner)
        rounded_runner = stack.enter_context(TorchRunner(graph_module(rounded, card, graph, options), inputs,
                                                         output_names=out_names)) if rounded else None
        for index, sample in enumerate(feeds):
            progress(f"run {index + 1} ({samples} image(s))")
            expected = reference.run(sample.inputs)
            comparator.update(runner.run(sample.inputs), expected, image_size=sample.image_size)
            if rounded_runner is not None and rounding is not None:
                rounding.update(rounded_runner.run(sample.inputs), expected, image_size=sample.image_size)
        runner_info = runner.describe()
    report = comparator.report(
        weight_rounding=rounding,
        model=manifest.model,
        artifact=str(handle.path),
        precision=manifest.precision,
        input_source=str(source) if source else f"random (seed {request.seed}, {spec.height}x{spec.width})",
        reference=reference_info,
        runner=runner_info,
        notes=notes + manifest.notes + _saturation_note(manifest, runner_info),
    )
    if request.record:
        problem = record_parity(handle, report)
        if problem:
            report.notes.append(f"the result is not recorded in the manifest: {problem}")
    return report


SATURATING_SCHEMES = ("qdq-u8s8", "qoperator-u8s8")


def _saturation_note(manifest: Manifest, runner: dict[str, Any]) -> list[str]:
    """Why a u8s8 ONNX artifact verified on an x86 CPU without VNNI may fall short: that CPU's int8
    kernels saturate (``machine.u8s8_saturates``), a VNNI or ARM deployment CPU does not."""
    from evit_deploy.machine import u8s8_saturates

    scheme = manifest.recipe.options.get("int8_scheme")
    if manifest.target != "onnx" or scheme not in SATURATING_SCHEMES or runner.get("device") != "cpu" \
            or not u8s8_saturates():
        return []
    return [(f"this CPU has no VNNI: ONNX Runtime's {scheme} int8 convolutions add uint8 x int8 products in 16 bits "
             "here and clip what does not fit (seeded seg-B1 at 512x1024: 0.938 pixel agreement where the same ranges "
             "as qdq-u8u8 keep 0.968); a VNNI x86 or ARM CPU does not saturate. For CPUs like this one export with "
             "--int8-scheme qdq-u8u8 (on an AMD Zen 3 it ran no faster than fp32)")]


def record_parity(handle: ArtifactHandle, report: ParityReport) -> str | None:
    """Keep the latest verify result in the manifest (the manifest itself is not hashed); why not, if not."""
    record = ParityRecord(
        passed=report.passed,
        verified=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        inputs=report.input_source,
        samples=report.samples,
        runner=report.runner,
        task=report.task_metrics,
        weight_rounding=report.weight_rounding,
        outputs={k: v.to_dict() for k, v in report.outputs.items()},
        failed=[c.name for c in report.failures],
        excused=report.excused,
    )
    updated = handle.manifest.model_copy(update={"parity": record})
    path = manifest_path_for(Path(handle.path))
    try:
        write_json_atomic(path, updated.model_dump(mode="json"))
    except OSError as err:  # a read-only artifact folder still verifies; the result is in the report
        return f"cannot write {path.name} in {path.parent} ({err.strerror or err})"
    return None
