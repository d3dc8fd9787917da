"""The toy-scale reproduction (benchmarks/toy/run_toy.py) runs end to end: every stage, through the real
training scripts and evaluation harness, at smoke-test step counts. Its numbers mean nothing here; the
committed results in benchmarks/toy/results come from the full run."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_smoke_run_produces_every_result_and_reuses_its_stages(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    first = run_toy(work, results)
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
