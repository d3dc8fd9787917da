"""benchmarks/toy/baseline_curve.py at smoke sizes: a learned baseline trains in segments, measured after each, stops by
the convergence rule, resumes to the weights of an uninterrupted run, and the task codec starts from finished MSE
models only."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "toy"))


def curve(folder: Path) -> list:
    return [json.loads(x) for x in (folder / "curve.jsonl").read_text().splitlines()]


def test_baseline_trains_in_segments_resumes_and_feeds_the_task_codec(tmp_path, monkeypatch):
    import baseline_curve

    # uninterrupted: two segments of 2 steps, stopped at max_steps
    full = tmp_path / "full"
    assert baseline_curve.main(["--kind", "mse", "--out", str(full), "--lambdas", "0.05", "--smoke",
                                "--min-steps", "4", "--max-steps", "4"]) == 0
    lines = curve(full / "lambda=0.05")
    assert [r["step"] for r in lines] == [2, 4]
    assert lines[-1]["verdict"]["stop"] and "max_steps" in lines[-1]["verdict"]["reason"]
    for r in lines:
        assert r["bpp"] > 0 and r["psnr"] > 0 and 0 <= r["top1"] <= 100 and r["images"] == 2
    assert (full / "lambda=0.05" / "model" / "model.safetensors").is_file()

    # interrupted after one segment (a run stopped at 2 steps), then resumed to 4: the same weights, bit for bit
    parts = tmp_path / "parts"
    assert baseline_curve.main(["--kind", "mse", "--out", str(parts), "--lambdas", "0.05", "--smoke",
                                "--min-steps", "2", "--max-steps", "2"]) == 0
    assert [r["step"] for r in curve(parts / "lambda=0.05")] == [2]
    assert baseline_curve.main(["--kind", "mse", "--out", str(parts), "--lambdas", "0.05", "--smoke",
                                "--min-steps", "4", "--max-steps", "4"]) == 0
    assert [r["step"] for r in curve(parts / "lambda=0.05")] == [2, 4]
    for name in ("model", "state"):
        assert ((parts / "lambda=0.05" / name / "model.safetensors").read_bytes()
                == (full / "lambda=0.05" / name / "model.safetensors").read_bytes()), name

    # a kill after the state was saved but before its line was written: the state is measured, not trained again
    folder = parts / "lambda=0.05"
    (folder / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve(folder)[:1]))

    def no_training(*args, **kwargs):
        raise AssertionError("the state at step 4 is there: nothing trains again")

    with monkeypatch.context() as m:
        m.setattr(baseline_curve, "train_segment", no_training)
        assert baseline_curve.main(["--kind", "mse", "--out", str(parts), "--lambdas", "0.05", "--smoke",
                                    "--min-steps", "4", "--max-steps", "4"]) == 0
    assert [r["step"] for r in curve(folder)] == [2, 4]
    # finished: a second call does nothing
    with monkeypatch.context() as m:
        m.setattr(baseline_curve, "train_segment", no_training)
        assert baseline_curve.main(["--kind", "mse", "--out", str(full), "--lambdas", "0.05", "--smoke",
                                    "--min-steps", "4", "--max-steps", "4"]) == 0

    # the task codec starts from the finished MSE model of its λ, and refuses a λ the MSE run has not finished
    task = tmp_path / "task"
    assert baseline_curve.main(["--kind", "task", "--init", str(full), "--out", str(task), "--lambdas", "0.05",
                                "--smoke", "--max-steps", "2"]) == 0
    assert [r["step"] for r in curve(task / "lambda=0.05")] == [2]
    with pytest.raises(RuntimeError, match="has not finished"):
        baseline_curve.main(["--kind", "task", "--init", str(full), "--out", str(task), "--lambdas", "0.2", "--smoke",
                             "--max-steps", "2"])
    # other settings in the same folder are refused, not mixed
    with pytest.raises(ValueError, match="other settings"):
        baseline_curve.main(["--kind", "mse", "--out", str(parts), "--lambdas", "0.05", "--smoke", "--min-steps", "6",
                             "--max-steps", "6", "--lr", "1e-3"])
