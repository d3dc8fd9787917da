"""The toy-scale reproduction (benchmarks/toy/run_toy.py) runs end to end: every stage, through the real
training scripts and evaluation harness, at smoke-test step counts. Its numbers mean nothing here; the
committed results in benchmarks/toy/results come from the full run."""

import json
import os
import subprocess
import sys
from pathlib import Path

from slim_diffusers.evaluation.codecs import folder_name

REPO = Path(__file__).resolve().parents[1]


def run_toy(work: Path, results: Path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "toy" / "run_toy.py"), "--smoke", "--work-dir", str(work),
           "--results-dir", str(results)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads((results / "results.json").read_text())


def test_smoke_run_produces_every_result_and_reuses_its_stages(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    first = run_toy(work, results)
    assert set(first["claims"]) == {"claim1_bits", "claim2_bd_rate", "claim3_lowest_rate"}
    bits = first["claims"]["claim1_bits"]
    assert bits["with_roi"]["images"] == 3 and bits["with_roi"]["bits_per_position_inside"] > 0
    assert {"SLIM", "SLIM (from noise)", "SLIM w/o diffusion"} <= set(first["claims"]["claim3_lowest_rate"]["top1"])
    summary = json.loads((results / "summary.json").read_text())
    assert {"SLIM", "SLIM w/o diffusion", "SLIM w/o RoI", "JPEG", "WebP"} <= set(summary["codecs"])
    assert summary["complete"] and (results / "rate_accuracy.png").is_file() and (results / "bd_rate.md").is_file()
    # SLIM's rates are read from the .slim files the harness wrote
    for point, entry in summary["codecs"]["SLIM"].items():
        files = sorted((work / "eval" / "bitstreams" / "SLIM" / folder_name(point)).glob("*.slim"))
        assert len(files) == entry["images"]
        assert abs(entry["mean_bpp"] - sum(8 * f.stat().st_size / 64**2 for f in files) / len(files)) < 1e-9
    assert any(k.startswith("slim/stage2") for k in first["timings_s"])

    second = run_toy(work, results)  # every stage is cached: nothing is trained again
    assert not [k for k in second["timings_s"] if k.startswith(("foundation/", "slim/", "data/"))]
    assert second["claims"]["claim1_bits"] == first["claims"]["claim1_bits"]
