"""Train one SLIM stage in segments until its validation curve has flattened (toy world v3, part 2).

    nice -n 19 .venv/bin/python benchmarks/toy/train_curve.py --stage 1 --model INIT --data DATA --out OUT \
        --lambda-rate 0.25 0.5 1 2 4 8 16 32 [-- more train_stage1.py arguments]
    (the same command again resumes: from the curve, and the training from its last checkpoint)

Each segment runs ``training/train_stage{1,2}.py`` up to the next multiple of ``--segment`` steps (resuming from
its last checkpoint; the learning rate is constant after its warm-up, so a segment boundary changes nothing), then
measures the saved pipeline on ``--images`` validation images (toy world seed 5) at every rate level: bits per
pixel from the real bytes of every file, top-1 of the classifier with diffusion (toy world v3's decode: one step from
t = 499) and without (the VAE alone). A line per segment goes to ``OUT/curve.jsonl``. The run stops by
``convergence.py``'s rule (tracked: top-1 with diffusion and bpp, each averaged over the levels), written down
before the runs; the verdict, with the end slopes, is the last line's ``verdict``.
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import convergence  # noqa: E402
import foundation_v3  # noqa: E402
from control_curve import DECODE, run_segment  # noqa: E402
from convergence import log_line, read_lines  # noqa: E402
from foundation import IMAGE_SIZE  # noqa: E402

BUNDLED = REPO / "slim_diffusers" / "assets" / "toy"


@torch.no_grad()
def measure_levels(model: Path, reader, n: int, decode: Dict = DECODE, batch: int = 50) -> Dict:
    """Every rate level of ``model`` (a fixed-rate model: its one rate) on ``n`` validation images: mean bpp from
    the files' bytes, top-1 with diffusion and without. ``top1`` and ``bpp`` average the levels."""
    from diffusers import DDIMScheduler

    from slim_diffusers import SLIMPipeline

    pipe = SLIMPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    items = foundation_v3.validation_items(n)
    levels: List[Optional[int]] = list(range(pipe.num_rate_levels)) or [None]
    out = {}
    for level in levels:
        bpp, hits, hits_vae = [], [], []
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            bitstreams = pipe.compress([i.image for i in chunk], captions=[i.caption for i in chunk], rate=level)
            bpp += [bs.bits_per_pixel for bs in bitstreams]
            labels = [i.label for i in chunk]
            for use_diffusion, dest in ((True, hits), (False, hits_vae)):
                generators = [torch.Generator().manual_seed(int(decode["seed"]) + start + k) for k in range(len(chunk))]
                images = pipe.decompress(bitstreams, num_inference_steps=decode["num_inference_steps"],
                                         strength=decode["strength"], use_diffusion=use_diffusion,
                                         generator=generators, output_type="pt").images
                dest += [p == y for p, y in zip(reader.predict(images * 2 - 1), labels)]
        out["default" if level is None else str(level)] = {
            "bpp": float(np.mean(bpp)), "top1": foundation_v3.share(hits), "top1_vae": foundation_v3.share(hits_vae)}
    return {"levels": out, "top1": float(np.mean([e["top1"]["value"] for e in out.values()])),
            "top1_vae": float(np.mean([e["top1_vae"]["value"] for e in out.values()])),
            "bpp": float(np.mean([e["bpp"] for e in out.values()])), "images": len(items)}


def train_device(out: Path, step: int) -> str:
    """Where the segment up to ``step`` trains: the training scripts' Accelerator takes the GPU when there is one;
    a segment whose checkpoint already holds ``step`` (it trained elsewhere and was copied here) trains nothing here."""
    if (out / f"checkpoint-{step}").is_dir():
        return f"before this process: resumed from checkpoint-{step}"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def train_command(args, steps: int, extra: List[str]) -> List[str]:
    return [sys.executable, str(REPO / "training" / f"train_stage{args.stage}.py"),
            "--pretrained_model_name_or_path", str(args.model), "--train_data_dir", str(args.data),
            "--output_dir", str(args.out), "--resolution", str(IMAGE_SIZE), "--train_batch_size", str(args.batch),
            "--max_train_steps", str(steps), "--learning_rate", str(args.lr), "--lr_scheduler", "constant_with_warmup",
            "--lr_warmup_steps", str(args.warmup), "--checkpointing_steps", str(args.segment),
            "--checkpoints_total_limit", "1", "--resume_from_checkpoint", "latest", "--validation_steps", str(args.segment),
            "--num_validation_images", "16", "--report_to", "none", "--seed", "0",
            "--lambda_rate", *[str(x) for x in args.lambda_rate], "--mask_normalization", "mass", *extra]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", type=int, choices=[1, 2], required=True)
    parser.add_argument("--model", type=Path, required=True, help="the pipeline the stage starts from")
    parser.add_argument("--data", type=Path, required=True, help="prepare_dataset.py's output (images, captions, masks)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lambda-rate", type=float, nargs="+", required=True, help="λr, one per rate level")
    parser.add_argument("--classifier", type=Path, default=BUNDLED / "classifier")
    parser.add_argument("--segment", type=int, default=None, help="default: 500 (stage 1), 100 (stage 2)")
    parser.add_argument("--min-steps", type=int, default=None, help="default: ten times v2's (5000; stage 2: 800)")
    parser.add_argument("--max-steps", type=int, default=None, help="default: three times --min-steps")
    parser.add_argument("--horizon", type=int, default=None, help="default: four segments")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: 2e-4 (stage 1), 1e-4 (stage 2)")
    parser.add_argument("--warmup", type=int, default=None, help="default: 5 %% of --min-steps")
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args(argv)
    rule = convergence.rule_for(args, segment=500 if args.stage == 1 else 100,
                                min_steps=5000 if args.stage == 1 else 800, lr=2e-4 if args.stage == 1 else 1e-4)

    args.out.mkdir(parents=True, exist_ok=True)
    curve = args.out / "curve.jsonl"
    done = read_lines(curve)
    reader = foundation_v3.Reader(args.classifier)
    train_seconds = done[-1]["train_wall_seconds"] if done else 0.0
    train_cpu = done[-1]["train_cpu_seconds"] if done else 0.0
    verdict = convergence.decide(done, rule)
    while not verdict["stop"]:
        step = verdict["step"] + args.segment
        device = train_device(args.out, step)
        seconds, cpu, state = run_segment(train_command(args, step, extra), args.out, step)
        train_seconds, train_cpu = train_seconds + seconds, train_cpu + cpu
        wall, cpu = time.perf_counter(), time.process_time()
        measured = measure_levels(args.out, reader, args.images)
        record = {"step": step, "top1": measured["top1"], "bpp": measured["bpp"], "top1_vae": measured["top1_vae"],
                  "levels": measured["levels"], "images": measured["images"], "validation_losses": state["metrics"],
                  "train_wall_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu, 1),
                  "measure_cpu_seconds": round(time.process_time() - cpu, 1),
                  "measure_wall_seconds": round(time.perf_counter() - wall, 1), "date": time.strftime("%Y-%m-%d %H:%M"),
                  "train_device": device, "measure_device": "cpu"}
        verdict = convergence.decide(done + [record], rule)
        record["verdict"] = verdict
        log_line(curve, record)
        done.append(record)
        print(f"[curve] step {step}: top-1 {measured['top1']:.1f} % (VAE {measured['top1_vae']:.1f}), "
              f"{measured['bpp']:.4f} bpp: {verdict['reason']}", flush=True)
    print(f"[curve] stopped at step {verdict['step']}: {verdict['reason']}, end slopes {verdict['end_slopes']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
