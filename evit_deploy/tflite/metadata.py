"""The ``evit`` metadata entry of a .tflite: what an app reads to feed the model and name its outputs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.contracts import ArtifactFacts
from evit_deploy.errors import UsageError
from evit_deploy.spec import TensorInfo


def add_metadata(content: bytes, entries: dict[str, Any]) -> bytes:
    """Attach ``entries`` as JSON under the flatbuffer metadata name ``evit`` (apps read it)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(entries, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    metadata = schema.MetadataT()
    metadata.name = "evit"
    metadata.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name) != "evit"]
    model.metadata.append(metadata)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``evit`` metadata of a .tflite written by this target ({} when absent)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == "evit":
            return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    return {}


def read_facts(path: Path) -> ArtifactFacts:
    """The task, precision and inputs a .tflite written by evit carries."""
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
        subgraph = model.subgraphs[0]
        inputs = []
        for index in subgraph.inputs:
            tensor = subgraph.tensors[index]
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            inputs.append(TensorInfo(name, tuple(int(d) for d in tensor.shape)))
        meta = read_metadata(path)
    except Exception as err:  # noqa: BLE001 - a flatbuffer that does not parse is no TFLite model
        raise UsageError(f"{path.name}: not a TFLite model ({type(err).__name__}); re-export it") from None
    return ArtifactFacts(task=meta.get("task"), precision=meta.get("precision"), inputs=inputs)
