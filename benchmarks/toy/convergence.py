"""When a toy world v3 training has flattened: the stopping rule, written down before the runs it stops.

Toy world v3 (part 2) trains every model — SLIM's stage 1 and stage 2 per variant, the learned baselines — in segments,
measures it on the validation split (seed 5) after each segment, and stops it by this rule, never by looking at the
test set:

- **tracked**: the metrics a run names (SLIM: top-1 with diffusion averaged over the rate levels, and the mean bpp
  over the levels from real bytes; the MSE baseline: PSNR; the task baseline: top-1);
- **end slope**: the least-squares slope of each metric over its last ``window`` measurements (at least 3);
- **flattened** when, for every tracked metric, the slope extrapolated over ``horizon`` more steps changes it by less
  than its tolerance (top-1: 1 point; PSNR: 0.1 dB; bpp: 2 % of its last value);
- a run stops when it has flattened **and** has trained at least ``min_steps`` (ten times toy world v2's steps),
  or at ``max_steps`` (three times ``min_steps``), whichever comes first; the report gives every run's end slopes.

``decide`` returns the verdict with the slopes, so that a results file can say why each run stopped.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np


def log_line(path: Path, record: dict) -> None:
    """Append one measurement (a JSON line) to a run's curve, on disk before it returns."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: Path) -> list:
    """The records ``log_line`` appended to ``path`` (none if it is not there yet)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


@dataclass(frozen=True)
class Rule:
    min_steps: int
    max_steps: int
    horizon: int  # steps the end slope is extrapolated over
    window: int = 4  # measurements the end slope is fitted to
    # metric → (tolerance, relative): a change below tolerance (× the last value when relative) is flat
    tolerances: Tuple[Tuple[str, float, bool], ...] = (("top1", 1.0, False), ("bpp", 0.02, True))

    def __post_init__(self):
        if self.window < 3:
            raise ValueError("the end slope needs at least 3 measurements")
        if not 0 < self.min_steps <= self.max_steps:
            raise ValueError(f"need 0 < min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")


def end_slope(steps: Sequence[float], values: Sequence[float], window: int) -> Optional[float]:
    """Least-squares slope (per step) of the last ``window`` points; None with fewer points."""
    if len(steps) < window:
        return None
    x = np.asarray(steps[-window:], dtype=np.float64)
    y = np.asarray(values[-window:], dtype=np.float64)
    if np.ptp(x) == 0:
        raise ValueError("the measurements must be at different steps")
    return float(np.polyfit(x, y, 1)[0])


def decide(curve: Sequence[Dict[str, float]], rule: Rule) -> Dict[str, object]:
    """``curve``: one dict per measurement with ``step`` and the tracked metrics, in step order. Returns
    ``{"stop": bool, "reason": str, "step": int, "end_slopes": {metric: change over the horizon}}``."""
    if not curve:
        return {"stop": False, "reason": "not measured yet", "step": 0, "end_slopes": {}}
    steps = [float(r["step"]) for r in curve]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("the curve's steps must increase")
    step = int(steps[-1])
    changes, flat = {}, True
    for name, tolerance, relative in rule.tolerances:
        slope = end_slope(steps, [float(r[name]) for r in curve], rule.window)
        if slope is None:
            changes[name], flat = None, False
            continue
        change = slope * rule.horizon
        changes[name] = change
        limit = tolerance * abs(float(curve[-1][name])) if relative else tolerance
        flat &= abs(change) < limit
    if step >= rule.max_steps:
        return {"stop": True, "reason": f"reached max_steps {rule.max_steps}", "step": step, "end_slopes": changes}
    if flat and step >= rule.min_steps:
        return {"stop": True, "reason": "flattened", "step": step, "end_slopes": changes}
    reason = "still changing" if not flat else f"flat, but below min_steps {rule.min_steps}"
    return {"stop": False, "reason": reason, "step": step, "end_slopes": changes}


def rule_for(args, segment: int, min_steps: int, lr: float, tolerances=None) -> Rule:
    """Fill a segmented run's unset ``--segment``, ``--min-steps``, ``--lr`` with its script's defaults, and
    ``--max-steps`` (three times the minimum), ``--horizon`` (four segments) and ``--warmup`` (5 % of the minimum) as
    the rule says; ``args`` is changed in place. Returns the run's :class:`Rule`."""
    args.segment = args.segment or segment
    args.min_steps = args.min_steps or min_steps
    args.max_steps = args.max_steps or 3 * args.min_steps
    args.horizon = args.horizon or 4 * args.segment
    args.lr = args.lr or lr
    args.warmup = args.warmup if args.warmup is not None else max(args.min_steps // 20, 1)
    return Rule(min_steps=args.min_steps, max_steps=args.max_steps, horizon=args.horizon,
                **({} if tolerances is None else {"tolerances": tolerances}))
