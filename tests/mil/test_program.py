"""Reading ML programs: weight file, sub-byte packing, loud failures, and no torch on the runner side."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from evit_deploy.mil import Interpreter, MilError, UnsupportedOp, load_program
from evit_deploy.mil.blob import BlobFile, unpack_bits

from .conftest import convert


@pytest.fixture(scope="module")
def small_package(tmp_path_factory) -> tuple[Path, np.ndarray]:
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.Hardswish(),
                                 torch.nn.Conv2d(64, 8, 1)).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    path = convert(module, [x], tmp_path_factory.mktemp("mil") / "small.mlpackage", precision="fp16")
    return path, x


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_unpack_bits_matches_coremltools(nbits, signed):
    from coremltools.optimize._utils import pack_elements_into_bits, restore_elements_from_packed_bits

    rng = np.random.default_rng(nbits)
    low, high = (-(1 << (nbits - 1)), 1 << (nbits - 1)) if signed else (0, 1 << nbits)
    values = rng.integers(low, high, size=37).astype(np.int8 if signed else np.uint8)
    packed = pack_elements_into_bits(values, nbits)
    np.testing.assert_array_equal(unpack_bits(packed, nbits, values.size, signed), values)
    np.testing.assert_array_equal(unpack_bits(packed, nbits, values.size, signed),
                                  restore_elements_from_packed_bits(packed, nbits, values.size, signed))


def test_weight_file_reads_like_coremltools(small_package):
    from coremltools.libmilstoragepython import _BlobStorageReader

    path, _ = small_package
    weights = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    ours, theirs = BlobFile(weights), _BlobStorageReader(str(weights))
    program = load_program(path)
    checked = 0
    for op in program.operations:
        value = op.attributes.get("val")
        if op.type == "const" and isinstance(value, np.ndarray) and value.dtype == np.float16 and value.size > 64:
            offset = _blob_offset(path, op.outputs[0][0])
            expected = np.frombuffer(theirs.read_fp16_data(offset).tobytes(), np.float16)
            np.testing.assert_array_equal(ours.read(offset, "float16", (expected.size,)), expected)
            np.testing.assert_array_equal(value.ravel(), expected)
            checked += 1
    assert checked >= 1


def _blob_offset(path: Path, name: str) -> int:
    from evit_deploy.mil.program import read_spec

    block = read_spec(path).mlProgram.functions["main"]
    ops = block.block_specializations[block.opset].operations
    (op,) = [o for o in ops if o.outputs[0].name == name]
    return op.attributes["val"].blobFileValue.offset


def test_unknown_op_fails_naming_it(small_package):
    path, _ = small_package
    program = load_program(path)
    victim = next(op for op in program.operations if op.type == "sigmoid_hard")
    victim.type = "sigmoid_fancy"
    with pytest.raises(UnsupportedOp, match=r"'sigmoid_fancy' \(1x\)"):
        Interpreter(program)


def test_op_giving_an_undeclared_shape_fails_at_the_op(small_package):
    from evit_deploy.mil.program import TensorType

    path, x = small_package
    program = load_program(path)
    victim = next(op for op in program.operations if op.type == "conv")
    name, ttype = victim.outputs[0]
    victim.outputs[0] = (name, TensorType(ttype.dtype, (1, 64, 8, 9), ttype.mil_dtype))
    with pytest.raises(MilError, match=r"'conv'.*shape \[1, 64, 8, 8\]"):
        Interpreter(program).run({"in0": x})


def test_fp16_program_keeps_fp16_between_ops(small_package):
    path, x = small_package
    seen: dict[str, str] = {}
    Interpreter(load_program(path)).run({"in0": x}, observe=lambda op, out: seen.update(
        {op.type: next(iter(out.values())).dtype.name}))
    assert seen["conv"] == "float16" and seen["sigmoid_hard"] == "float16"
    assert seen["cast"] in ("float16", "float32")


def test_runner_side_imports_neither_torch_nor_coremltools(small_package):
    """Devices run the runner without torch; the interpreter reads coremltools' protobuf files only."""
    path, x = small_package
    np.save(path.parent / "x.npy", x)
    code = (
        "import sys, numpy as np\n"
        "from evit_deploy.mil import Interpreter, load_program\n"
        f"p = load_program({str(path)!r})\n"
        f"out = Interpreter(p).run({{'in0': np.load({str(path.parent / 'x.npy')!r})}})['out']\n"
        "assert out.shape == (1, 8, 8, 8), out.shape\n"
        "bad = [m for m in ('torch', 'coremltools') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_not_a_package_is_one_clear_line(tmp_path):
    from evit_deploy.errors import UsageError

    (tmp_path / "x.mlpackage").mkdir()
    with pytest.raises(UsageError, match="not a Core ML model package"):
        load_program(tmp_path / "x.mlpackage")
