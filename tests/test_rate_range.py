"""benchmarks/toy/rate_range.py reads a variable-rate model's λr range off its pilot by the rule of docs/toy.md."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "toy"))


def test_the_range_runs_from_the_last_accurate_level_to_the_first_near_chance_one():
    from rate_range import read_range

    top1 = {0.03: 90.0, 0.1: 80.0, 0.3: 60.0, 1.0: 30.0, 3.0: 9.0, 10.0: 6.0}
    result = read_range(top1, ceiling_top1=96.2)  # 80 % of the ceiling: 76.96
    assert result["lambda_min"] == 0.1 and result["lambda_max"] == 3.0 and result["extend"] == []
    upside_down = read_range({0.1: 5.0, 1.0: 90.0}, ceiling_top1=96.2)  # more λr, more accuracy: not a rate curve
    assert any("wrong order" in e for e in upside_down["extend"])


def test_a_pilot_that_misses_a_bound_says_which_way_to_extend():
    from rate_range import read_range

    result = read_range({0.03: 62.0, 1.0: 30.0, 64.0: 12.0}, ceiling_top1=96.2)
    assert result["lambda_min"] is None and result["lambda_max"] is None
    assert any("extend below λr 0.03" in e for e in result["extend"])
    assert any("extend above λr 64" in e for e in result["extend"])


def test_levels_are_matched_to_lambdas_largest_first(tmp_path, capsys):
    import rate_range

    # level 0 is the largest λr (the fewest bits)
    record = {"step": 2000, "levels": {"0": {"top1": {"value": 8.0}}, "1": {"top1": {"value": 50.0}},
                                       "2": {"top1": {"value": 85.0}}}}
    assert rate_range.levels_by_lambda(record, [0.1, 1.0, 10.0]) == {10.0: 8.0, 1.0: 50.0, 0.1: 85.0}
    with pytest.raises(ValueError, match="3 levels"):
        rate_range.levels_by_lambda(record, [0.1, 1.0])
    curve = tmp_path / "curve.jsonl"
    curve.write_text(json.dumps(record) + "\n")
    ceiling = tmp_path / "foundation_v3.json"
    ceiling.write_text(json.dumps({"gates": {"vae_ceiling": {"top1": {"value": 96.2}}}}))
    assert rate_range.main([str(curve), "--lambda-rate", "0.1", "1", "10", "--ceiling", str(ceiling)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lambda_min"] == 0.1 and out["lambda_max"] == 10.0 and out["step"] == 2000
    assert out["main_levels"] == [0.1, 0.193, 0.373, 0.72, 1.39, 2.68, 5.18, 10.0]  # 8 λr, geometric, both ends kept
    assert rate_range.main_levels(None, 10.0) is None


def test_a_curve_that_ends_above_chance_reads_the_rate_floor(tmp_path, capsys):
    import rate_range

    bpp = {1.0: 0.30, 3.0: 0.12, 10.0: 0.080, 30.0: 0.0735, 100.0: 0.0720}
    floor = rate_range.rate_floor(bpp, share=0.05)  # within 0.0756 of λr 100's 0.0720: λr 30 is the first
    assert floor["lambda_max"] == 30.0 and floor["bpp_at_largest"] == 0.0720
    assert rate_range.rate_floor(bpp, share=0.2)["lambda_max"] == 10.0

    levels = {str(i): {"bpp": b, "top1": {"value": t}}
              for i, (b, t) in enumerate([(0.0720, 19.0), (0.0735, 19.5), (0.080, 22.0), (0.12, 40.0), (0.30, 80.0)])}
    curve = tmp_path / "curve.jsonl"
    curve.write_text(json.dumps({"step": 2000, "levels": levels}) + "\n")
    ceiling = tmp_path / "foundation_v3.json"
    ceiling.write_text(json.dumps({"gates": {"vae_ceiling": {"top1": {"value": 96.2}}}}))
    lambdas = ["1", "3", "10", "30", "100"]
    assert rate_range.main([str(curve), "--lambda-rate", *lambdas, "--ceiling", str(ceiling)]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["lambda_max"] is None and any("extend above" in e for e in plain["extend"])
    argv = [str(curve), "--lambda-rate", *lambdas, "--ceiling", str(ceiling), "--floor-share", "0.05"]
    assert rate_range.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lambda_max"] == 30.0 and out["floor"]["top1"] == 19.5 and out["extend"] == []
    assert out["lambda_min"] == 1.0


def test_a_baseline_pilot_is_read_with_the_direction_turned(tmp_path, capsys):
    import rate_range

    # CompressAI's λ buys bits: the near-chance end is the largest λ at or below 10 %, the accurate end the smallest
    # λ at 80 % of the ceiling
    top1 = {1e-4: 5.0, 1e-3: 9.0, 1e-2: 40.0, 0.1: 78.0, 0.3: 85.0}
    result = rate_range.read_range(top1, ceiling_top1=96.2, lambda_buys_bits=True)
    assert result["lambda_min"] == 1e-3 and result["lambda_max"] == 0.1 and result["extend"] == []
    short = rate_range.read_range({1e-3: 30.0, 0.1: 60.0}, ceiling_top1=96.2, lambda_buys_bits=True)
    assert short["lambda_min"] is None and short["lambda_max"] is None
    assert any("extend below λ 0.001" in e for e in short["extend"])
    assert any("extend above λ 0.1" in e for e in short["extend"])

    for lam, value in top1.items():
        folder = tmp_path / "pilot" / f"lambda={lam:g}"
        folder.mkdir(parents=True)
        lines = [{"step": s, "lambda": lam, "top1": value - (2000 - s) / 100} for s in (1500, 2000)]
        (folder / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert rate_range.baseline_levels(tmp_path / "pilot", step=1500)[0.1] == 73.0
    ceiling = tmp_path / "foundation_v3.json"
    ceiling.write_text(json.dumps({"gates": {"vae_ceiling": {"top1": {"value": 96.2}}}}))
    assert rate_range.main(["--baseline", str(tmp_path / "pilot"), "--ceiling", str(ceiling)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lambda_min"] == 1e-3 and out["lambda_max"] == 0.1
    with pytest.raises(SystemExit):  # a λ that has not reached the step asked for is an error, not a gap
        rate_range.main(["--baseline", str(tmp_path / "pilot"), "--ceiling", str(ceiling), "--step", "2500"])
