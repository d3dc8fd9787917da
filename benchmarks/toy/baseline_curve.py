"""A learned baseline trained in segments until its validation curve has flattened (toy world v3, part 2).

    nice -n 19 .venv/bin/python benchmarks/toy/baseline_curve.py --kind mse --out OUT_MSE --lambdas 0.0067 0.36
    nice -n 19 .venv/bin/python benchmarks/toy/baseline_curve.py --kind task --init OUT_MSE --out OUT_TASK \
        --lambdas 0.0067 0.36
    (the same command again resumes; --smoke checks the code path in seconds)

The codecs are ``learned_baselines.py``'s (CompressAI's ``ScaleHyperprior``, "bmshj2018-hyperprior", replicate-padded
to 128², rounded latents into the synthesis), with its losses: ``λ·255²·MSE + bpp`` (``--kind mse``: the codec for
human vision) and ``bpp + λ·(κ·CE + γ·255²·MSE)`` through the frozen toy ResNet (``--kind task``: the codec for machine
vision). Toy world v2 trained them as a chain of short fine-tunes (1600 steps from scratch at the highest λ, 150
per other λ), and their PSNR hardly rose with λ; here every λ is its own model, trained to convergence: an MSE model from
scratch, a task model from the MSE model of its λ where that run stopped.

Each λ trains in segments of ``--segment`` steps (Adam, constant learning rate after a linear warm-up, so a segment
boundary changes nothing; a step's batch and training noise are drawn from its own seed, so a resumed run trains to
the same weights as one that was never interrupted). After each segment its state (weights, both optimizers, all in
safetensors, and the step) replaces the last one atomically, and a finished copy of the model (quantiles set, CDF
tables built, as a stopped training keeps it) is measured on ``--images`` validation images (toy world seed 5): bpp
from the real bytes, PSNR and top-1, appended to ``OUT/lambda=<λ>/curve.jsonl``. Where the rule stops a λ, that copy
is written to ``OUT/lambda=<λ>/model`` (``learned_baselines.load_model`` reads it). A λ stops by ``convergence.py``'s
rule, written down before the runs (tracked: PSNR, 0.1 dB, for the MSE codec; top-1, 1 point, for the task codec; the
bpp, 2 %, for both; at least ten times v2's steps: 16000 from scratch, 1500 for the task fine-tune; at most three
times that); the verdict with the end slopes is the last line's ``verdict``.
"""

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import convergence  # noqa: E402
import foundation_v3  # noqa: E402
import learned_baselines as lb  # noqa: E402
from foundation import BASELINE_TRAIN_SEED, IMAGE_SIZE  # noqa: E402
from convergence import log_line, read_lines  # noqa: E402
from train_prior import load_optimizer, save_optimizer  # noqa: E402

from slim_diffusers import toy_world  # noqa: E402
from slim_diffusers.utils.file_utils import fsync_tree, remove_tree, replace_directory, write_atomically  # noqa: E402

BUNDLED = REPO / "slim_diffusers" / "assets" / "toy"
# toy world v2's steps per model (learned_baselines.LearnedBaselineConfig: base 1600 from scratch, task 150)
V2_STEPS = {"mse": 1600, "task": 150}
TRACKED = {"mse": (("psnr", 0.1, False), ("bpp", 0.02, True)), "task": (("top1", 1.0, False), ("bpp", 0.02, True))}


def machine() -> str:
    """The CPU the segment trained on: float results differ between CPU kernels (a run carried to another machine
    goes on from the same state, on a trajectory of its own)."""
    import platform

    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else \
        platform.processor()
    return f"{name}, torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}"


def model_seed(kind: str, lam: float, seed: int) -> int:
    return seed * 1_000_003 + int(hashlib.sha256(f"{kind}|{lam!r}".encode()).hexdigest()[:6], 16)


class Run:
    """One λ's resumable training: ``folder/state`` (the last segment's state) and ``folder/curve.jsonl``."""

    def __init__(self, folder: Path, args, lam: float):
        self.folder, self.args, self.lam = folder, args, lam
        self.state_dir, self.curve = folder / "state", folder / "curve.jsonl"
        self.seed = model_seed(args.kind, lam, args.seed)
        self.settings = {"kind": args.kind, "lambda": lam, "N": args.N, "M": args.M, "batch": args.batch, "lr": args.lr,
                         "aux_lr": args.aux_lr, "warmup": args.warmup, "train_images": args.train_images,
                         "data_seed": BASELINE_TRAIN_SEED, "seed": args.seed, "clip_max_norm": args.clip_max_norm,
                         **({"task_weight": args.task_weight, "task_mse_weight": args.task_mse_weight}
                            if args.kind == "task" else {})}

    def lines(self) -> list:
        return read_lines(self.curve)

    def load(self, start: Path = None):
        """The model and optimizers at the last segment (or new: from scratch, or from ``start``'s weights)."""
        torch.manual_seed(self.seed)
        resume = (self.state_dir / "state.json").is_file()
        model = lb.load_model(self.state_dir if resume else start) if (resume or start) else lb.build_model(
            self.args.N, self.args.M)
        model.train()
        opt, aux_opt = lb._optimizers(model, self.args.lr, self.args.aux_lr)
        state = {"step": 0, "seconds": 0.0, "cpu_seconds": 0.0}
        if resume:
            state = json.loads((self.state_dir / "state.json").read_text())
            if state["settings"] != self.settings:
                raise ValueError(f"{self.folder} was trained with other settings: {state['settings']}; "
                                 "give another --out")
            load_optimizer(opt, self.state_dir / "optimizer")
            load_optimizer(aux_opt, self.state_dir / "aux_optimizer")
        return model, opt, aux_opt, state

    def save(self, model, opt, aux_opt, state: dict) -> None:
        tmp = self.folder / "state.tmp"
        if tmp.exists():
            remove_tree(tmp)  # what a killed save left
        lb.save_model(model, tmp, {"architecture": lb.ARCHITECTURE, "N": self.args.N, "M": self.args.M})
        for name, o in (("optimizer", opt), ("aux_optimizer", aux_opt)):
            (tmp / name).mkdir()
            save_optimizer(o, tmp / name)
        write_atomically(tmp / "state.json", json.dumps({**state, "settings": self.settings}).encode())
        fsync_tree(tmp)
        replace_directory(tmp, self.state_dir)  # the last state or this one at every instant


def train_segment(run: Run, model, opt, aux_opt, pool, step: int, end: int, task=None) -> int:
    args = run.args
    model.train()
    while step < end:
        # the batch and the training noise (CompressAI's uniform noise on the latents) from the step's own seed
        torch.manual_seed(run.seed * 1_000_003 + step)
        generator = torch.Generator().manual_seed(run.seed * 1_000_003 + step)
        lr = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
        for group in opt.param_groups:
            group["lr"] = lr
        x, labels = pool.batch(args.batch, generator)
        out = lb.training_forward(model, lb.pad(x))
        kwargs = {} if task is None else dict(mse_weight=args.task_mse_weight, task_weight=args.task_weight,
                                              classifier=task[0], processor=task[1], labels=labels)
        terms = lb.codec_loss(out, x, run.lam, **kwargs)
        lb.codec_step(model, opt, aux_opt, terms["loss"], args.clip_max_norm)
        step += 1
    return step


def finished_copy(model):
    """What a training that stopped here would keep: a copy with the bottleneck's quantiles set from its density and
    the CDF tables built (as learned_baselines.train_codec ends); the training model itself goes on unchanged."""
    done = copy.deepcopy(model)
    done.update(force=True, update_quantiles=True)
    return done.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=["mse", "task"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lambdas", type=float, nargs="+", required=True, help="one model per λ")
    parser.add_argument("--init", type=Path, default=None, help="--kind task: the MSE run's --out (each λ given must have stopped there)")
    parser.add_argument("--classifier", type=Path, default=BUNDLED / "classifier")
    parser.add_argument("--segment", type=int, default=None, help="default: 1000 (mse), 250 (task)")
    parser.add_argument("--min-steps", type=int, default=None, help="default: ten times v2's (16000; task: 1500)")
    parser.add_argument("--max-steps", type=int, default=None, help="default: three times --min-steps")
    parser.add_argument("--horizon", type=int, default=None, help="default: four segments")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default: 5e-4 (mse), 1e-4 (task)")
    parser.add_argument("--aux-lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=None, help="default: 5 %% of --min-steps")
    parser.add_argument("--clip-max-norm", type=float, default=1.0)
    parser.add_argument("--task-weight", type=float, default=lb.LearnedBaselineConfig.task_weight)
    parser.add_argument("--task-mse-weight", type=float, default=lb.LearnedBaselineConfig.task_mse_weight)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--images", type=int, default=200, help="validation images (seed 5) per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--N", type=int, default=lb.LearnedBaselineConfig.N)
    parser.add_argument("--M", type=int, default=lb.LearnedBaselineConfig.M)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): the numbers mean nothing")
    args = parser.parse_args(argv)
    if args.kind == "task" and args.init is None:
        parser.error("--kind task starts from the MSE models: give the MSE run's --out as --init")
    if args.smoke:
        args.N, args.M, args.train_images, args.images, args.batch = 8, 12, 8, 2, 2
        args.segment = args.segment or 2
        args.min_steps = args.min_steps or 2
    rule = convergence.rule_for(args, segment=1000 if args.kind == "mse" else 250, min_steps=10 * V2_STEPS[args.kind],
                                lr=5e-4 if args.kind == "mse" else 1e-4, tolerances=TRACKED[args.kind])
    items = foundation_v3.validation_items(args.images)
    pool, task = None, None
    for lam in args.lambdas:
        run = Run(args.out / lb.rate_point_label(lam), args, lam)
        run.folder.mkdir(parents=True, exist_ok=True)
        done = run.lines()
        verdict = convergence.decide(done, rule)
        if verdict["stop"]:
            continue
        start = None
        if args.kind == "task":
            mse = Run(args.init / lb.rate_point_label(lam), args, lam)
            mse_lines = mse.lines()
            if not mse_lines or not mse_lines[-1]["verdict"]["stop"]:
                raise RuntimeError(f"the MSE model at λ {lam:g} ({mse.folder}) has not finished: run --kind mse first")
            start = mse.state_dir
            if task is None:
                task = lb._load_classifier(args.classifier)
        if pool is None:
            pool = lb.TrainingPool(toy_world.samples, args.train_images, BASELINE_TRAIN_SEED, IMAGE_SIZE)
        model, opt, aux_opt, state = run.load(start)
        if state["step"] not in (verdict["step"], verdict["step"] + args.segment):
            raise RuntimeError(f"{run.folder}: the state is at step {state['step']}, the curve at {verdict['step']}")
        while True:
            if state["step"] == verdict["step"]:  # measured: train the next segment, unless the rule stopped it
                if verdict["stop"]:
                    break
                wall, cpu = time.perf_counter(), time.process_time()
                step = train_segment(run, model, opt, aux_opt, pool, state["step"], state["step"] + args.segment, task)
                state = {"step": step, "seconds": state["seconds"] + time.perf_counter() - wall,
                         "cpu_seconds": state["cpu_seconds"] + time.process_time() - cpu}
                run.save(model, opt, aux_opt, state)
            # the state is a segment ahead of the curve (just trained, or a kill came between the two): measure it
            wall, cpu = time.perf_counter(), time.process_time()
            done_model = finished_copy(model)
            codec = lb.LearnedBaselines({args.kind: {lam: done_model}}).codecs()[0]
            measured = lb.measure([codec], items, args.classifier)[args.kind][lb.rate_point_label(lam)]
            record = {"step": state["step"], "lambda": lam, "psnr": measured["psnr_db"], "bpp": measured["bpp"],
                      "top1": measured["top1"], "images": len(items), "train_seconds": round(state["seconds"], 1),
                      "train_cpu_seconds": round(state["cpu_seconds"], 1),
                      "measure_cpu_seconds": round(time.process_time() - cpu, 1),
                      "measure_wall_seconds": round(time.perf_counter() - wall, 1),
                      "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
            verdict = convergence.decide(done + [record], rule)
            record["verdict"] = verdict
            if verdict["stop"]:  # the model this λ keeps, for the evaluation harness (learned_baselines.load_model)
                lb.save_model(done_model, run.folder / "model.tmp", {"architecture": lb.ARCHITECTURE, "N": args.N,
                                                                     "M": args.M})
                replace_directory(run.folder / "model.tmp", run.folder / "model")
            log_line(run.curve, record)
            done.append(record)
            print(f"[baseline] {args.kind} λ {lam:g} step {state['step']}: {measured['psnr_db']:.2f} dB, top-1 "
                  f"{measured['top1']:.1f} %, {measured['bpp']:.4f} bpp: {verdict['reason']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
