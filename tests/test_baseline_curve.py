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
        assert "torch" in r["machine"]  # the CPU each segment trained on (runs are carried between machines)
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


def test_a_step_clips_the_main_gradients_only_so_a_resumed_run_trains_as_an_uninterrupted_one(monkeypatch):
    # CompressAI's order: both optimizers' gradients are cleared before the step, so the main step's clipping never
    # sees the aux loss's gradients on the quantiles (left from the previous step, they scaled every main gradient,
    # and a resumed run, whose first step has none, took a step unlike its uninterrupted twin's)
    import argparse
    import copy

    import torch

    import baseline_curve
    import learned_baselines as lb
    from slim_diffusers import toy_world

    args = argparse.Namespace(kind="mse", N=8, M=12, batch=2, lr=1e-3, aux_lr=1e-3, warmup=1, train_images=4, seed=0,
                              clip_max_norm=1e-3)  # a bound every step's norm exceeds: the clipping always acts
    run = baseline_curve.Run(Path("unused"), args, 0.05)
    pool = lb.TrainingPool(toy_world.samples, 4, 4, 96)
    torch.manual_seed(0)
    model = lb.build_model(args.N, args.M).train()
    opt, aux_opt = lb._optimizers(model, args.lr, args.aux_lr)
    clipped = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, *a, **k):
        parameters = list(parameters)
        clipped.append({id(p) for p in parameters if p.grad is not None})
        return clip(parameters, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    assert baseline_curve.train_segment(run, model, opt, aux_opt, pool, 0, 2) == 2
    quantiles = id(model.entropy_bottleneck.quantiles)
    assert len(clipped) == 2 and all(quantiles not in seen for seen in clipped)
    # a resume: the same weights and optimizer states in new objects, as a checkpoint loads them
    resumed = copy.deepcopy(model)
    for p in resumed.parameters():
        p.grad = None
    r_opt, r_aux = lb._optimizers(resumed, args.lr, args.aux_lr)
    r_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    r_aux.load_state_dict(copy.deepcopy(aux_opt.state_dict()))
    baseline_curve.train_segment(run, model, opt, aux_opt, pool, 2, 4)
    baseline_curve.train_segment(run, resumed, r_opt, r_aux, pool, 2, 4)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
