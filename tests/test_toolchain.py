"""A converter that fails on a model evit hands it exits 3, in one line naming the converter, its
version and its own error line, with the whole story in a log file (not exit 2: the call was fine)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch

from evit_deploy import zoo
from evit_deploy.nn.builders import efficientvit_seg_b0

MODEL = "efficientvit-test-unconvertible"


class Unconvertible(torch.nn.Module):
    """seg-B0 with an op neither litert-torch nor coremltools 9.0 lowers (aten.erfinv)."""

    def __init__(self, dataset: str = "cityscapes") -> None:
        super().__init__()
        self.seg = efficientvit_seg_b0(dataset=dataset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfinv(torch.tanh(self.seg(x)))


@pytest.fixture(scope="module", autouse=True)
def unconvertible_card(registered_model: Any) -> Iterator[None]:
    base = zoo.get_card("efficientvit-seg-b0-cityscapes").to_dict()
    base.pop("computed")
    card = zoo.ModelCard.model_validate({**base, "name": MODEL, "builder": "test_unconvertible"})
    with registered_model("test_unconvertible", Unconvertible, card):
        yield


@pytest.mark.parametrize(("target", "tool"), [("tflite", "litert-torch"), ("coreml", "coremltools")])
def test_a_converter_crash_exits_3_naming_the_converter(cli, tmp_path: Path, target: str, tool: str) -> None:
    out = tmp_path / "out"
    result = cli("export", MODEL, "--target", target, "--resolution", "64x128", "--out", out)
    assert result.code == 3, result
    (line,) = result.error_lines
    assert line.startswith(f"error: {tool} {metadata.version(tool)} failed to convert ")
    assert "erfinv" in line
    log = Path(re.search(r"full log: (\S+)\)$", line).group(1))
    assert log.is_file() and "Traceback" in log.read_text()
    assert "Traceback" not in result.stderr
    assert not out.exists()  # the run created it; it fails, so it leaves no empty folder behind
