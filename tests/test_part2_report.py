"""benchmarks/toy/part2_report.py gathers part 2's runs from their committed curves: the CPU each spent, whether its
rule stopped it, its end slopes; it lists runs not started yet, and says when a run was halted by a check rather
than by its stopping rule."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "toy"))

import part2_report  # noqa: E402


def curve(path: Path, steps, stop_last=False, reason="still changing", metrics=("top1", "bpp"), cpu_per_step=0.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, step in enumerate(steps):
            stop = stop_last and i == len(steps) - 1
            line = {"step": step, **{m: 10.0 + i for m in metrics}, "train_cpu_seconds": cpu_per_step * step,
                    "measure_cpu_seconds": 100.0,
                    "verdict": {"stop": stop, "reason": "flattened" if stop else reason,
                                "step": step, "end_slopes": {m: 0.5 for m in metrics}}}
            f.write(json.dumps(line) + "\n")


@pytest.fixture
def results(tmp_path):
    res = tmp_path / "v3"
    curve(res / "pilot_roi_curve.jsonl", [500, 1000], stop_last=True)
    curve(res / "stage1_roi_curve.jsonl", [500, 1000])  # halted by the check, never by its rule
    curve(res / "remedy_stage1_roi_curve.jsonl", [500, 1000, 1500], stop_last=True)
    curve(res / "remedy_stage1_noroi_curve.jsonl", [500])
    first = json.loads((res / "remedy_stage1_noroi_curve.jsonl").read_text())
    first["verdict"]["end_slopes"] = {"top1": None, "bpp": None}  # convergence.decide: too few measurements yet
    (res / "remedy_stage1_noroi_curve.jsonl").write_text(json.dumps(first) + "\n")
    curve(res / "mse" / "lambda=0.000316" / "curve.jsonl", [1000, 2000], metrics=("psnr", "bpp", "top1"),
          cpu_per_step=0.3)
    (res / "remedy_lambda_task_roi.json").write_text(json.dumps({"lambda_task": 0.02}))
    return res


def test_runs_their_state_and_cpu(results):
    report = part2_report.build(results)
    groups = report["groups"]
    stage1 = groups["slim_stage1"]["runs"]
    assert stage1["remedy_stage1_roi_curve.jsonl"]["stopped"] is True
    assert stage1["remedy_stage1_roi_curve.jsonl"]["reason"] == "flattened"
    assert stage1["remedy_stage1_noroi_curve.jsonl"]["stopped"] is False
    assert groups["slim_stage1"]["all_stopped"] is False
    # CPU: the run's own training counter at its last measurement, plus every measurement's
    assert stage1["remedy_stage1_roi_curve.jsonl"]["train_cpu_seconds"] == 750.0
    assert stage1["remedy_stage1_roi_curve.jsonl"]["measure_cpu_seconds"] == 300.0
    assert groups["slim_stage1"]["train_cpu_hours"] == round((750.0 + 250.0) / 3600, 2)
    # a run halted by the step-2000 check says so, and is not reported as still running
    halted = groups["slim_paper_loss"]["runs"]["stage1_roi_curve.jsonl"]
    assert halted["stopped"] is True and "check" in halted["reason"]
    # runs not started yet are listed, not left out
    assert groups["slim_stage2"]["runs"]["remedy_stage2_roi_curve.jsonl"] is None
    assert len(groups["mse"]["runs"]) == len(part2_report.BASELINE_LAMBDAS)
    assert groups["mse"]["runs"]["mse/lambda=0.00061/curve.jsonl"] is None
    assert groups["mse"]["runs"]["mse/lambda=0.000316/curve.jsonl"]["last"]["psnr"] == 11.0
    assert groups["task"]["all_stopped"] is False
    assert report["lambda_task"] == {"roi": {"lambda_task": 0.02}}
    expected = (500 + 200) + (500 + 200) + (750 + 300) + (250 + 100) + (600 + 200)  # every run, train + measure
    assert report["total_cpu_hours"] == round(expected / 3600, 2)


def test_main_writes_the_report_table_and_figure(results, capsys):
    assert part2_report.main(["--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| remedy_stage2_roi_curve.jsonl | 0 | not started |" in out
    assert "| remedy_stage1_roi_curve.jsonl | 1500 | stopped: flattened |" in out
    assert "| remedy_stage1_noroi_curve.jsonl | 500 | running: still changing | top1 n/a, bpp n/a |" in out
    written = json.loads((results / "part2_runs.json").read_text())
    before = (results / "part2_runs.json").read_bytes()
    assert part2_report.main(["--results-dir", str(results)]) == 0  # the same curves: the same report, byte for byte
    assert (results / "part2_runs.json").read_bytes() == before
    pilots = written["groups"]["slim_pilot"]
    assert pilots["runs"]["pilot_roi_curve.jsonl"]["stopped"] is True
    assert pilots["runs"]["pilot2_roi_curve.jsonl"] is None and pilots["all_stopped"] is False
    assert (results / "part2_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_missing_results_folder_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        part2_report.main(["--results-dir", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    assert "no such folder" in capsys.readouterr().err
