"""The toy-scale reproduction (benchmarks/toy/run_toy.py) runs end to end: every stage, through the real
training scripts and evaluation harness, at smoke-test step counts. Its numbers mean nothing here; the
committed results in benchmarks/toy/results come from the full run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slim_diffusers.evaluation.codecs import folder_name
from slim_diffusers.evaluation.statistics import read_rows_gz

REPO = Path(__file__).resolve().parents[1]


def run_toy(work: Path, results: Path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "toy" / "run_toy.py"), "--smoke", "--work-dir", str(work),
           "--results-dir", str(results)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads((results / "results.json").read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run for the module: its work directory, results folder and results."""
    root = tmp_path_factory.mktemp("toy")
    work, results = root / "work", root / "results"
    return work, results, run_toy(work, results)


def test_smoke_run_produces_every_result_and_reuses_its_stages(smoke_run):
    work, results, first = smoke_run
    claims = first["claims"]
    assert {"claim1_roi", "claim2_baselines", "claim3_diffusion", "caption", "decoding_steps"} <= set(claims)
    bits = claims["claim1_roi"]["bits_inside_outside"]
    assert set(bits) == {"lambda_r=1", "lambda_r=4"}
    assert all(entry["images"] == 3 and entry["with_roi"]["bits_per_position_inside"] > 0 for entry in bits.values())
    assert set(claims["claim2_baselines"]["per_baseline"]) == {"JPEG", "WebP", "AVIF", "bmshj2018 MSE", "bmshj2018 task"}
    assert claims["claim2_baselines"]["byte_floor_96px"]["JPEG"]["bytes"] > 100
    low = claims["claim3_diffusion"]["per_rate"]["lambda_r=4"]["resnet"]
    assert {"SLIM", "SLIM w/o diffusion", "difference"} <= set(low) and low["SLIM"]["images"] == 6

    summary = json.loads((results / "summary.json").read_text())
    expected = {"SLIM", "SLIM w/o diffusion", "SLIM empty caption", "SLIM w/o RoI", "caption only", "SLIM 1 step",
                "JPEG", "WebP", "AVIF", "bmshj2018 MSE", "bmshj2018 task"}
    assert expected <= set(summary)
    entry = summary["SLIM"]["lambda_r=1"]
    assert entry["top1_ci"]["resnet"][0] <= entry["top1"]["resnet"] <= entry["top1_ci"]["resnet"][1]
    assert (results / "rate_accuracy.png").is_file() and (results / "bd_rate.md").is_file()
    # every number can be recomputed from the committed rows; SLIM's rates are the .slim files' sizes
    rows = read_rows_gz(results / "rows.jsonl.gz")
    assert len({(r["codec"], r["rate_point"], r["index"]) for r in rows}) == len(rows)
    for point, entry in summary["SLIM"].items():
        files = sorted((work / "eval" / "bitstreams" / "SLIM" / folder_name(point)).glob("*.slim"))
        assert len(files) == entry["images"] == 6
        assert abs(entry["mean_bpp"] - sum(8 * f.stat().st_size / 96**2 for f in files) / len(files)) < 1e-9
    caption_only = [r for r in rows if r["codec"] == "caption only"]
    assert caption_only and all(r["bytes"] < 40 for r in caption_only)  # a header and a caption, no latent
    seconds = first["seconds"]
    # the learned baselines train inside the foundation stage, beside the LDM
    assert {"foundation", "data", "slim", "evaluation"} <= set(seconds["stages_when_run"])
    assert "learned/baselines" in seconds["jobs_when_run"]

    second = run_toy(work, results)  # every stage is cached: nothing is trained or evaluated again
    assert second["seconds"]["stages_when_run"] == {**first["seconds"]["stages_when_run"],
                                                    "claims": second["seconds"]["stages_when_run"]["claims"]}
    assert second["claims"]["claim1_roi"]["bits_inside_outside"] == claims["claim1_roi"]["bits_inside_outside"]


def test_variable_rate_study_reuses_the_toy_run_and_reports_every_number(smoke_run):
    """benchmarks/toy/variable_rate.py on a smoke run's work directory: the foundation, data and per-λ models are
    reused (not trained again); the variable-rate model trains, both are evaluated through the harness."""
    work = smoke_run[0]
    per_lambda = {p: p.stat().st_mtime_ns for p in (work / "slim").glob("stage*-lr*/model_index.json")}
    cmd = [sys.executable, str(REPO / "benchmarks" / "toy" / "variable_rate.py"), "--smoke", "--work-dir", str(work)]
    result = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in per_lambda} == per_lambda
    res = work / "results-variable-rate"
    results = json.loads((res / "results.json").read_text())
    assert set(results["levels"]) == {"rate=0", "rate=1"} and results["levels"]["rate=0"]["lambda_r"] == 4.0
    assert set(results["between_levels"]) == {"rate=0.5"}
    assert set(results["training_seconds"]["variable_rate_jobs"]) == {"slim/vr-stage1", "slim/vr-stage2"}
    assert results["training_seconds"]["ratio"] > 0
    assert set(results["same_lambda_variable_minus_per_lambda"]) == {"lambda_r=1", "lambda_r=4"}
    summary = json.loads((res / "summary.json").read_text())
    assert set(summary["SLIM variable rate"]) == {"rate=0", "rate=1"} and set(summary["SLIM per λ"]) == {
        "lambda_r=1", "lambda_r=4"}
    # the variable-rate files carry their rate; bits per pixel are the files' sizes
    rows = read_rows_gz(res / "rows.jsonl.gz")
    vr_rows = [r for r in rows if r["codec"] == "SLIM variable rate"]
    assert len(vr_rows) == 12
    for row in vr_rows:
        from slim_diffusers import SLIMBitstream

        bs = SLIMBitstream.load(work / "vr-eval" / row["file"])
        assert bs.rate == float(row["rate_point"].split("=")[1]) and bs.num_bytes == row["bytes"]
