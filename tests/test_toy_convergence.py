"""Toy world v3's stopping rule (benchmarks/toy/convergence.py): a run stops when its validation curve has flattened
after its minimum steps, or at its maximum, and says why with its end slopes."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "toy"))

import convergence  # noqa: E402

RULE = convergence.Rule(min_steps=5000, max_steps=15000, horizon=2000, window=4)


def curve(top1, bpp, every=500):
    return [{"step": every * (i + 1), "top1": t, "bpp": b} for i, (t, b) in enumerate(zip(top1, bpp))]


def test_a_rising_curve_does_not_stop():
    c = curve([10, 20, 30, 40, 50, 60, 70, 75, 80, 85], [0.5] * 10)  # +5 points per 500 steps at the end
    verdict = convergence.decide(c, RULE)
    assert not verdict["stop"] and verdict["reason"] == "still changing"
    assert verdict["end_slopes"]["top1"] == pytest.approx(20.0)  # 0.01 per step over 2000 steps


def test_a_flat_curve_stops_only_after_min_steps():
    flat = [50.0, 50.2, 49.9, 50.1]
    early = convergence.decide(curve(flat, [0.30, 0.30, 0.30, 0.30]), RULE)  # ends at step 2000
    assert not early["stop"] and "min_steps" in early["reason"]
    late = convergence.decide(curve([40] * 6 + flat, [0.3] * 10), RULE)  # ends at step 5000
    assert late["stop"] and late["reason"] == "flattened" and late["step"] == 5000


def test_every_tracked_metric_must_be_flat():
    # top-1 flat, but the rate still falls 4 % of its value over the horizon: not flat (tolerance 2 %, relative)
    c = curve([50.0] * 10, [0.30 - 0.003 * i for i in range(10)])
    verdict = convergence.decide(c, RULE)
    assert not verdict["stop"] and verdict["end_slopes"]["bpp"] == pytest.approx(-0.012)


def test_max_steps_stops_whatever_the_slope():
    c = curve([float(i) for i in range(30)], [0.3] * 30)  # ends at step 15000, still rising
    verdict = convergence.decide(c, RULE)
    assert verdict["stop"] and "max_steps" in verdict["reason"]


def test_too_few_measurements_and_bad_input():
    assert not convergence.decide(curve([1, 2], [0.3, 0.3]), RULE)["stop"]
    assert convergence.decide([], RULE)["reason"] == "not measured yet"
    with pytest.raises(ValueError, match="increase"):
        convergence.decide([{"step": 2, "top1": 1, "bpp": 1}, {"step": 1, "top1": 1, "bpp": 1}], RULE)
    with pytest.raises(ValueError, match="at least 3"):
        convergence.Rule(min_steps=1, max_steps=2, horizon=1, window=2)


def test_rule_for_fills_only_what_was_not_given():
    from argparse import Namespace

    args = Namespace(segment=None, min_steps=None, max_steps=None, horizon=None, lr=None, warmup=None)
    rule = convergence.rule_for(args, segment=500, min_steps=5000, lr=2e-4)
    assert (args.segment, args.min_steps, args.max_steps, args.horizon, args.lr, args.warmup) == (
        500, 5000, 15000, 2000, 2e-4, 250)
    assert (rule.min_steps, rule.max_steps, rule.horizon) == (5000, 15000, 2000)
    assert [t[0] for t in rule.tolerances] == ["top1", "bpp"]
    given = Namespace(segment=2, min_steps=4, max_steps=6, horizon=3, lr=1e-3, warmup=0)
    rule = convergence.rule_for(given, segment=500, min_steps=5000, lr=2e-4, tolerances=(("psnr", 0.1, False),))
    assert (given.segment, given.min_steps, given.max_steps, given.horizon, given.lr, given.warmup) == (
        2, 4, 6, 3, 1e-3, 0)
    assert rule.tolerances == (("psnr", 0.1, False),)
