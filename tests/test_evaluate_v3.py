"""benchmarks/toy/evaluate_v3.py: part 2's final evaluation, and the rules its claims are decided by."""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "toy"))

CLASSIFIERS = ("resnet", "resnet_b")


def rows_of(codec, curve, n=100, label=0, size=96):
    """Harness rows of one codec: ``curve`` maps a rate point to (bytes per image, top-1 %); the first images of
    each point are the hits, for both classifiers."""
    rows = []
    for point, (num_bytes, top1) in curve.items():
        hits = int(round(top1 * n / 100))
        for i in range(n):
            top5 = [label, 1, 2, 3, 4] if i < hits else [1, label, 2, 3, 4]
            rows.append({"codec": codec, "rate_point": point, "index": i, "width": size, "height": size,
                         "bytes": num_bytes, "bpp": 8 * num_bytes / size**2, "label": label,
                         "top5": {c: top5 for c in CLASSIFIERS}, "encode_seconds": 0.0, "decode_seconds": 0.0})
    return rows


def test_the_wrong_caption_names_another_kind():
    from evaluate_v3 import wrong_caption

    from slim_diffusers import toy_world

    wrong = [wrong_caption(f"a {k}") for k in toy_world.KINDS]
    assert sorted(wrong) == sorted(f"a {k}" for k in toy_world.KINDS)
    assert all(w != f"a {k}" for w, k in zip(wrong, toy_world.KINDS))
    with pytest.raises(ValueError, match="not a toy world caption"):
        wrong_caption("a striped star")


def test_a_bd_rate_over_less_than_20_shared_points_is_refused():
    import evaluate_v3

    from slim_diffusers.evaluation import statistics

    slim = {"rate=0": (40, 10.0), "rate=1": (80, 40.0), "rate=2": (160, 70.0)}
    narrow = {"q=1": (300, 60.0), "q=2": (600, 80.0), "q=3": (900, 90.0)}  # shares 60-70: 10 points
    wide = {"q=1": (60, 20.0), "q=2": (120, 50.0), "q=3": (240, 80.0)}  # shares 20-70: 50 points, costs more
    rows = rows_of("SLIM", slim) + rows_of("narrow", narrow) + rows_of("wide", wide)
    summary = statistics.summarize_with_intervals(rows, CLASSIFIERS)
    assert evaluate_v3.overlap(summary, "narrow", "SLIM", "resnet") == [60.0, 70.0]
    refused = evaluate_v3.bd_with_overlap(rows, summary, CLASSIFIERS, "narrow", "SLIM", replicates=50)
    assert "refused" in refused["resnet"] and "pchip" not in refused["resnet"]
    assert evaluate_v3._bd_held(refused["resnet"]) is None
    measured = evaluate_v3.bd_with_overlap(rows, summary, CLASSIFIERS, "wide", "SLIM", replicates=50)
    cell = measured["resnet"]
    assert cell["overlap_points"] == 50.0 and "refused" not in cell
    assert cell["pchip"]["bd_rate"]["estimate"] < 0 and cell["cubic"]["bd_rate"]["estimate"] < 0
    assert evaluate_v3._bd_held(cell) is True
    # disjoint curves share nothing
    far = rows_of("far", {"q=1": (500, 80.0), "q=2": (900, 95.0)})
    summary = statistics.summarize_with_intervals(rows + far, CLASSIFIERS)
    assert evaluate_v3.overlap(summary, "far", "SLIM", "resnet") is None


def _bits(ratio_inside, levels=2, n=30, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(levels):
        n_in, n_out = rng.integers(5, 10, n).astype(float), rng.integers(20, 30, n).astype(float)
        out.append({"bits_in": n_in * ratio_inside * (1 + 0.05 * rng.random(n)), "n_in": n_in,
                    "bits_out": n_out * (1 + 0.05 * rng.random(n)), "n_out": n_out})
    return out


def test_claims_are_decided_by_the_written_rules():
    import evaluate_v3

    levels = ("rate=0", "rate=1")
    slim = {"rate=0": (40, 30.0), "rate=1": (120, 70.0)}
    rows = rows_of("SLIM", slim) + rows_of("SLIM w/o diffusion", {"rate=0": (40, 10.0), "rate=1": (120, 60.0)})
    rows += rows_of("SLIM w/o RoI", {"rate=0": (60, 25.0), "rate=1": (180, 70.0)})
    rows += rows_of("SLIM w/o RoI w/o diffusion", {"rate=0": (60, 20.0), "rate=1": (180, 70.0)})
    for name in ("SLIM empty caption", "SLIM wrong caption", "SLIM 2 steps", "SLIM 4 steps"):
        rows += rows_of(name, {p: (b, t - 5.0) for p, (b, t) in slim.items()})
    rows += rows_of("caption only", {"caption": (12, 20.0)})
    rows += rows_of("JPEG", {"q=1": (100, 28.0), "q=2": (400, 72.0)})
    decided = evaluate_v3.decide(rows, {"roi": _bits(3.0), "noroi": _bits(1.0)}, replicates=100)["claims"]
    assert decided["levels"] == list(levels)
    c1 = decided["claim1_roi"]
    assert c1["bits_part_held"] is True  # 3× the bits per position inside, at both levels
    assert c1["bd_rate_vs_without_roi"]["resnet"]["pchip"]["bd_rate"]["estimate"] < 0 and c1["held"] is True
    jpeg = decided["claim2_baselines"]["per_baseline"]["JPEG"]
    assert jpeg["held"] is True and jpeg["bd"]["resnet"]["overlap_points"] == pytest.approx(40.0)
    c3 = decided["claim3_diffusion"]
    assert c3["held_at"] == {"rate=0": True, "rate=1": True} and c3["held"] is True  # +20 and +10 points
    assert c3["per_level_without_roi"]["rate=1"]["resnet"]["difference"]["difference"] == 0.0
    assert decided["caption"]["true_vs_wrong_kind"]["rate=0"]["resnet"]["difference"]["difference"] == 5.0
    assert decided["caption"]["caption_only"]["resnet"]["top1"]["top1"] == 20.0
    assert decided["decoding_steps"]["rate=1"][1]["resnet"]["top1"] == 70.0
    assert decided["decoding_steps"]["rate=1"][4]["resnet"]["top1"] == 65.0

    # the same rows with RoI bits no different from without: the claim fails on its first part
    worse = evaluate_v3.decide(rows, {"roi": _bits(1.0, seed=1), "noroi": _bits(1.0, seed=2)}, replicates=100)
    assert worse["claims"]["claim1_roi"]["bits_part_held"] is False and worse["claims"]["claim1_roi"]["held"] is False

    # the tables a reader reads, from results.json as written (JSON: the decode steps' keys become strings)
    text = evaluate_v3.claims_markdown(json.loads(json.dumps(decided)))
    assert "## Claim 1, RoI: **held**" in text and "## Claim 3, diffusion: **held**" in text
    assert "| JPEG | **held** |" in text and "over top-1 30.0–70.0 %" in text
    assert "| SLIM | rate=0 | 30.0 | +20.0 [" in text  # with diffusion 30 %, without 10 %
    assert "| rate=1 | 70.0 | 65.0 | 65.0 |" in text  # 1, 2 and 4 steps
    worse_text = evaluate_v3.claims_markdown(worse["claims"])
    assert "## Claim 1, RoI: **did not hold**" in worse_text and "Bits part: did not hold" in worse_text
    refused = json.loads(json.dumps(decided))
    refused["claim2_baselines"]["per_baseline"]["JPEG"] = {
        "held": None, "bd": {c: {"refused": "the curves share 5.0 points of top-1, under 20"} for c in ("resnet", "resnet_b")}}
    assert "| JPEG | **not decided** | refused (the curves share 5.0 points" in evaluate_v3.claims_markdown(refused)
    uncomputable = json.loads(json.dumps(decided))
    uncomputable["claim2_baselines"]["per_baseline"]["JPEG"]["bd"]["resnet"]["pchip"]["bd_rate"].update(
        estimate=None, low=None, high=None, error="the curves do not overlap")
    assert "pchip not computable (the curves do not overlap); cubic" in evaluate_v3.claims_markdown(uncomputable)


def test_the_smoke_run_writes_every_result_and_resumes(tmp_path):
    import evaluate_v3

    work = tmp_path / "eval"
    # SLIM's codecs first (their rows cached, nothing decided), then the full call evaluates only the rest
    assert evaluate_v3.main(["--smoke", "--slim-only", "--work-dir", str(work)]) == 0
    assert not (work / "results").exists()
    slim_rows = [json.loads(line) for p in sorted((work / "eval").glob("rows*.jsonl")) for line in p.read_text().splitlines()]
    assert slim_rows and all(r["codec"].startswith("SLIM") or r["codec"] == "caption only" for r in slim_rows)
    assert evaluate_v3.main(["--smoke", "--work-dir", str(work)]) == 0
    after = [json.loads(line) for p in sorted((work / "eval").glob("rows*.jsonl")) for line in p.read_text().splitlines()]
    assert sum(r["codec"].startswith("SLIM") or r["codec"] == "caption only" for r in after) == len(slim_rows)
    res = work / "results"
    for name in ("results.json", "summary.json", "rows.jsonl.gz", "rate_accuracy.png", "bd_rate.md", "claims.md"):
        assert (res / name).is_file(), name
    results = json.loads((res / "results.json").read_text())
    assert results["meta"]["smoke"] is True and results["meta"]["split"] == "validation"
    codecs = {json.loads(line)["codec"] for line in gzip.open(res / "rows.jsonl.gz", "rt")}
    assert {"SLIM", "SLIM w/o diffusion", "SLIM wrong caption", "SLIM w/o RoI w/o diffusion", "caption only",
            "SLIM 2 steps", "SLIM 4 steps", "JPEG", "bmshj2018 MSE", "bmshj2018 task"} <= codecs
    rows_files = sorted((work / "eval").glob("rows*.jsonl"))
    before = sum(len(p.read_text().splitlines()) for p in rows_files)
    assert evaluate_v3.main(["--smoke", "--work-dir", str(work)]) == 0  # finished rows are not evaluated again
    assert sum(len(p.read_text().splitlines()) for p in sorted((work / "eval").glob("rows*.jsonl"))) == before
    with pytest.raises(SystemExit):  # a smoke run never writes over the test set's results
        evaluate_v3.main(["--smoke", "--work-dir", str(work), "--results",
                          str(Path(evaluate_v3.HERE) / "results" / "v3")])
