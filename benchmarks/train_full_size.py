"""Training at full size on the CPU: seconds per step and peak memory of stage 1 and stage 2 at SD 2.1-base's size.

Builds Stable Diffusion 2.1-base's architecture from configs (``slim_diffusers.testing.sd21_base_components``:
VAE, UNet, OpenCLIP-H text encoder; random weights, nothing downloaded), saves it as a local Stable Diffusion
folder, a ResNet-50-shaped classifier and a small dataset at ``--resolution``, then runs the real training
scripts (``training/train_stage1.py``, then ``train_stage2.py`` on stage 1's output) for ``--steps`` optimizer
steps each with ``--gradient_checkpointing``. Stage 1 starts from the Stable Diffusion folder, as users do
(``SLIMPipeline.from_stable_diffusion``: the control module is copied from the UNet, the codec is new at its default size).

Every stage runs in a fresh process, which reports: the time to load (start to the first forward pass), the
first step (warm-up: allocator, kernel choice), the median of the other steps, the time after the last step
(a checkpoint, a validation pass on one image and the saved pipeline) and the peak resident memory during the
steps and of the whole process. Results are appended to ``benchmarks/results/train_full_size.txt`` with the
machine, the threads and the load average (a ``--tiny`` run's to ``outputs/benchmarks/train_full_size.txt``, unless
``--results`` names a file).

    python benchmarks/train_full_size.py                                # 256², batch 1, 3 steps, 2 threads
    python benchmarks/train_full_size.py --resolution 512 --batch-sizes 1 4
    python benchmarks/train_full_size.py --tiny --no-save               # every width / 10, 2 text layers, 64²

Full size needs about 20 GiB of memory and the whole machine; ``--text-layers`` and ``--width-scale`` shrink it
(both are printed in the results).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from machine_info import finish_results, load_average, machine, results_path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_full_size.txt"
STAGE_SCRIPTS = {1: REPO / "training" / "train_stage1.py", 2: REPO / "training" / "train_stage2.py"}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ children
def build(workdir: Path, width_scale: float, text_layers: int, resolution: int, num_images: int) -> dict:
    """Write ``sd/`` (a Stable Diffusion folder), ``classifier/`` (ResNet-50 shaped) and ``data/`` under ``workdir``."""
    import numpy as np
    import PIL.Image
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    from slim_diffusers.testing import sd21_base_components

    import datasets

    start = time.perf_counter()
    sd = sd21_base_components(width_scale=width_scale, text_layers=text_layers)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in sd.items() if isinstance(m, torch.nn.Module)}
    for name, component in sd.items():
        component.save_pretrained(workdir / "sd" / name)
    del sd

    torch.manual_seed(0)
    if width_scale == 1:
        config = ResNetConfig(num_labels=1000)  # ResNet-50: bottleneck blocks, depths 3/4/6/3, 2048 channels out
    else:
        scaled = [max(8, int(round(c * width_scale / 8)) * 8) for c in (256, 512, 1024, 2048)]
        config = ResNetConfig(num_labels=1000, embedding_size=scaled[0] // 4, hidden_sizes=scaled)
    classifier = ResNetForImageClassification(config)
    counts["classifier"] = sum(p.numel() for p in classifier.parameters())
    classifier.save_pretrained(workdir / "classifier")
    # what microsoft/resnet-50 ships: resize the short side to 256 (224 / 0.875), centre-crop 224, ImageNet mean/std
    ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(workdir / "classifier")
    del classifier

    rng = np.random.default_rng(0)
    rows = {"image": [], "label": [], "roi_mask": [], "caption": []}
    for i in range(num_images):
        image = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        mask = np.zeros((resolution, resolution), np.uint8)
        y, x = rng.integers(0, resolution // 2, 2)
        mask[y : y + resolution // 2, x : x + resolution // 2] = 255
        rows["image"].append(PIL.Image.fromarray(image))
        rows["label"].append(int(rng.integers(0, 1000)))
        rows["roi_mask"].append(PIL.Image.fromarray(mask, mode="L"))
        rows["caption"].append("a photo of a small brown dog sitting on the green grass in a park")
    datasets.Dataset.from_dict(rows).save_to_disk(str(workdir / "data"))
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mib": round(_peak_rss_mib()),
            "parameters_m": {k: round(v / 1e6, 2) for k, v in counts.items()}}


def train(stage: int, argv: list) -> dict:
    """Run the real training loop (``slim_diffusers.training.train.main``) and time it from the inside: the first
    forward pass of the training module marks the end of loading, every optimizer step the end of a step."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from slim_diffusers.training.train import main
    from slim_diffusers.training.training_utils import SLIMTrainingModule

    start = time.perf_counter()
    marks = {"first_forward": None, "steps": [], "rss_mib": [], "peak_rss_mib": []}

    def first_forward(module, inputs):
        if isinstance(module, SLIMTrainingModule) and marks["first_forward"] is None:
            marks["first_forward"] = time.perf_counter()

    def step_done(optimizer, args, kwargs):
        marks["steps"].append(time.perf_counter())
        marks["rss_mib"].append(_rss_mib())
        marks["peak_rss_mib"].append(_peak_rss_mib())

    torch.nn.modules.module.register_module_forward_pre_hook(first_forward)
    register_optimizer_step_post_hook(step_done)
    global_step = main(stage, argv)
    end = time.perf_counter()
    steps = marks["steps"]
    if marks["first_forward"] is None or not steps:
        raise RuntimeError("the training loop ran no step")
    return {
        "global_step": global_step,
        "load_s": round(marks["first_forward"] - start, 2),
        "first_step_s": round(steps[0] - marks["first_forward"], 2),
        "step_s": [round(b - a, 2) for a, b in zip(steps, steps[1:])],
        "after_steps_s": round(end - steps[-1], 2),
        "steps_peak_rss_mib": round(marks["peak_rss_mib"][-1]),
        "last_step_rss_mib": round(marks["rss_mib"][-1]),
        "peak_rss_mib": round(_peak_rss_mib()),
    }


# ------------------------------------------------------------------------------------------- parent
def _child(args_list: list, env: dict, timeout: float) -> dict:
    """Run this file with ``args_list`` in a fresh process; its last stdout line is its JSON result."""
    try:
        child = subprocess.run([sys.executable, __file__, *args_list], capture_output=True, text=True, env=env,
                               timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"not finished after {timeout:.0f} s"}
    if child.returncode != 0:
        tail = "\n    ".join(child.stderr.strip().splitlines()[-8:])
        return {"error": f"failed (status {child.returncode}):\n    {tail}"}
    return json.loads(child.stdout.strip().splitlines()[-1])


def _gib(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB"


def _format_stage(stage: int, batch: int, result: dict) -> str:
    head = f"stage {stage}, batch {batch}:"
    if "error" in result:
        return f"{head} {result['error']}"
    steps = result["step_s"]
    steady = f"{statistics.median(steps):.2f} s/step (median of {len(steps)}: {', '.join(f'{s:.2f}' for s in steps)})" \
        if steps else "no steady step (--steps 1)"
    return (f"{head} {steady}; first step {result['first_step_s']:.2f} s (warm-up); load {result['load_s']:.1f} s; "
            f"after the steps (checkpoint, validation, save) {result['after_steps_s']:.1f} s\n"
            f"          peak RSS {_gib(result['steps_peak_rss_mib'])} up to the last step "
            f"({_gib(result['last_step_rss_mib'])} resident at it), {_gib(result['peak_rss_mib'])} for the whole process")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=None, help="training image side (default: 256; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per stage, the first one a warm-up (default: 3)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="default: 1")
    parser.add_argument("--stages", type=int, nargs="+", choices=[1, 2], default=[1, 2],
                        help="stage 2 trains on stage 1's output, so it needs stage 1 (default: 1 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width-scale", type=float, default=None,
                        help="multiply every component's width by this (default: 1, SD 2.1-base; 0.1 with --tiny)")
    parser.add_argument("--text-layers", type=int, default=None,
                        help="text encoder layers (default: 23, OpenCLIP-H as SD 2.1 uses it; 2 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="a CI-sized run: --width-scale 0.1 --text-layers 2 --resolution 64")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                        help="the training scripts' --mixed_precision (default: no, float32)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="for comparison")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds one stage may run (default: 6 h)")
    parser.add_argument("--workdir", default=None, help="keep the built models, data and outputs here (default: a "
                        "temporary folder, deleted at the end; full size writes about 25 GB)")
    parser.add_argument("--no-save", action="store_true", help=f"print only; do not append to {RESULTS.name}")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"the file results are appended to (default: benchmarks/results/{RESULTS.name}; with "
                        f"--tiny, outputs/benchmarks/{RESULTS.name}, so a CI-sized run never rewrites the tracked one)")
    parser.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)  # in a child
    if sys.argv[1:2] == ["--train-stage"]:  # in a child: the stage, then the training script's own flags
        print(json.dumps(train(int(sys.argv[2]), sys.argv[3:])))
        return 0
    args = parser.parse_args()
    width = args.width_scale if args.width_scale is not None else (0.1 if args.tiny else 1.0)
    text_layers = args.text_layers if args.text_layers is not None else (2 if args.tiny else 23)
    resolution = args.resolution if args.resolution is not None else (64 if args.tiny else 256)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if 2 in args.stages and 1 not in args.stages:
        parser.error("stage 2 trains on stage 1's output: run --stages 1 2")
    num_images = max(args.batch_sizes) * args.steps + 1  # one held out for validation
    if args.build:
        print(json.dumps(build(Path(args.build), width, text_layers, resolution, num_images)))
        return 0

    import torch

    command = " ".join(["python benchmarks/train_full_size.py", *sys.argv[1:]])
    size = "SD 2.1-base architecture" if width == 1 else f"SD 2.1-base layout at width × {width:g}"
    header = [
        f"$ {command}",
        f"date             {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine          {machine(memory=True)}, torch {torch.__version__}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}",
        f"model            {size}, text encoder {text_layers} of 23 layers, random weights; SLIM codec "
        f"{'default size' if width == 1 else f'width × {width:g}'}, control module from the UNet",
        f"training         {resolution}², {args.steps} optimizer steps per stage, "
        f"{'no gradient checkpointing' if args.no_gradient_checkpointing else '--gradient_checkpointing'}, "
        f"--mixed_precision {args.mixed_precision}, stage 2 with a ResNet-50-shaped classifier and LPIPS (vgg, random)",
        f"load average     {load_average()} (1, 5, 15 min) at the start",
    ]
    print("\n".join(header), flush=True)
    lines = []
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="slim-train-full-size-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        built = _child(["--build", str(workdir), "--width-scale", str(width), "--text-layers", str(text_layers),
                        "--resolution", str(resolution), "--steps", str(args.steps),
                        "--batch-sizes", *map(str, args.batch_sizes)], env, args.timeout)
        if "error" in built:
            lines.append(f"build: {built['error']}")
        else:
            params = ", ".join(f"{k} {v:.1f}M" for k, v in built["parameters_m"].items())
            lines.append(f"build: {built['seconds']:.0f} s, peak RSS {_gib(built['peak_rss_mib'])}; parameters {params}")
        print(lines[-1], flush=True)
        for batch in args.batch_sizes if "error" not in built else []:
            source = workdir / "sd"
            for stage in sorted(args.stages):
                out = workdir / f"stage{stage}-batch{batch}"
                flags = ["--pretrained_model_name_or_path", str(source), "--train_data_dir", str(workdir / "data"),
                         "--output_dir", str(out), "--resolution", str(resolution), "--train_batch_size", str(batch),
                         "--max_train_steps", str(args.steps), "--num_validation_images", "1",
                         "--validation_steps", str(args.steps), "--checkpointing_steps", str(args.steps),
                         "--mixed_precision", args.mixed_precision, "--report_to", "none", "--seed", "0"]
                if not args.no_gradient_checkpointing:
                    flags.append("--gradient_checkpointing")
                if stage == 2:
                    flags += ["--classifier_name_or_path", str(workdir / "classifier"), "--lpips_net", "vgg",
                              "--lpips_random_init"]
                result = _child(["--train-stage", str(stage), *flags], env, args.timeout)
                lines.append(_format_stage(stage, batch, result))
                print(lines[-1], flush=True)
                if "error" in result:
                    break
                source = out
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    finish_results(results_path(RESULTS, args.tiny, args.results), header, lines, save=not args.no_save)
    return 0 if not any(": failed" in line or "not finished" in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
