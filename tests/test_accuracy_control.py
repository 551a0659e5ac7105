"""The target-neutral control loop: how many of the ranked layers it keeps float, and what it measures.

A candidate here is the set of layers kept float, and its agreement a known function of that
set, so each test knows the one right answer; the TFLite tests run the loop on real models.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from evit_deploy.accuracy_control import Ranked, keep_float_until, margin_lost, near_ties, spread
from evit_deploy.control_goal import Goal

RANKING = [Ranked(f"layer{i}", 10.0 - i) for i in range(10)]


def _goal(target: float, max_drop: float | None = None, reference: float | None = None) -> Goal:
    return Goal(lambda predict: 0.0, target, "agreement" if max_drop is None else "mIoU", 3, "images", max_drop,
                reference)


def _loop(gain: dict[str, float], target: float, base: float = 0.9, **kwargs):
    built: list[tuple[str, ...]] = []

    def quantise(names: list[str]) -> tuple[str, ...]:
        built.append(tuple(names))
        return tuple(names)

    def measure(kept: tuple[str, ...]):
        return min(1.0, base + sum(gain.get(n, 0.0) for n in kept)), {"kept": len(kept)}

    return keep_float_until(RANKING, quantise, measure, target, **kwargs), built


def test_plain_int8_meeting_the_target_keeps_nothing_float():
    result, built = _loop({}, 0.85)
    assert result.met and result.kept == [] and built == [()]


def test_the_shortest_prefix_meeting_the_target_is_found_by_bisection():
    gain = {f"layer{i}": 0.01 for i in range(10)}  # each layer float: +1 point
    result, built = _loop(gain, 0.955)
    assert result.met and result.kept == [f"layer{i}" for i in range(6)]  # none can go: each is needed
    assert result.agreement == pytest.approx(0.96)
    prefixes = [b for b in built if b == tuple(f"layer{i}" for i in range(len(b)))]
    assert len(prefixes) <= 2 + 4  # none, all, then log2(10) bisection steps, not one per layer
    # then one try without each of the 6 kept; without layer5 is the prefix of 5, measured already
    assert len(built) == len(prefixes) + 5 and len(set(built)) == len(built)
    steps = result.to_dict()["steps"]  # every candidate measured, in order: the curve
    assert [s["kept_float"] for s in steps] == [len(b) for b in built]
    assert all(s["kept"] == s["kept_float"] for s in steps)  # the backend's extras are recorded
    assert [s["chosen"] for s in steps].count(True) == 1 and result.chosen.agreement == result.agreement


def test_the_layers_the_target_holds_without_are_dropped_again():
    """Seeded seg-B1: 35 layers float agreed 0.939 and 52 agreed 0.917; a prefix keeps layers that
    undo a cancellation of rounding errors, and layers the target does not need, with those that help."""
    gain = {"layer0": 0.03, "layer1": -0.01, "layer2": 0.01, "layer3": 0.0, "layer4": 0.02}
    result, _ = _loop(gain, 0.945)
    assert result.met and result.kept == ["layer0", "layer2", "layer4"]
    assert result.agreement == pytest.approx(0.96)
    dropped = [s.extra["dropped"] for s in result.steps if "dropped" in s.extra]
    # the least harmful first (without layer4 is the prefix of 4, which the bisection measured)
    assert dropped == ["layer3", "layer2", "layer1", "layer0"]


def test_the_costliest_layers_are_offered_back_to_int8_first():
    """Two layers each make up for the other (either one float meets the target): the one kept is
    the cheaper, whatever their harm, because the costlier one was offered back while the other was
    still float. Seeded seg-B1: harm order kept high-resolution convs float and ran at 1.05x fp32."""
    costly = [Ranked(r.name, r.score, 100.0 if r.name == "layer1" else 1.0) for r in RANKING]
    gain = {"layer0": -0.05, "layer1": 0.05, "layer2": 0.05, "layer3": 0.05}
    built: list[tuple[str, ...]] = []

    def quantise(names: list[str]) -> tuple[str, ...]:
        built.append(tuple(names))
        return tuple(names)

    def measure(kept: tuple[str, ...]):
        either = 0.05 if {"layer1", "layer2"} & set(kept) else 0.0
        return 0.9 + either + sum(gain[n] for n in kept if n in ("layer0", "layer3")), {}

    result = keep_float_until(costly, quantise, measure, 0.945)
    assert result.met and result.kept == ["layer2", "layer3"]
    dropped = [s.extra["dropped"] for s in result.steps if "dropped" in s.extra]
    assert dropped[0] == "layer1"  # the costliest first; then by harm, least first
    assert result.to_dict()["ranking"][1] == {"layer": "layer1", "score": 9.0, "cost": 100.0}


@settings(max_examples=60, deadline=None)
@given(gains=st.lists(st.floats(-0.03, 0.03, allow_nan=False), min_size=10, max_size=10),
       target=st.floats(0.85, 1.0), limit=st.one_of(st.none(), st.integers(0, 10)))
def test_a_target_some_prefix_meets_is_met_with_no_more_layers(gains, target, limit):
    gain = {f"layer{i}": g for i, g in enumerate(gains)}
    result, _ = _loop(gain, target, max_kept=limit)
    allowed = 10 if limit is None else limit
    agreement = [min(1.0, 0.9 + sum(gains[:k])) for k in range(allowed + 1)]
    if result.met:
        assert result.agreement >= target and result.chosen.agreement == result.agreement
        assert result.kept == [r.name for r in RANKING if r.name in result.kept]  # worst first, as ranked
        assert len(result.kept) <= allowed
    else:  # bisection sees only some prefixes: unmet means neither plain int8 nor the longest one met
        assert agreement[0] < target and agreement[allowed] < target
        assert result.agreement == max(s.agreement for s in result.steps)


def test_an_unreachable_target_returns_the_best_candidate_unmet_with_a_reason():
    gain = {"layer0": 0.02, "layer1": 0.01}
    result, _ = _loop(gain, 0.9999, max_kept=5)
    assert not result.met
    assert result.agreement == pytest.approx(0.93) and len(result.kept) == 5
    assert result.shortfall(_goal(0.9999)) == (
        "agreement 0.9300 < --min-agreement 0.9999 even with up to the 5 most harmful of 10 "
        "quantised layers in float")


def test_when_more_layers_float_agree_less_the_reason_names_the_best_count_too():
    """Seeded seg-B1's TFLite control measured plain int8 at 0.917 and 36 layers float at 0.905: the
    best candidate is plain, and the line must not say 0 layers were tried."""
    gain = {f"layer{i}": -0.001 for i in range(10)}
    result, _ = _loop(gain, 0.99, max_kept=6)
    assert not result.met and result.kept == [] and result.agreement == pytest.approx(0.9)
    assert result.shortfall(_goal(0.99)) == (
        "agreement 0.9000 < --min-agreement 0.99 even with up to the 6 most harmful of 10 "
        "quantised layers in float, the best with 0 of them")


def test_max_kept_zero_measures_plain_int8_only():
    result, built = _loop({"layer0": 0.5}, 0.95, max_kept=0)
    assert not result.met and result.kept == [] and built == [()]


def test_a_target_above_1_is_refused():
    with pytest.raises(ValueError, match="target score"):
        _loop({}, 1.5)


def test_a_target_at_or_below_0_is_met_by_plain_int8():
    """--max-drop larger than PyTorch's own score: nothing need stay float."""
    result, built = _loop({}, -0.05, base=0.0)
    assert result.met and result.kept == [] and built == [()]


LOGITS = hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(2, 5)),
                    elements=st.floats(-8, 8, width=32), unique=True)


@settings(max_examples=60, deadline=None)
@given(logits=LOGITS, nchw=st.booleans(), drop=st.floats(0.01, 4))
def test_the_margin_lost_counts_only_the_near_tied_pixels_and_only_what_they_lose(logits, nchw, drop):
    """A layer's rank: how much of float's top-1 margin it takes away where that margin is among the
    smallest tenth. Nothing when the output is float's, or when it only widens the margins, or when
    it changes only the confident pixels; the drop itself when it lowers the top logit of the
    near-tied ones by that much (past the runner-up too: that pixel changed class)."""
    reference = logits[None]  # NHWC: (1, H, W, classes); or the same values in NCHW
    axis = 1 if nchw else -1
    as_output = (lambda x: np.moveaxis(x, -1, 1)) if nchw else (lambda x: x)
    ties = near_ties([as_output(reference)], axis)
    near, margins = ties.near[0], ties.margins[0]
    assert near.any() and (near.all() or margins[near].max() < margins[~near].min())
    assert margin_lost(ties, [as_output(reference)], axis) == 0.0
    classes = ties.classes[0][..., None]
    widened = reference.copy()
    np.put_along_axis(widened, classes, np.take_along_axis(reference, classes, -1) + drop, -1)
    assert margin_lost(ties, [as_output(widened)], axis) == 0.0
    lowered = reference.copy()
    np.put_along_axis(lowered, classes, np.take_along_axis(reference, classes, -1) - drop, -1)
    far_only = np.where(near[..., None], reference, lowered)
    assert margin_lost(ties, [as_output(far_only)], axis) == 0.0
    assert margin_lost(ties, [as_output(lowered)], axis) == pytest.approx(drop, rel=1e-4, abs=1e-4)


@given(count=st.integers(1, 10), total=st.integers(0, 60))
def test_ranking_images_are_spread_over_the_set(count, total):
    """The ranking's few images span the calibration set (every k-th), where the first few of a
    folder sorted by name are the views of one photo."""
    images = list(range(total))
    taken = spread(images, count)
    assert len(taken) == min(count, total) and taken == sorted(set(taken))
    if total > count:
        assert taken[0] == 0 and taken[-1] >= total - total / count - 1


def test_a_missed_drop_says_the_metric_the_bar_and_pytorchs_score_in_points():
    result, _ = _loop({"layer0": 0.01}, 0.69, base=0.6, max_kept=3)
    goal = _goal(0.69, max_drop=1.0, reference=0.70)
    assert result.shortfall(goal) == ("mIoU 61.00 < 69.00 (--max-drop 1 under PyTorch's 70.00) even with up to the "
                                      "3 most harmful of 10 quantised layers in float")
    assert goal.missed == "over-max-drop" and _goal(0.9).missed == "below-min-agreement"


def test_with_no_layer_allowed_float_the_reason_says_so():
    result = keep_float_until([], lambda names: tuple(names), lambda kept: (0.5, {}), 0.9)
    assert not result.met and result.shortfall(_goal(0.9)) == (
        "agreement 0.5000 < --min-agreement 0.9 with no layer allowed float (--max-float-share)")
