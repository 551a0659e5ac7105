"""An ML program read from a ``.mlpackage``: its inputs, outputs, operations and weights.

Only the protobuf and the weight file are read (see ``proto`` and ``blob``); nothing here
imports coremltools' converters or PyTorch, so a device without them can load a model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evit_deploy.errors import UsageError
from evit_deploy.mil import proto
from evit_deploy.mil.blob import BlobFile, unpack_bits

# MIL DataType enum values (MIL.proto) -> numpy dtypes; sub-byte types unpack to (u)int8.
_NUMPY = {1: "bool", 2: "str", 10: "float16", 11: "float32", 12: "float64", 21: "int8", 22: "int16",
          23: "int32", 24: "int64", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64"}
_SUB_BYTE = {25: (4, True), 35: (4, False), 36: (2, False), 37: (1, False), 38: (6, False), 39: (3, False)}
_MIL_NAME = {1: "bool", 2: "string", 10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 21: "int8", 22: "int16",
             23: "int32", 24: "int64", 25: "int4", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64",
             35: "uint4", 36: "uint2", 37: "uint1", 38: "uint6", 39: "uint3", 40: "fp8e4m3fn", 41: "fp8e5m2"}


@dataclass(frozen=True)
class TensorType:
    """dtype (numpy name; ``int8``/``uint8`` for sub-byte types) and shape (None: unknown)."""

    dtype: str
    shape: tuple[int | None, ...]
    mil_dtype: str = ""

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.mil_dtype or self.dtype}[{dims}]"


@dataclass
class Operation:
    """One MIL operation. ``inputs`` binds each parameter to value names or inline constants."""

    type: str
    outputs: list[tuple[str, TensorType]]
    inputs: dict[str, list[str | np.ndarray]]
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.attributes.get("name") or (self.outputs[0][0] if self.outputs else self.type))


@dataclass
class Program:
    """The ``main`` function of an ML program, flattened, with the model's description."""

    path: Path
    opset: str
    inputs: list[tuple[str, TensorType]]
    outputs: list[str]
    operations: list[Operation]
    specification_version: int
    metadata: dict[str, str]
    image_inputs: dict[str, dict[str, Any]]  # input name -> {width, height, color}
    output_types: dict[str, TensorType]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operations:
            counts[op.type] = counts.get(op.type, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _tensor_type(value_type: Any) -> TensorType:
    kind = value_type.WhichOneof("type")
    if kind != "tensorType":
        raise UsageError(f"the MIL runner handles tensor values only, not {kind}")
    tensor = value_type.tensorType
    dims = []
    for dim in tensor.dimensions:
        dims.append(dim.constant.size if dim.WhichOneof("dimension") == "constant" else None)
    code = tensor.dataType
    if code in _SUB_BYTE:
        dtype = "int8" if _SUB_BYTE[code][1] else "uint8"
    elif code in _NUMPY:
        dtype = _NUMPY[code]
    else:
        raise UsageError(f"the MIL runner does not know MIL data type {_MIL_NAME.get(code, code)}")
    return TensorType(dtype, tuple(dims), _MIL_NAME.get(code, str(code)))


class _Values:
    """Decodes ``Value`` messages: immediate tensors and weights in the blob file."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.blobs: dict[Path, BlobFile] = {}

    def decode(self, value: Any) -> Any:
        kind = value.type.WhichOneof("type")
        if kind == "dictionaryType":
            return {self.decode(e.key): self.decode(e.value) for e in value.immediateValue.dictionary.values}
        ttype = _tensor_type(value.type)
        shape = tuple(d if d is not None else -1 for d in ttype.shape)
        code = value.type.tensorType.dataType
        bits = _SUB_BYTE.get(code)
        if value.WhichOneof("value") == "blobFileValue":
            blob = value.blobFileValue
            path = self.model_dir / blob.fileName.replace("@model_path/", "", 1)
            if path not in self.blobs:
                if not path.is_file():
                    raise UsageError(f"{path}: weight file missing from the model package")
                self.blobs[path] = BlobFile(path)
            if bits:
                return self.blobs[path].read(blob.offset, ttype.dtype, shape, nbits=bits[0], signed=bits[1])
            return self.blobs[path].read(blob.offset, ttype.dtype, shape)
        tensor = value.immediateValue.tensor
        which = tensor.WhichOneof("value")
        if which is None:
            return np.zeros(shape, dtype=ttype.dtype)
        if which == "strings":
            items = list(tensor.strings.values)
            return items[0] if shape == () else np.array(items, dtype=object).reshape(shape)
        if which == "bytes":
            raw = np.frombuffer(bytes(tensor.bytes.values), dtype=np.uint8)
            if bits:
                count = int(np.prod(shape, dtype=np.int64))
                return unpack_bits(raw, bits[0], count, bits[1]).reshape(shape)
            return raw.view(ttype.dtype).reshape(shape).copy()
        items = list(getattr(tensor, which).values)
        return np.array(items, dtype=ttype.dtype).reshape(shape)


def model_paths(path: Path) -> tuple[Path, Path]:
    """(the model spec file, the folder ``@model_path`` refers to) inside a ``.mlpackage``."""
    if path.is_file():
        raise UsageError(f"{path}: a single-file .mlmodel holds no ML program weights; export an .mlpackage")
    manifest = path / "Manifest.json"
    if not manifest.is_file():
        raise UsageError(f"{path}: not a Core ML model package (no Manifest.json)")
    try:
        info = json.loads(manifest.read_text())
        entry = info["itemInfoEntries"][info["rootModelIdentifier"]]
        spec_path = path / "Data" / entry["path"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UsageError(f"{manifest}: unreadable package manifest ({err})") from None
    if not spec_path.is_file():
        raise UsageError(f"{spec_path}: the model spec named by the package manifest is missing")
    return spec_path, spec_path.parent


def read_spec(path: Path) -> Any:
    """The ``Model`` protobuf of a package."""
    spec_path, _ = model_paths(path)
    model = proto.model_pb2().Model()
    from google.protobuf.message import DecodeError

    try:
        model.ParseFromString(spec_path.read_bytes())
    except DecodeError as err:
        raise UsageError(f"{spec_path}: not a Core ML model spec ({err})") from None
    return model


def load_program(path: str | Path, function: str = "main") -> Program:
    """Parse a package's ML program (one function, its opset's block) into a ``Program``."""
    path = Path(path)
    _, model_dir = model_paths(path)
    model = read_spec(path)
    kind = model.WhichOneof("Type")
    if kind != "mlProgram":
        raise UsageError(f"{path}: a Core ML {kind} model, not an ML program; the MIL runner reads ML programs only")
    program = model.mlProgram
    if function not in program.functions:
        raise UsageError(f"{path}: the ML program has no function {function!r} (it has {list(program.functions)})")
    fn = program.functions[function]
    block = fn.block_specializations[fn.opset]
    values = _Values(model_dir)
    operations = [_operation(op, values) for op in block.operations]
    image_inputs = {}
    for feature in model.description.input:
        if feature.type.WhichOneof("Type") == "imageType":
            image = feature.type.imageType
            color = {10: "GRAYSCALE", 20: "RGB", 30: "BGR", 40: "GRAYSCALE_FLOAT16"}.get(image.colorSpace, "?")
            image_inputs[feature.name] = {"width": image.width, "height": image.height, "color": color}
    output_types = {}
    for feature in model.description.output:
        array = feature.type.multiArrayType
        code = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}.get(array.dataType, "float32")
        output_types[feature.name] = TensorType(code, tuple(array.shape))
    return Program(
        path=path,
        opset=fn.opset,
        inputs=[(i.name, _tensor_type(i.type)) for i in fn.inputs],
        outputs=list(block.outputs),
        operations=operations,
        specification_version=model.specificationVersion,
        metadata=dict(model.description.metadata.userDefined),
        image_inputs=image_inputs,
        output_types=output_types,
    )


def _operation(op: Any, values: _Values) -> Operation:
    if len(op.blocks):
        raise UsageError(f"MIL op {op.type!r} has nested blocks (control flow); the MIL runner does not run control flow")
    inputs: dict[str, list[str | np.ndarray]] = {}
    for key, argument in op.inputs.items():
        bound: list[str | np.ndarray] = []
        for binding in argument.arguments:
            if binding.WhichOneof("binding") == "name":
                bound.append(binding.name)
            else:
                bound.append(values.decode(binding.value))
        inputs[key] = bound
    attributes = {key: values.decode(value) for key, value in op.attributes.items()}
    outputs = [(o.name, _tensor_type(o.type)) for o in op.outputs]
    return Operation(op.type, outputs, inputs, attributes)
