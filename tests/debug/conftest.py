"""Small seeded artifacts for ``evit debug`` and a way to damage one layer of them on purpose."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SEG = "efficientvit-seg-b0-cityscapes"
SEG_BUILDER = "efficientvit_seg_b0_cityscapes"
RESOLUTION = (64, 128)
# A depthwise conv in the middle of the network (stage 2, second EfficientViT block): the
# damage must be found downstream of healthy layers and upstream of healthy ones.
DAMAGED = "backbone.stages.2.op_list.1.local_module.main.depth_conv"
FACTOR = 1.5


@pytest.fixture(scope="session")
def seg_weights(seeded_checkpoint) -> Path:
    return seeded_checkpoint(SEG_BUILDER)


@pytest.fixture(scope="session")
def export_seg(tmp_path_factory, seg_weights, calib_photos):
    """``export_seg(target, precision)`` -> a seg-B0 64x128 artifact of seeded weights (made once)."""
    from evit_deploy import api

    made: dict[tuple[str, str], Path] = {}

    def make(target: str, precision: str = "fp32") -> Path:
        if (target, precision) not in made:
            out = tmp_path_factory.mktemp(f"{target}-{precision}")
            options = {"plan_only": True} if target == "trt" else {}  # the typed ONNX, no GPU needed
            calibration = {"calib": calib_photos, "calib_samples": 7} if precision == "int8" else {}
            made[target, precision] = api.export(SEG, target=target, precision=precision, weights=seg_weights,
                                                 out=out, resolution=RESOLUTION, options=options,
                                                 **calibration).artifact
        return made[target, precision]

    return make


def export_int8(cli, out, calib, weights, target: str, *extra: object):
    """``evit export`` of seeded seg-B0 at RESOLUTION in int8 on ``target``, 7 calibration images."""
    plan_only = ("--plan-only",) if target == "trt" else ()  # TensorRT's Q/DQ ONNX and plan: no GPU needed
    return cli("export", SEG, "--target", target, "--precision", "int8", "--weights", weights, "--resolution",
               "x".join(map(str, RESOLUTION)), "--calib", calib, "--calib-samples", 7, "--out", out, *extra,
               *plan_only)


def copy_artifact(artifact: Path, dest: Path) -> Path:
    """The artifact and its manifest in ``dest`` (a .mlpackage folder included)."""
    for item in artifact.parent.iterdir():
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copy(item, dest / item.name)
    return dest / artifact.name


def rehash(artifact: Path) -> None:
    """Record the damaged bytes in the manifest, as if the converter had written them: ``debug``
    must find a wrong layer, not a modified file (which every command refuses)."""
    from evit_deploy.manifest import manifest_path_for, sha256_path

    path = manifest_path_for(artifact)
    manifest = json.loads(path.read_text())
    for entry in manifest["files"]:
        entry["sha256"] = sha256_path(artifact.parent / entry["path"])
    path.write_text(json.dumps(manifest, indent=2))


def damage_onnx(artifact: Path, module: str, factor: float) -> None:
    """Scale the weights of ``module``'s convolution in the ONNX file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact))
    (init,) = [i for i in model.graph.initializer if i.name == f"{module}.conv.weight"]
    array = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((array * factor).astype(array.dtype), init.name))
    onnx.save(model, str(artifact))
    rehash(artifact)


# litert-torch's name for the damaged conv's scope (the last part of each module path; found by
# reading the names, independently of evit's own walk back to module paths)
DAMAGED_TFLITE_SCOPE = ("OpSequential_2/evit_deploy.nn.attention.EfficientViTBlock_1/evit_deploy.nn.blocks."
                        "ResidualBlock_local_module/evit_deploy.nn.blocks.MBConv_main/evit_deploy.nn.layers."
                        "ConvLayer_depth_conv/")


def damage_tflite(artifact: Path, scope: str, factor: float) -> None:
    """Scale the filter of the (depthwise) conv whose output tensor is named in ``scope``.

    fp32 filters are scaled; int8 ones keep their values and get their per-channel scales
    scaled, which is the same damage after dequantisation."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(artifact.read_bytes()))
    subgraph = model.subgraphs[0]
    convs = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D}
    found = []
    for op in subgraph.operators:
        code = flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        name = subgraph.tensors[op.outputs[0]].name
        if code in convs and scope in (name.decode() if isinstance(name, bytes) else name):
            found.append(subgraph.tensors[op.inputs[1]])
    (weight,) = found
    if weight.type == schema.TensorType.FLOAT32:
        buffer = model.buffers[weight.buffer]
        buffer.data = (buffer.data.view(np.float32) * factor).astype(np.float32).view(np.uint8)
    else:
        weight.quantization.scale = np.asarray(weight.quantization.scale, dtype=np.float32) * factor
    artifact.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    rehash(artifact)


def damage_coreml(artifact: Path, module: str, factor: float) -> None:
    """Scale ``module``'s conv weight in the package's weight file (its const is named after the
    exported program's parameter: ``p_<path with _>_conv_weight``)."""
    import struct

    import numpy as np

    from evit_deploy.mil.program import model_paths, read_spec

    _, model_dir = model_paths(artifact)
    spec = read_spec(artifact)
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    name = f"p_{module.replace('.', '_')}_conv_weight"
    (const,) = [op for op in block.operations if op.type == "const" and op.outputs[0].name.startswith(name)]
    value = const.attributes["val"]
    dtype = {10: np.float16, 11: np.float32}[value.type.tensorType.dataType]
    blob = model_dir / value.blobFileValue.fileName.replace("@model_path/", "", 1)
    data = bytearray(blob.read_bytes())
    _, _, size, start = struct.unpack_from("<IIQQ", data, value.blobFileValue.offset)
    scaled = (np.frombuffer(bytes(data[start:start + size]), dtype=dtype) * factor).astype(dtype)
    data[start:start + size] = scaled.tobytes()
    blob.write_bytes(bytes(data))
    rehash(artifact)


def conv_macs(weights: Path) -> dict[str, int]:
    """Multiply-adds of every conv of seeded seg-B0 at ``RESOLUTION``, by module path, counted
    from PyTorch's own shapes (output elements x the filter's input channels and window)."""
    import torch

    from evit_deploy import zoo

    model = zoo.create_model(SEG, weights).eval()
    macs: dict[str, int] = {}
    hooks = [module.register_forward_hook(
        lambda m, _inputs, out, name=name: macs.__setitem__(
            name, out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]))
        for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    with torch.inference_mode():
        model(torch.zeros(1, 3, *RESOLUTION))
    for hook in hooks:
        hook.remove()
    return macs


@pytest.fixture(scope="session")
def labelled_seg(tmp_path_factory, seg_weights, test_photos) -> Path:
    """A masks-layout dataset of the test photos (128x256) labelled with the fp32 PyTorch model's own
    classes (input at RESOLUTION, logits upsampled bicubic to the label size): PyTorch scores 100
    mIoU on it, so whatever int8 changes is a drop, never a lucky gain."""
    import numpy as np
    import torch
    import yaml
    from PIL import Image

    from evit_deploy import zoo
    from evit_deploy.labelled.protocol import load_rgb, protocol_at, upsample_argmax

    root = tmp_path_factory.mktemp("labelled")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    card = zoo.get_card(SEG)
    model = zoo.create_model(SEG, seg_weights)
    protocol = protocol_at(card, RESOLUTION)
    for photo in sorted(test_photos.glob("*.png")):
        image = root / "images" / photo.name
        Image.open(photo).convert("RGB").resize((256, 128), Image.Resampling.BICUBIC).save(image)
        with torch.inference_mode():
            logits = model(torch.from_numpy(protocol.prepare(load_rgb(image)))).numpy()[0]
        Image.fromarray(upsample_argmax(logits, (128, 256)).astype(np.uint8)).save(root / "labels" / photo.name)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": list(card.classes), "ignore_index": 255}))
    return root
