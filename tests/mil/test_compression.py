"""Compressed weights (palettized, int8) in every MIL form the Core ML target can write.

The interpreter's ``constexpr_*`` ops are checked against coremltools' own decompression
(``decompress_weights``): the same program with dense constants must give identical outputs.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from evit_deploy.mil import Interpreter, load_program


@pytest.fixture(scope="module")
def conv_program():
    module = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
                                 torch.nn.Conv2d(64, 48, 1)).eval()
    x = np.random.default_rng(0).standard_normal((1, 64, 6, 6)).astype(np.float32)
    with torch.no_grad():
        program = torch.export.export(module, (torch.from_numpy(x),)).run_decompositions({})
    return program, x


# iOS16/17 write the iOS16 forms (per-tensor LUT, affine dequantize); iOS18 its blockwise forms.
@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
@pytest.mark.parametrize("how,op", [("palettize4", "constexpr_lut_to_dense"), ("palettize6", "constexpr_lut_to_dense"),
                                    ("palettize8", "constexpr_lut_to_dense"),
                                    ("int8", None)])
def test_compressed_weights_decompress_like_coremltools(conv_program, target, how, op, tmp_path):
    from coremltools.optimize import coreml as cto

    from evit_deploy.coreml.compress import compress
    from evit_deploy.coreml.options import deployment_level
    from evit_deploy.coreml.tools import import_coremltools, quiet_coremltools

    ct = import_coremltools()
    program, x = conv_program
    with quiet_coremltools():
        mlmodel = ct.convert(program, convert_to="mlprogram", skip_model_load=True,
                             inputs=[ct.TensorType(name="in0", shape=x.shape, dtype=np.float32)],
                             outputs=[ct.TensorType(name="out", dtype=np.float32)],
                             minimum_deployment_target=getattr(ct.target, target),
                             compute_precision=ct.precision.FLOAT16)
        compressed, summary = compress(ct, mlmodel, how, deployment_level(target))
        compressed.save(str(tmp_path / "c.mlpackage"))
        cto.decompress_weights(compressed).save(str(tmp_path / "d.mlpackage"))
    packed = load_program(tmp_path / "c.mlpackage")
    dense = load_program(tmp_path / "d.mlpackage")
    expected_op = op or ("constexpr_blockwise_shift_scale" if target == "iOS18" else "constexpr_affine_dequantize")
    assert packed.op_counts().get(expected_op) == 2, packed.op_counts()
    assert not any(t.startswith("constexpr_") for t in dense.op_counts())
    if how.startswith("palettize"):
        assert summary["granularity"].startswith("per_grouped_channel" if target == "iOS18" else "per_tensor")
    got = Interpreter(packed).run({"in0": x})["out"]
    want = Interpreter(dense).run({"in0": x})["out"]
    np.testing.assert_array_equal(got, want)
