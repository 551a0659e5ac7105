"""The Core ML export: torch.export -> ML program, fp16 islands checked in the saved program."""
from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_deploy.contracts import ExportContext, ExportOutput
from evit_deploy.coreml.compress import compress
from evit_deploy.coreml.layer_map import mil_layer_map
from evit_deploy.coreml.options import COMPUTE_UNITS, CoreMLOptions
from evit_deploy.coreml.precision import island_selector, program_precision
from evit_deploy.coreml.rewrite import normalising_wrapper, replace_tanh_gelu
from evit_deploy.coreml.tools import import_coremltools, quiet_coremltools
from evit_deploy.errors import CheckFailed, UsageError
from evit_deploy.spec import InputSpec, Precision, TensorInfo
from evit_deploy.toolchain import first_line, toolchain_error

if TYPE_CHECKING:
    import torch


def describe_io(spec: InputSpec, ctx: ExportContext, image: bool) -> tuple[str, str]:
    mean = ", ".join(f"{m:g}" for m in spec.mean)
    std = ", ".join(f"{s:g}" for s in spec.std)
    if image:
        source = (f"{spec.color} image {spec.width}x{spec.height}; Core ML scales pixels by 1/255 and subtracts "
                  f"mean ({mean}), the model divides by std ({std})")
    else:
        source = (f"{spec.color} image as float32 {spec.batch}x3x{spec.height}x{spec.width} (NCHW), "
                  f"(pixel/255 - mean) / std with mean ({mean}), std ({std})")
    if ctx.task == "segmentation":
        output = (f"per-class logits ({len(ctx.classes)} classes) at 1/8 of the input size (NCHW); upsample to the "
                  "image size, then argmax; class names in metadata evit.classes")
    else:
        output = f"logits over {len(ctx.classes)} classes; softmax for probabilities; class names in metadata evit.classes"
    return source, output


# --------------------------------------------------------------------------- the target


def export_artifact(model: torch.nn.Module, spec: InputSpec, precision: Precision, options: CoreMLOptions,
                    ctx: ExportContext) -> ExportOutput:
    """``NAME.mlpackage`` in ``ctx.workdir``: rewritten, converted, compressed if asked, re-read and checked."""
    import torch

    from evit_deploy.convert.bicubic import bicubic_upsample_layers, replace_bicubic_upsampling
    from evit_deploy.mil import load_program, unknown_ops

    ct = import_coremltools()
    notes: list[str] = []
    details: dict[str, Any] = {"deployment_target": options.deployment_target,
                               "compute_units": options.compute_units, "frontend": "torch.export"}

    module = copy.deepcopy(model).eval()
    rewritten = bicubic_upsample_layers(module)
    if rewritten:
        replace_bicubic_upsampling(module)
        details["bicubic_rewrite"] = rewritten
        notes.append(f"{len(rewritten)} bicubic upsampling(s) rewritten as edge pad + depthwise 5x5 conv + pixel "
                     "shuffle (exact; coremltools has no bicubic resize)")
    gelus = replace_tanh_gelu(module)
    if gelus:
        notes.append(f"{gelus} tanh-GELU(s) written out as their formula (coremltools 9.0 converts tanh-GELU "
                     "from torch.export as erf-GELU)")
    io = ctx.graph
    if options.image_input and not ctx.image_graph:
        raise UsageError(f"--image-input needs a graph whose one input is the image; {ctx.model_name} takes "
                         f"{', '.join(io.input_names)}")
    if options.image_input:
        module = normalising_wrapper(module, spec.std)
        color = ct.colorlayout.BGR if spec.color.upper() == "BGR" else ct.colorlayout.RGB
        inputs = [ct.ImageType(name="image", shape=spec.shape, scale=1 / 255.0,
                               bias=[-m for m in spec.mean], color_layout=color)]
        details["image_input"] = {"name": "image", "color": spec.color, "scale": 1 / 255.0,
                                  "bias": [-m for m in spec.mean],
                                  "in_model": f"multiply by 1/std per channel ({list(spec.std)})"}
    else:
        inputs = [ct.TensorType(name=i.name, shape=i.shape, dtype=np.float32) for i in io.inputs]

    ctx.progress("torch.export")
    with torch.no_grad():
        examples = tuple(torch.zeros(i.shape) for i in io.inputs)
        program = torch.export.export(module, examples).run_decompositions({})
    kept: dict[str, int] = {}
    if precision == Precision.FP16:
        with quiet_coremltools():
            selector, kept = island_selector(list(options.keep_fp32))
            compute = ct.transform.FP16ComputePrecision(op_selector=selector)
    else:
        compute = ct.precision.FLOAT32
    target = getattr(ct.target, options.deployment_target)
    ctx.progress(f"coremltools convert ({precision}, {options.deployment_target})")
    with quiet_coremltools() as chatter:
        try:
            mlmodel = ct.convert(program, convert_to="mlprogram", inputs=inputs,
                                 outputs=[ct.TensorType(name=name, dtype=np.float32) for name in io.outputs],
                                 minimum_deployment_target=target, compute_precision=compute,
                                 compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[options.compute_units]),
                                 skip_model_load=True)
        except Exception as err:  # noqa: BLE001 - coremltools raises many types: exit 3, the log kept
            output = chatter.getvalue().splitlines()
            where = [line.strip() for line in output if line.startswith("ERROR")]
            raise toolchain_error("coremltools", f"to convert {ctx.model_name}", err, output,
                                  line=f"{first_line(err)} ({where[-1]})" if where else None) from None
        if options.compress != "none":
            ctx.progress(f"compressing weights ({options.compress})")
            mlmodel, details["compression"] = compress(ct, mlmodel, options.compress, options.level)
    if precision == Precision.FP16:
        details["fp32_islands"] = kept

    source, output = describe_io(spec, ctx, options.image_input)
    input_name = "image" if options.image_input else io.inputs[0].name
    mlmodel.short_description = (f"EfficientViT {ctx.model_name} ({ctx.task}, {spec.height}x{spec.width}, "
                                 f"{precision}) exported by evit")
    mlmodel.author = "evit-deploy (EfficientViT architecture: MIT Han Lab)"
    mlmodel.version = str(ctx.model_name)
    if ctx.image_graph and len(io.outputs) == 1:
        mlmodel.input_description[input_name] = source
        mlmodel.output_description[io.outputs[0]] = output
    else:
        for tensor in io.inputs:
            mlmodel.input_description[tensor.name] = f"float32 {'x'.join(map(str, tensor.shape))}"
    metadata = {
        "evit.model": ctx.model_name, "evit.task": ctx.task, "evit.precision": precision,
        "evit.input_size": f"{spec.height}x{spec.width}", "evit.input_layout": "NCHW", "evit.color": spec.color,
        "evit.mean": json.dumps(list(spec.mean)), "evit.std": json.dumps(list(spec.std)),
        "evit.image_input": json.dumps(options.image_input), "evit.classes": json.dumps(ctx.classes),
        "evit.compute_units": options.compute_units, "evit.deployment_target": options.deployment_target,
        "evit.compress": options.compress, "evit.output": output,
    }
    for key, value in metadata.items():
        mlmodel.user_defined_metadata[key] = value

    path = ctx.workdir / f"{ctx.model_name}.mlpackage"
    ctx.progress(f"saving {path.name}")
    with quiet_coremltools():
        mlmodel.save(str(path))

    saved = load_program(path)
    details["layer_map"] = mil_layer_map(saved, program, model, "inner." if options.image_input else "").to_dict()
    details.update(specification_version=saved.specification_version, opset=saved.opset,
                   ops=saved.op_counts())
    if precision == Precision.FP16:
        mix = program_precision(saved)
        details["compute_precision"] = mix
        if "attention" in options.keep_fp32 and mix["attention_ops"]["fp16"]:
            raise CheckFailed(
                f"coremltools put {mix['attention_ops']['fp16']} attention op(s) (matmul/real_div) in fp16 despite "
                "the fp32 request; LiteMLA overflows fp16 on trained weights, so no artifact was written"
            )
        notes.append(f"fp16 with fp32 islands ({', '.join(f'{k}: {v} ops' for k, v in kept.items())}); "
                     f"{mix['fp16_ops']} fp16 / {mix['fp32_ops']} fp32 ops")
    missing = unknown_ops(saved)
    if missing:
        notes.append(f"evit's MIL interpreter lacks op(s) {sorted(missing)}: verify needs macOS for this artifact")
    torch_version = torch.__version__.split("+")[0]
    notes.append(f"coremltools {ct.__version__} has not been tested with torch {torch_version} (it warns so); "
                 "verify checks the converted program op by op")
    details["compute_units_note"] = "compute units are chosen when the app loads the model (MLModelConfiguration)"
    return ExportOutput(
        files=[path],
        converter={"coremltools": ct.__version__},
        inputs=[TensorInfo(i.name, i.shape, "float32", "NCHW") for i in io.inputs],
        outputs=[TensorInfo(name, tuple(saved.output_types[name].shape), "float32", "NCHW") for name in io.outputs],
        notes=notes,
        details=details,
    )
