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
def export_seg(tmp_path_factory, seg_weights):
    """``export_seg(target, precision)`` -> a seg-B0 64x128 artifact of seeded weights (made once)."""
    from evit_deploy import api

    made: dict[tuple[str, str], Path] = {}

    def make(target: str, precision: str = "fp32") -> Path:
        if (target, precision) not in made:
            out = tmp_path_factory.mktemp(f"{target}-{precision}")
            options = {"plan_only": True} if target == "trt" else {}  # the typed ONNX, no GPU needed
            made[target, precision] = api.export(SEG, target=target, precision=precision, weights=seg_weights,
                                                 out=out, resolution=RESOLUTION, options=options).artifact
        return made[target, precision]

    return make


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
    from evit_deploy.artifact import manifest_path_for, sha256_path

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
