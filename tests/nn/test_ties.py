"""Attention tokens whose output fp32 rounding decides: found while the reference runs, broken both ways,
and judged by the outcome the artifact took (never by a looser tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rich.console import Console

from evit_deploy.configs import Tolerances
from evit_deploy.contracts import AmbiguousOutputs
from evit_deploy.nn import LiteMLA
from evit_deploy.nn.ties import MAX_TIES, Tie, TieWatch, flipped_outputs, ill_conditioned
from evit_deploy.parity import Comparator
from evit_deploy.report import print_parity
from evit_deploy.spec import TensorInfo
from evit_deploy.targets.torch_ref import TorchRunner

DIM, H, W = 4, 4, 4
TOKEN = (1, 2)  # (row, col) of the tied token


class QkvIn(torch.nn.Module):
    """A LiteMLA whose qkv conv is the identity: the input *is* qkv (q0..3 k0..3 v0..3). The other
    weights are the same in every instance (a reference and its artifact)."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.mla = LiteMLA(3 * DIM, 3 * DIM, heads=1, dim=DIM, scales=())
        with torch.no_grad():
            self.mla.qkv.conv.weight.copy_(torch.eye(3 * DIM).reshape(3 * DIM, 3 * DIM, 1, 1))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mla(x)


def tied_qkv(near_zero: float) -> torch.Tensor:
    """Keys carry mass only in dims 0 and 1; the tied token's query is positive only in dim 2
    (no key mass: its output is 0/eps = 0) and ``near_zero`` in dim 0 (mass: its sign decides)."""
    g = torch.Generator().manual_seed(0)
    q = torch.rand(DIM, H, W, generator=g) + 0.1
    k = torch.rand(DIM, H, W, generator=g) + 0.1
    k[2:] = -1.0
    v = torch.randn(DIM, H, W, generator=g)
    q[:, TOKEN[0], TOKEN[1]] = torch.tensor([near_zero, -1.0, 0.5, -1.0])
    return torch.cat([q, k, v])[None]


def test_the_tie_is_found_with_the_side_taken():
    model = QkvIn()
    watch = TieWatch(model)
    for near_zero, positive in ((-1e-7, False), (0.0, False), (1e-7, True)):
        with watch.watching(), torch.no_grad():
            model(tied_qkv(near_zero))
        (tie,) = watch.ties
        assert (tie.token, tie.dims, tie.positive) == (("mla", 0, 0, *TOKEN), (0,), positive)
        assert "mla head 0 token (1, 2) of image 0: query components [0]" in watch.ties[0].describe()


def test_firm_key_mass_or_a_clear_sign_is_no_tie():
    model = QkvIn()
    watch = TieWatch(model)
    clear = tied_qkv(-0.3)  # dim 0 clearly negative: the output is 0 for any rounding
    firm = tied_qkv(-1e-7)
    firm[0, 1, TOKEN[0], TOKEN[1]] = 0.4  # dim 1 (with key mass) positive: near-zero dim 0 moves the output by ~1e-7
    for qkv in (clear, firm, torch.randn(2, 3 * DIM, H, W)):
        with watch.watching(), torch.no_grad():
            model(qkv)
        assert watch.ties == []


def test_the_watch_leaves_the_model_as_it_was():
    model = QkvIn()
    x = tied_qkv(-1e-7)
    with torch.no_grad():
        before = model(x)
        with TieWatch(model).watching():
            watched = model(x)
        after = model(x)
    assert "relu_linear_att" not in vars(model.mla)
    torch.testing.assert_close(watched, before, rtol=0, atol=0)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("near_zero", [-1e-7, 1e-7], ids=["taken-as-0", "taken-as-positive"])
def test_flipping_moves_only_the_tied_token_to_the_other_side(near_zero):
    model = QkvIn()
    x = tied_qkv(near_zero)
    watch = TieWatch(model)
    with watch.watching(), torch.no_grad():
        out = model(x)
    with torch.no_grad():
        (flipped,) = flipped_outputs(model, lambda: model(x), watch.ties)
        other = model(tied_qkv(1e-5 if near_zero < 0 else 0.0))  # the other side, computed directly
    changed = (flipped - out).abs().amax(dim=1)[0] > 1e-3
    assert changed[TOKEN] and int(changed.sum()) == 1  # proj and BN are pointwise: only that token moves
    torch.testing.assert_close(flipped, other, rtol=1e-5, atol=1e-6)


def test_two_ties_give_all_flipped_then_each_alone():
    model = QkvIn()
    x = torch.cat([tied_qkv(-1e-7), tied_qkv(1e-7)])
    watch = TieWatch(model)
    with watch.watching(), torch.no_grad():
        model(x)
    assert [t.batch for t in watch.ties] == [0, 1]
    with torch.no_grad():
        assert len(flipped_outputs(model, lambda: model(x), watch.ties)) == 3


def test_nested_interception_restores_the_outer_one():
    model = QkvIn()
    x = tied_qkv(-1e-7)
    watch = TieWatch(model)
    with watch.watching(), torch.no_grad():
        flipped_outputs(model, lambda: model(x), [Tie("mla", 0, 0, *TOKEN, (0,), False, 0.0, 1e-6)])
        model(x)  # still watched after the inner interception ended
    assert len(watch.ties) == 2 and "relu_linear_att" not in vars(model.mla)


def _comparator() -> Comparator:
    return Comparator("classification", 10, Tolerances(max_rel=1e-4))


def test_an_artifact_on_the_other_side_of_a_tie_is_judged_by_that_side():
    reference = {"logits": np.linspace(-1, 1, 10, dtype=np.float32)[None]}
    other_side = {"logits": reference["logits"] + np.float32(0.01)}
    comparator = _comparator()
    comparator.update({"logits": other_side["logits"] + np.float32(1e-7)},
                      AmbiguousOutputs(reference, [other_side], ["mla head 0 token (1, 2): a tie"]))
    report = comparator.report(model="m", artifact="a", precision="fp32", input_source="random")
    assert report.passed and report.outputs["logits"].max_rel < 1e-6
    (note,) = report.notes
    assert note.startswith("sample 1: mla head 0 token (1, 2): a tie; the artifact took the other side")


def test_a_tie_does_not_excuse_an_artifact_that_matches_neither_side():
    reference = {"logits": np.linspace(-1, 1, 10, dtype=np.float32)[None]}
    comparator = _comparator()
    comparator.update({"logits": reference["logits"] * np.float32(1.01)},
                      AmbiguousOutputs(reference, [{"logits": reference["logits"] + np.float32(0.5)}], ["a tie"]))
    report = comparator.report(model="m", artifact="a", precision="fp32", input_source="random")
    assert not report.passed and report.notes == []  # judged against the reference's own side, and fails
    assert report.outputs["logits"].max_rel == pytest.approx(0.01, rel=1e-3)


def _fp32_ties(model: QkvIn, x: torch.Tensor) -> list[Tie]:
    watch = TieWatch(model)
    with watch.watching(), torch.no_grad():
        model(x)
    return watch.ties


def test_a_tie_is_kept_only_where_float64_shows_it_ill_conditioned():
    model = QkvIn()
    x = tied_qkv(-1e-7)
    (tie,) = ill_conditioned(model, lambda exact: exact(x.double()), _fp32_ties(model, x))
    assert tie.denominator == 0.0 and 0 < tie.rounding < 1e-3  # the float64 figures, in its description
    assert "float64 denominator 0 against" in tie.describe()
    forged = Tie("mla", 0, 0, 3, 3, (0,), False, 0.0, 1e-6)  # a token float64 finds well-conditioned
    assert ill_conditioned(model, lambda exact: exact(x.double()), [forged]) == []
    clear = x.clone()
    clear[0, 0, TOKEN[0], TOKEN[1]] = -0.3  # in float64 the component is clearly negative: no excuse
    assert ill_conditioned(model, lambda exact: exact(clear.double()), [tie]) == []


def test_more_than_max_ties_are_none_excused():
    model = QkvIn()
    x = torch.cat([tied_qkv(-1e-7)] * (MAX_TIES + 1))
    ties = _fp32_ties(model, x)
    assert len(ties) == MAX_TIES + 1
    assert ill_conditioned(model, lambda exact: exact(x.double()), ties) == []
    assert len(ill_conditioned(model, lambda exact: exact(x[:MAX_TIES].double()), ties[:MAX_TIES])) == MAX_TIES


def _verify(artifact: QkvIn, x: torch.Tensor):
    """The artifact (here a torch module) against the reference runner verify uses, on one sample."""
    feed = {"x": x.numpy()}
    comparator = Comparator("features", 0, Tolerances(max_rel=1e-4))
    with TorchRunner(QkvIn(), [TensorInfo("x", tuple(x.shape))]) as reference, torch.no_grad():
        expected = reference.run(feed)
        assert isinstance(expected, AmbiguousOutputs)  # the tie is there for both artifacts below
        comparator.update({"logits": artifact(x).numpy()}, expected)
    return comparator.report(model="m", artifact="a", precision="fp32", input_source="random")


def test_a_correct_artifact_on_the_other_side_passes_with_the_token_named():
    x = tied_qkv(-1e-7)
    other_side = x.clone()
    other_side[0, 0, TOKEN[0], TOKEN[1]] = 1e-6  # what a runtime rounding the other way computes
    model = QkvIn()
    report = _verify(lambda _: model(other_side), x)
    assert report.passed
    (excused,) = report.to_dict()["excused"]
    assert excused["sample"] == 1 and excused["max_rel_reference_side"] > 1e-2
    assert excused["max_rel_taken_side"] < 1e-5
    assert excused["tokens"][0].startswith("mla head 0 token (1, 2) of image 0: query components [0]")
    console = Console(width=200, record=True)
    print_parity(console, report)
    assert "excused, sample 1: mla head 0 token (1, 2) of image 0" in console.export_text()


@pytest.mark.parametrize("damage", [1.01, 0.999], ids=["v-weight+1%", "v-weight-0.1%"])
def test_an_artifact_with_one_damaged_attention_weight_still_fails(damage):
    x = tied_qkv(-1e-7)
    damaged = QkvIn()
    with torch.no_grad():
        damaged.mla.qkv.conv.weight[2 * DIM, 2 * DIM] *= damage  # one weight of the value projection
    report = _verify(damaged, x)
    assert not report.passed and report.excused == []
    assert "outputs.logits.max_rel" in [c.name for c in report.failures]
