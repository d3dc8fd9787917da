"""The control ceiling as SLIM's stage 1 trains the control module (joint with the codec, as the paper does).

    nice -n 19 .venv/bin/python benchmarks/toy/control_curve.py --sd outputs/prior_v3b/sd --work-dir outputs/control_v3
    (the same command again resumes; --smoke checks the code path in a minute)

``foundation_v3.py`` measures the control ceiling of a finished model: the control module + UNet decoding from the
*uncompressed* latent z as control, against the VAE alone on the same validation images (gate: within 5 points). This
script trains stage 1 (``training/train_stage1.py`` with toy world v3's recipe: λr 0.25, the masked terms normalised by
the mask's mass, learning rate 2e-4 after a linear warm-up, then constant) in segments of ``--segment`` steps, resuming
from the last checkpoint each time, and measures the ceiling after every segment, so that the curve of the gate against
training steps is there whatever the run reaches. It stops when both decodes pass the gate (the pipeline's strength 0.5
and from noise), or at ``--steps``. The stopping rule was written down before the run. Where it stops, the ceiling is
measured once more on ``--final-images`` images with the degraded controls of ``foundation_v3.py`` (z blurred, z
quantised) beside z.

Written under ``--work-dir``: ``data/`` (toy world v2's SLIM training images with their Grad-CAM masks, as
``run_toy.py`` builds them), ``init/`` (the untrained SLIM model from ``--sd``), ``stage1/`` (the training run and its
checkpoints) and ``curve.jsonl`` (one line per segment: step, training wall/CPU seconds so far, the validation losses
of the run, and the ceiling with its intervals), appended as the run goes, and ``final_ceiling.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import foundation_v3  # noqa: E402
import foundation  # noqa: E402
from foundation import IMAGE_SIZE, SLIM_TRAIN_SEED  # noqa: E402
from run_toy import untrained_slim  # noqa: E402
from convergence import log_line, read_lines  # noqa: E402

from slim_diffusers import toy_world  # noqa: E402
from slim_diffusers.utils.file_utils import staged_directory, write_atomically  # noqa: E402

BUNDLED = REPO / "slim_diffusers" / "assets" / "toy"
# toy world v3's decode: ẑ noised to t = 499, one denoising step (strength 0.5 on a trailing 2-step schedule)
DECODE = {"num_inference_steps": 2, "strength": 0.5, "seed": 0}


def context(model: Path, classifier: Path):
    ctx = foundation_v3.Context(model, classifier, "trailing", 3.0)
    ctx.decode = dict(DECODE)
    return ctx


def build_data(work: Path, classifier: Path, n: int) -> Path:
    """Toy world v2's SLIM training images (seed 2) with the classifier's Grad-CAM masks (``prepare_dataset.py``)."""
    raw, data = work / "data" / "train-raw", work / "data" / "train"
    if not (raw / "dataset_info.json").is_file():
        with staged_directory(raw) as stage:
            toy_world.as_dataset(n, seed=SLIM_TRAIN_SEED, size=IMAGE_SIZE).save_to_disk(str(stage))
    if not (data / "dataset_info.json").is_file():
        subprocess.run([sys.executable, str(REPO / "training" / "prepare_dataset.py"), "--dataset_name", str(raw),
                        "--split", "train", "--num_samples", "0", "--classifier_name_or_path", str(classifier),
                        "--caption_column", "caption", "--batch_size", "64", "--output_dir", str(data)], check=True)
    return data


def build_init(work: Path, sd: Path) -> Path:
    """The untrained SLIM model: ``sd``'s VAE, UNet and text encoder, a new codec, the control module from the UNet,
    DDIM with trailing spacing (toy world v3 decodes with it)."""
    return untrained_slim(sd, work / "init", "trailing")


def run_segment(command: list, out: Path, step: int):
    """Run one training segment (``command`` trains ``out`` up to ``step``, resuming from its last checkpoint):
    its wall and CPU seconds (the child processes') and the run's ``training_state.json``, which must be at ``step``."""
    before, wall = os.times(), time.perf_counter()
    subprocess.run(command, check=True)
    after = os.times()
    cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    state = json.loads((out / "training_state.json").read_text())
    if state["global_step"] != step:
        raise RuntimeError(f"{out} holds step {state['global_step']}, not {step}")
    return time.perf_counter() - wall, cpu, state


def train_command(init: Path, data: Path, out: Path, steps: int, args) -> list:
    return [sys.executable, str(REPO / "training" / "train_stage1.py"), "--pretrained_model_name_or_path", str(init),
            "--train_data_dir", str(data), "--output_dir", str(out), "--resolution", str(IMAGE_SIZE),
            "--train_batch_size", str(args.batch), "--max_train_steps", str(steps), "--learning_rate", str(args.lr),
            "--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", str(args.warmup),
            "--checkpointing_steps", str(args.segment), "--checkpoints_total_limit", "1",
            "--resume_from_checkpoint", "latest", "--validation_steps", str(args.segment),
            "--num_validation_images", "16", "--report_to", "none", "--seed", "0", "--lambda_rate", str(args.lambda_rate),
            "--lambda_guide", "1", "--lambda_diffusion", "1", "--mask_normalization", "mass",
            "--control_warmup_steps", str(args.control_warmup_steps)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd", type=Path, default=foundation.v2_ldm(), help="the LDM: a folder with vae/, unet/, "
                        "text_encoder/, tokenizer/, scheduler/ (train_prior.py's OUT/sd; default: toy world v2's, "
                        "foundation.v2_ldm())")
    parser.add_argument("--classifier", type=Path, default=BUNDLED / "classifier")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=5000, help="at most (toy world v3's stage 1: ten times v2's)")
    parser.add_argument("--segment", type=int, default=500, help="steps between two measurements")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=250)
    parser.add_argument("--lambda-rate", type=float, default=0.25)
    parser.add_argument("--control-warmup-steps", type=int, default=0, help="train_stage1.py's --control_warmup_steps "
                        "(our addition: the control module's first steps controlled by z itself); 0: the paper's training")
    parser.add_argument("--images", type=int, default=100, help="validation images (seed 5) per measurement")
    parser.add_argument("--noise-steps", type=int, default=20)
    parser.add_argument("--final-images", type=int, default=200, help="validation images of the final measurement, "
                        "which adds the degraded controls (z blurred, z quantised)")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--prepare-only", action="store_true", help="build WORK_DIR/data (the training images with "
                        "their Grad-CAM masks) and WORK_DIR/init (the untrained SLIM model from --sd) and stop: "
                        "train_curve.py's --data WORK_DIR/data/train and --model WORK_DIR/init")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI): the numbers mean nothing")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.segment, args.batch, args.warmup = 4, 2, 4, 1
        args.images, args.noise_steps, args.train_images, args.final_images = 4, 2, 24, 4
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    curve = work / "curve.jsonl"
    done = read_lines(curve)
    data = build_data(work, args.classifier, args.train_images)
    init = build_init(work, args.sd)
    if args.prepare_only:
        print(f"[control] prepared {data} and {init}", flush=True)
        return 0
    out = work / "stage1"
    s = dict(foundation_v3.settings(args.smoke), control_images=args.images, noise_steps=args.noise_steps)
    train_seconds = done[-1]["train_wall_seconds"] if done else 0.0
    train_cpu = done[-1]["train_cpu_seconds"] if done else 0.0
    step = done[-1]["step"] if done else 0
    while step < args.steps and not (done and done[-1]["passed"]):
        step = min(step + args.segment, args.steps)
        seconds, cpu, state = run_segment(train_command(init, data, out, step, args), out, step)
        train_seconds, train_cpu = train_seconds + seconds, train_cpu + cpu
        wall, cpu = time.perf_counter(), time.process_time()
        ceiling = foundation_v3.stage_control_ceiling(context(out, args.classifier), s, controls=("z",))
        record = {"step": step, "train_wall_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu, 1),
                  "validation": state["metrics"], "ceiling": ceiling["controls"]["z"], "passed": ceiling["passed"],
                  "measure_seconds": round(time.perf_counter() - wall, 1),
                  "measure_cpu_seconds": round(time.process_time() - cpu, 1), "images": ceiling["images"],
                  "date": time.strftime("%Y-%m-%d %H:%M"),
                  "settings": {"sd": str(args.sd), "lambda_rate": args.lambda_rate, "lr": args.lr, "warmup": args.warmup,
                               "batch": args.batch, "control_warmup_steps": args.control_warmup_steps}}
        log_line(curve, record)
        done.append(record)
        tops = {d: round(e["top1"]["value"], 1) for d, e in ceiling["controls"]["z"].items()}
        print(f"[control] step {step}: {tops} passed={ceiling['passed']}", flush=True)
    final = work / "final_ceiling.json"
    if not final.is_file():  # where the run stopped, on more images and with the degraded controls too
        wall, cpu = time.perf_counter(), time.process_time()
        result = foundation_v3.stage_control_ceiling(context(out, args.classifier), dict(s, control_images=args.final_images))
        write_atomically(final, json.dumps({"step": step, "result": result, "wall_seconds": round(time.perf_counter() - wall, 1),
                                            "cpu_seconds": round(time.process_time() - cpu, 1),
                                            "date": time.strftime("%Y-%m-%d %H:%M")}, indent=2).encode())
        print(f"[control] final measurement at step {step} ({args.final_images} images): passed={result['passed']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
