"""The λr range of a toy world v3 variable-rate model, read off its pilot by the rule written before the runs.

docs/toy.md, "part 2: the rules": the range runs from the largest λr whose top-1 (with diffusion, validation split) is
at least 80 % of the VAE ceiling's top-1, to the smallest λr whose top-1 is at most 10 % (chance: 5 %), each variant
its own; both bounds are pilot levels, so the range covers what the rule asks for (it widens, never narrows). Where
no pilot level reaches a bound, the pilot's range was too narrow on that side, and the result says which way to
extend it instead of guessing. Where even the extended pilot stays above 10 % (the caption travels at every level),
``--floor-share`` reads the rate floor instead: the smallest λr whose bpp is within that share of the largest λr's.
``--baseline DIR`` reads a learned baseline's pilot (``baseline_curve.py``: a folder per λ) by the same rule with the
direction turned, as CompressAI's λ buys bits where SLIM's λr saves them.

    .venv/bin/python benchmarks/toy/rate_range.py benchmarks/toy/results/v3/pilot_roi_curve.jsonl \
        --lambda-rate 0.03 0.0897 0.268 0.802 2.40 7.17 21.4 64
    .venv/bin/python benchmarks/toy/rate_range.py benchmarks/toy/results/v3/pilot2_roi_curve.jsonl \
        --lambda-rate 0.802 2.40 7.17 21.4 64 192 575 1724 --floor-share 0.05
    .venv/bin/python benchmarks/toy/rate_range.py --baseline outputs/v3_part2/bpilot-mse
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from convergence import read_lines  # noqa: E402

HIGH_SHARE = 0.8  # of the VAE ceiling's top-1: the accurate end of the curve
LOW_TOP1 = 10.0  # percent: the near-chance end (20 classes: chance 5 %)


def read_range(top1_by_lambda: Dict[float, float], ceiling_top1: float,
               lambda_buys_bits: bool = False) -> Dict[str, Optional[float]]:
    """``top1_by_lambda``: the pilot's top-1 (percent) at each λ. The accurate end is the level of fewest bits still at
    ``HIGH_SHARE`` of the ceiling, the near-chance end the level of most bits at ``LOW_TOP1`` or below, each None where
    no level reaches it; ``extend`` says what the pilot lacks. SLIM's λr saves bits (the accurate end is the largest
    such λr: ``lambda_min``); a learned codec's λ buys them (``lambda_buys_bits``: the accurate end is the smallest such
    λ, ``lambda_max``). ``lambda_min`` < ``lambda_max`` either way."""
    high = HIGH_SHARE * ceiling_top1
    fewest_bits, most_bits = (min, max) if lambda_buys_bits else (max, min)
    accurate = [lam for lam, top1 in top1_by_lambda.items() if top1 >= high]
    near_chance = [lam for lam, top1 in top1_by_lambda.items() if top1 <= LOW_TOP1]
    ends = {"accurate": fewest_bits(accurate) if accurate else None,
            "near-chance": most_bits(near_chance) if near_chance else None}
    name = "λ" if lambda_buys_bits else "λr"
    side = {"accurate": "above" if lambda_buys_bits else "below", "near-chance": "below" if lambda_buys_bits else "above"}
    edge = {"above": max(top1_by_lambda), "below": min(top1_by_lambda)}
    extend = []
    if ends["accurate"] is None:
        extend.append(f"no level reaches {high:.1f} % top-1: extend {side['accurate']} {name} "
                      f"{edge[side['accurate']]:g}")
    if ends["near-chance"] is None:
        extend.append(f"no level is at or below {LOW_TOP1:g} % top-1: extend {side['near-chance']} {name} "
                      f"{edge[side['near-chance']]:g}")
    lo, hi = (ends["near-chance"], ends["accurate"]) if lambda_buys_bits else (ends["accurate"], ends["near-chance"])
    if lo is not None and hi is not None and lo >= hi:
        extend.append(f"the accurate end ({name} {ends['accurate']:g}) and the near-chance end ({name} "
                      f"{ends['near-chance']:g}) are in the wrong order: the curve is not monotone over the pilot; "
                      "look at it before choosing")
    return {"lambda_min": lo, "lambda_max": hi, "threshold_top1": high, "extend": extend}


def baseline_levels(folder: Path, step: Optional[int] = None) -> Dict[float, float]:
    """A ``baseline_curve.py`` pilot's top-1 per λ at ``step`` (default: each λ's last measurement); a λ without that
    measurement is an error, not a gap in the range."""
    out = {}
    for run in sorted(folder.glob("lambda=*")):
        lines = read_lines(run / "curve.jsonl")
        record = (lines[-1] if lines else None) if step is None else next((r for r in lines if r["step"] == step), None)
        if record is None:
            raise ValueError(f"{run}: no measurement{'' if step is None else f' at step {step}'}")
        out[float(record["lambda"])] = float(record["top1"])
    if not out:
        raise ValueError(f"{folder}: no lambda=<λ> folder with a curve")
    return out


def main_levels(lo: Optional[float], hi: Optional[float], n: int = 8) -> Optional[List[float]]:
    """The main model's ``n`` λ spaced geometrically from ``lo`` to ``hi`` (both ends kept), three significant digits;
    None while either end is unknown."""
    if lo is None or hi is None or not 0 < lo < hi:
        return None
    return [float(f"{v:.3g}") for v in np.geomspace(lo, hi, n)]


def rate_floor(bpp_by_lambda: Dict[float, float], share: float) -> Dict[str, float]:
    """The near-chance end when no level reaches ``LOW_TOP1``: the smallest λr whose bpp is within ``share`` of the
    bpp at the largest λr (beyond it more λr buys almost no fewer bits: the latent carries next to nothing and what
    top-1 is left comes from the caption)."""
    largest = max(bpp_by_lambda)
    limit = (1.0 + share) * bpp_by_lambda[largest]
    lam = min(lam for lam, bpp in bpp_by_lambda.items() if bpp <= limit)
    return {"lambda_max": lam, "bpp": bpp_by_lambda[lam], "bpp_at_largest": bpp_by_lambda[largest], "share": share}


def levels_by_lambda(record: dict, lambdas: Sequence[float], key: str = "top1") -> Dict[float, float]:
    """A ``train_curve.py`` line's top-1 (``key="bpp"``: mean bpp) per level, keyed by λr (level 0 is the largest λr:
    the fewest bits)."""
    ordered = sorted(lambdas, reverse=True)
    if len(ordered) != len(record["levels"]):
        raise ValueError(f"{len(lambdas)} λr given, the curve has {len(record['levels'])} levels")
    value = (lambda entry: entry["top1"]["value"]) if key == "top1" else (lambda entry: entry[key])
    return {ordered[int(level)]: value(entry) for level, entry in record["levels"].items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curve", type=Path, nargs="?", help="the pilot's curve.jsonl (train_curve.py)")
    parser.add_argument("--lambda-rate", type=float, nargs="+", help="the λr the pilot was given")
    parser.add_argument("--baseline", type=Path, default=None, help="a baseline_curve.py pilot's --out instead")
    parser.add_argument("--step", type=int, default=None, help="the measurement to read (default: the last)")
    parser.add_argument("--ceiling", type=Path, default=HERE / "results" / "foundation_v3.json",
                        help="the VAE ceiling's top-1 comes from here")
    parser.add_argument("--floor-share", type=float, default=None,
                        help="where no level is at or below 10 %% top-1, read the rate floor instead: the smallest "
                             "λr whose bpp is within this share of the largest λr's (the rule: 0.05)")
    args = parser.parse_args(argv)
    ceiling = json.loads(args.ceiling.read_text())["gates"]["vae_ceiling"]["top1"]["value"]
    if args.baseline is not None:
        try:
            top1 = baseline_levels(args.baseline, args.step)
        except ValueError as e:
            parser.error(str(e))
        result = read_range(top1, ceiling, lambda_buys_bits=True)
        result["main_levels"] = main_levels(result["lambda_min"], result["lambda_max"])
        print(json.dumps({"step": args.step, "vae_ceiling_top1": ceiling, "top1": {f"{k:g}": v for k, v in
                                                                               sorted(top1.items())}, **result},
                         indent=2, ensure_ascii=False))
        return 0
    if args.curve is None or not args.lambda_rate:
        parser.error("give a train_curve.py curve and its --lambda-rate, or --baseline DIR")
    lines = read_lines(args.curve)
    if not lines:
        parser.error(f"{args.curve}: no measurement there (no such file, or an empty curve)")
    record = lines[-1] if args.step is None else next(r for r in lines if r["step"] == args.step)
    result = read_range(levels_by_lambda(record, args.lambda_rate), ceiling)
    if args.floor_share is not None and result["lambda_max"] is None:
        floor = rate_floor(levels_by_lambda(record, args.lambda_rate, key="bpp"), args.floor_share)
        top1 = levels_by_lambda(record, args.lambda_rate)
        result.update(lambda_max=floor["lambda_max"], floor={**floor, "top1": top1[floor["lambda_max"]]})
        result["extend"] = [e for e in result["extend"] if "extend above" not in e]
    result["main_levels"] = main_levels(result["lambda_min"], result["lambda_max"])
    print(json.dumps({"step": record["step"], "vae_ceiling_top1": ceiling, **result}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
