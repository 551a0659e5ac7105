"""``evit export``: a checkpoint becomes a deployable artifact with its manifest."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from evit_deploy.cli._common import err, parse_target_options, stage_progress
from evit_deploy.cli._errors import handle_errors


def export(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="Zoo name, e.g. efficientvit-seg-b1-cityscapes (see `evit models`).")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="onnx, tflite, coreml, trt.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Checkpoint (.pt/.pth/.safetensors, official or timm layout).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, fp16 or int8.")] = None,
    resolution: Annotated[str | None, typer.Option(help="HxW, multiples of 32 (default: the card's).")] = None,
    batch: Annotated[int | None, typer.Option(help="Batch size (static, or the example for --dynamic).")] = None,
    dynamic: Annotated[bool | None, typer.Option("--dynamic/--static", help="Dynamic batch/height/width.")] = None,
    config: Annotated[str | None, typer.Option(help="Recipe YAML path or shipped recipe name (export_configs/).")] = None,
    calib: Annotated[Path | None, typer.Option(help="Folder of calibration images (int8).")] = None,
    calib_samples: Annotated[int | None, typer.Option(help="Calibration images to use.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out"),
    device: Annotated[str | None, typer.Option(
        help="An inventory device: its preset picks the default target and precision; for trt the engine is "
             "built there (plan here, engine and manifest copied back).")] = None,
    inventory: Annotated[Path | None, typer.Option(
        help="devices.yaml (default: $EVIT_DEVICES, else ~/.config/evit/devices.yaml).")] = None,
    name: Annotated[str | None, typer.Option(help="File stem of the artifact (default: the model name).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for random weights when no --weights is given.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the artifact path.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Export MODEL to a deployable artifact plus NAME.evit.json (how it was made).

    Flags a target adds (e.g. --opset, --simplify for onnx; --layout for tflite) go after
    the others and are validated by that target: `evit export --help` lists them.
    """
    from evit_deploy import api
    from evit_deploy.configs import parse_resolution

    with handle_errors():
        overrides = {
            "precision": precision,
            "resolution": parse_resolution(resolution) if resolution else None,
            "batch": batch,
            "dynamic": dynamic,
            "calibration": {k: v for k, v in (("source", calib), ("samples", calib_samples)) if v is not None} or None,
            "options": parse_target_options(ctx.args) or None,
        }
        with stage_progress(quiet or json_out) as progress:
            if device is not None:
                result = _export_for_device(model, device, inventory, target=target, weights=weights, config=config,
                                            out=out, seed=seed, name=name, progress=progress, **overrides)
            else:
                result = api.export(model, target=target, weights=weights, config=config, out=out, seed=seed,
                                    name=name, progress=progress, **overrides)
        if json_out:
            print(json.dumps(result.manifest.model_dump(mode="json"), indent=2))
        else:
            if not quiet:
                for note in result.manifest.notes:
                    err.print(f"note: {note}")
                err.print(f"exported {result.manifest.model} -> {result.manifest.target} {result.manifest.precision} "
                          f"in {result.seconds:.1f} s; manifest {result.manifest_path}")
            print(result.artifact)



def _export_for_device(model: str, device: str, inventory: Path | None, *, target: str | None,
                       config: str | None, **kwargs: object) -> object:
    """``--device NAME``: the preset's target and precision unless given; trt engines are built there."""
    from evit_deploy import api
    from evit_deploy.devices import is_local, load_inventory
    from evit_deploy.errors import UsageError

    if is_local(device) or "," in device:
        raise UsageError(f"export --device takes one inventory device (see `evit devices`), not {device!r}")
    inv = load_inventory(inventory)
    entry = inv.get(device.partition(":")[0])
    if config is None:
        target = target or entry.default_target
        if kwargs.get("precision") is None:
            kwargs["precision"] = entry.default_precision
    if target is not None and target.lower() in ("trt", "tensorrt"):
        from evit_deploy.remote.export import export_on_device

        return export_on_device(model, device, inventory=inv, config=config, **kwargs)
    return api.export(model, target=target, config=config, **kwargs)
