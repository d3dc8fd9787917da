"""Toy-scale reproduction of SLIM's claims on CPU, end to end, with every piece of the real method.

    python benchmarks/toy/run_toy.py                       # everything; finished stages are reused
    python benchmarks/toy/run_toy.py --work-dir outputs/toy --export   # also refresh the bundled default model

Stages (each cached under ``--work-dir``; delete a stage's folder to redo it):

1. foundation models trained on the toy world (``foundation.py``): VAE, CLIP text encoder + UNet as a latent
   diffusion model (saved as a ``StableDiffusionPipeline``), and the classifier;
2. SLIM's training set through ``training/prepare_dataset.py``: Grad-CAM RoI masks from the toy classifier;
   captions are the generator's (they stand in for BLIP-2, which cannot run here);
3. an untrained SLIM from the toy LDM (``SLIMPipeline.from_stable_diffusion``);
4. stage 1 and stage 2 through ``training/train_stage1.py`` / ``train_stage2.py`` at several λr (the rate
   points) and once with ``--no_roi`` (the "w/o RoI-focused training" ablation);
5. evaluation through the harness of ``slim evaluate`` on held-out toy images: SLIM, SLIM decoded without
   diffusion, SLIM w/o RoI, JPEG, WebP (and AVIF when Pillow has it), with the toy classifier;
6. the three claims, measured: bits inside/outside the true object mask, BD-rate against JPEG/WebP, and
   diffusion against no diffusion at the lowest rate. Results go to ``benchmarks/toy/results/``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import foundation  # noqa: E402
from foundation import IMAGE_SIZE, SLIM_TRAIN_SEED, TEST_SEED  # noqa: E402

from slim_diffusers import toy_world  # noqa: E402

# SLIM's codec at toy scale: the 4×16×16 latent of a 64² image → y 48×8×8 (stride 2), z 2×2
TOY_CODEC = dict(
    hidden_channels=48,
    latent_codec_channels=48,
    hyper_channels=32,
    num_downsamples=1,
    num_res_blocks=1,
    groups=(4, 4, 8, 32),
    channel_context_channels=(32, 32),
)


@dataclass(frozen=True)
class ToyConfig:
    """Every setting of a run. ``SMOKE`` runs the same code in a couple of minutes (CI's check that the
    reproduction still works end to end; its numbers mean nothing)."""

    rate_points: Tuple[float, ...] = (0.5, 2.0, 8.0, 32.0)  # λr, one SLIM model each; the highest: lowest rate
    ablation_rate: float = 2.0  # the "w/o RoI" ablation is trained at this λr
    default_rate: float = 2.0  # the rate point bundled as the demo's default model
    stage1: Tuple[int, int, float] = (1200, 16, 1e-3)  # steps, batch, learning rate
    stage2: Tuple[int, int, float] = (400, 16, 3e-4)
    lambdas: Tuple[Tuple[str, float], ...] = (
        ("lambda_guide", 1.0), ("lambda_diffusion", 1.0), ("lambda_roi", 1.0), ("lambda_task", 0.1))
    # decoding: ẑ noised halfway, 10-step schedule (5 steps run); "SLIM (from noise)" uses strength 1
    decode: Tuple[Tuple[str, object], ...] = (("num_inference_steps", 10), ("strength", 0.5), ("seed", 0))
    baseline_qualities: Tuple[int, ...] = (1, 5, 10, 20, 40, 70)
    num_train: int = 3000
    num_test: int = 300
    num_bitmap_images: int = 100
    foundation_steps: Tuple[Tuple[str, int], ...] = (("vae", 1000), ("resnet", 600), ("convnext", 1500), ("ldm", 2500))
    ldm_pool: int = 8000


SMOKE = ToyConfig(rate_points=(0.5, 2.0), ablation_rate=2.0, default_rate=2.0, stage1=(2, 4, 1e-3), stage2=(2, 4, 3e-4), num_train=24, num_test=6,
                  num_bitmap_images=3, baseline_qualities=(5, 50), decode=(("num_inference_steps", 2),
                  ("strength", 0.5), ("seed", 0)), foundation_steps=(("vae", 2), ("resnet", 2), ("convnext", 2), ("ldm", 2)),
                  ldm_pool=16)
CLASSIFIERS = ("resnet", "convnext")  # stand-ins for ResNet-50 (used in training) and ConvNeXt-T (unseen)


def log(msg: str) -> None:
    print(f"[toy {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed(name: str, timings: dict, fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[name] = round(time.perf_counter() - t0, 1)
    log(f"{name}: {timings[name]} s")
    return result


def run(cmd, env=None) -> None:
    log(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


# ---------------------------------------------------------------------------------------------- stages
def stage_foundation(work: Path, cfg: ToyConfig, timings: dict) -> dict:
    info = {}
    f = work / "foundation"
    steps = dict(cfg.foundation_steps)
    for name, fn in (
        ("vae", lambda: foundation.train_vae(f / "vae", steps=steps["vae"])),
        ("resnet", lambda: foundation.train_classifier(f / "resnet", arch="resnet", steps=steps["resnet"])),
        ("convnext", lambda: foundation.train_classifier(f / "convnext", arch="convnext", steps=steps["convnext"])),
        ("sd", lambda: foundation.train_ldm(f / "sd", f / "vae", steps=steps["ldm"], pool=cfg.ldm_pool)),
    ):
        done = f / name / "toy_done.json"
        info[name] = json.loads(done.read_text()) if done.is_file() else timed(f"foundation/{name}", timings, fn)
    # how well the toy LDM draws what a caption names (the prior the decoder starts from)
    info["sd"]["text_to_image_top1"] = foundation.text_to_image_accuracy(
        f / "sd", f / "resnet", per_class=5 if cfg is not SMOKE else 1, steps=20 if cfg is not SMOKE else 2)
    return info


def stage_data(work: Path, cfg: ToyConfig, timings: dict) -> None:
    data = work / "data"
    if not (data / "test").is_dir():
        toy_world.as_dataset(cfg.num_test, seed=TEST_SEED, size=IMAGE_SIZE).save_to_disk(str(data / "test"))
    if not (data / "train" / "dataset_info.json").is_file():
        raw = data / "train-raw"
        if not raw.is_dir():
            toy_world.as_dataset(cfg.num_train, seed=SLIM_TRAIN_SEED, size=IMAGE_SIZE).save_to_disk(str(raw))
        t0 = time.perf_counter()
        run([sys.executable, REPO / "training" / "prepare_dataset.py", "--dataset_name", raw, "--split", "train",
             "--num_samples", 0, "--classifier_name_or_path", work / "foundation" / "resnet",
             "--caption_column", "caption", "--batch_size", 64, "--output_dir", data / "train"])
        timings["data/prepare_dataset"] = round(time.perf_counter() - t0, 1)


def stage_init(work: Path) -> Path:
    from slim_diffusers import SLIMPipeline

    out = work / "slim" / "init"
    if not (out / "model_index.json").is_file():
        torch.manual_seed(0)
        pipe = SLIMPipeline.from_stable_diffusion(str(work / "foundation" / "sd"), **TOY_CODEC)
        pipe.save_pretrained(out)
    return out


def train(script: str, model: Path, data: Path, out: Path, rate: float, no_roi: bool, stage: tuple, lambdas,
          extra=()) -> Path:
    if (out / "model_index.json").is_file():
        return out
    steps, batch, lr = stage
    cmd = [sys.executable, REPO / "training" / script, "--pretrained_model_name_or_path", model,
           "--train_data_dir", data, "--output_dir", out, "--resolution", IMAGE_SIZE,
           "--train_batch_size", batch, "--max_train_steps", steps, "--learning_rate", lr,
           "--checkpointing_steps", max(steps // 4, 1), "--checkpoints_total_limit", 1,
           "--resume_from_checkpoint", "latest", "--validation_steps", steps, "--num_validation_images", min(16, batch),
           "--report_to", "none", "--seed", 0, "--lambda_rate", rate, *sum(([f"--{k}", v] for k, v in lambdas), []),
           *(["--no_roi"] if no_roi else []), *extra]
    run(cmd)
    return out


def stage_slim(work: Path, cfg: ToyConfig, timings: dict) -> dict:
    init = stage_init(work)
    data = work / "data" / "train"
    classifier = work / "foundation" / "resnet"
    stage2_extra = ["--classifier_name_or_path", classifier, "--lpips_net", "alex", "--lpips_random_init"]
    models = {"roi": {}, "no_roi": {}}
    runs = [(rate, False) for rate in cfg.rate_points] + [(cfg.ablation_rate, True)]
    for rate, no_roi in runs:
        tag = f"lr{rate:g}" + ("-noroi" if no_roi else "")
        s1 = work / "slim" / f"stage1-{tag}"
        s2 = work / "slim" / f"stage2-{tag}"
        if not (s1 / "model_index.json").is_file():
            timed(f"slim/stage1-{tag}", timings, train, "train_stage1.py", init, data, s1, rate, no_roi, cfg.stage1,
                  cfg.lambdas)
        if not (s2 / "model_index.json").is_file():
            timed(f"slim/stage2-{tag}", timings, train, "train_stage2.py", s1, data, s2, rate, no_roi, cfg.stage2,
                  cfg.lambdas, stage2_extra)
        models["no_roi" if no_roi else "roi"][rate] = s2
    return models


# ---------------------------------------------------------------------------------------------- evaluation
def load_pipeline(path: Path):
    from slim_diffusers import SLIMPipeline

    pipe = SLIMPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stage_evaluate(work: Path, cfg: ToyConfig, models: dict, timings: dict) -> dict:
    """SLIM (both decoding modes), SLIM w/o diffusion, SLIM w/o RoI and the Pillow baselines, through the harness."""
    import datasets

    from slim_diffusers.evaluation.baselines import PillowCodec, pillow_supports
    from slim_diffusers.evaluation.codecs import SLIMCodec
    from slim_diffusers.evaluation.harness import Classifier
    from slim_diffusers.evaluation.run import run_evaluation

    out = work / "eval"
    roi = {f"lambda_r={rate:g}": load_pipeline(path) for rate, path in sorted(models["roi"].items())}
    no_roi = {f"lambda_r={rate:g}": load_pipeline(path) for rate, path in sorted(models["no_roi"].items())}
    codecs = [
        SLIMCodec(roi, name="SLIM", **dict(cfg.decode)),
        SLIMCodec(roi, name="SLIM (from noise)", **{**dict(cfg.decode), "strength": 1.0}),
        SLIMCodec(roi, name="SLIM w/o diffusion", use_diffusion=False),
        SLIMCodec(no_roi, name="SLIM w/o RoI", **dict(cfg.decode)),
        PillowCodec("JPEG", qualities=cfg.baseline_qualities),
        PillowCodec("WEBP", qualities=cfg.baseline_qualities),
    ]
    if pillow_supports("AVIF"):
        codecs.append(PillowCodec("AVIF", qualities=cfg.baseline_qualities))
    classifiers = [Classifier.from_pretrained(str(work / "foundation" / name)) for name in CLASSIFIERS]
    ds = datasets.load_from_disk(str(work / "data" / "test"))
    t0 = time.perf_counter()
    run = run_evaluation(out, ds, codecs, classifiers, caption_column="caption", anchor="JPEG", envelope=True)
    if run.rows_written:  # rows found finished in the JSONL are not evaluated again
        timings["evaluate"] = round(time.perf_counter() - t0, 1)
    return run.report


# ------------------------------------------------------------------------------------------------ claims
@torch.no_grad()
def bits_inside_outside(pipe, test, limit: int) -> dict:
    """Claim 1: mean bits per coded latent position inside the true object mask ÷ outside it.

    The bits are the entropy model's, read back from each payload (``slim_diffusers.coding.bit_allocation``); a
    position is inside when the object covers at least half of the pixels it stands for.
    """
    from slim_diffusers.coding.bit_allocation import bitstream_bit_allocation

    inside, outside, ratios = [], [], []
    for i in range(min(limit, len(test))):
        row = test[i]
        (bs,) = pipe.compress(row["image"], captions=row["caption"])
        bits, stride = bitstream_bit_allocation(pipe, bs)
        bits = bits.numpy()
        mask = torch.tensor(np.asarray(row["object_mask"], np.float32))[None, None]
        cover = torch.nn.functional.avg_pool2d(mask, stride)[0, 0].numpy()[: bits.shape[0], : bits.shape[1]]
        inside.append(bits[cover >= 0.5])
        outside.append(bits[cover < 0.5])
        if inside[-1].size and outside[-1].size:
            ratios.append(float(inside[-1].mean() / max(outside[-1].mean(), 1e-9)))
    mean_in, mean_out = float(np.concatenate(inside).mean()), float(np.concatenate(outside).mean())
    return {
        "images": min(limit, len(test)),
        "bits_per_position_inside": mean_in,
        "bits_per_position_outside": mean_out,
        "ratio_inside_outside": mean_in / max(mean_out, 1e-9),
        "median_ratio_per_image": float(np.median(ratios)) if ratios else None,
    }


def claims(work: Path, cfg: ToyConfig, models: dict, report: dict) -> dict:
    import datasets

    from slim_diffusers.evaluation.report import bd_rates

    test = datasets.load_from_disk(str(work / "data" / "test"))
    summary, clfs = report["codecs"], report["classifiers"]
    out = {}

    # 1. RoI-focused training concentrates bits on the object: every rate point, and the "w/o RoI" ablation
    #    against the RoI model of the same λr
    per_rate = {f"lambda_r={rate:g}": bits_inside_outside(load_pipeline(path), test, cfg.num_bitmap_images)
                for rate, path in sorted(models["roi"].items())}
    out["claim1_bits"] = {
        "with_roi": per_rate[f"lambda_r={cfg.ablation_rate:g}"],
        "without_roi": bits_inside_outside(load_pipeline(models["no_roi"][cfg.ablation_rate]), test,
                                           cfg.num_bitmap_images),
        "lambda_r": cfg.ablation_rate,
        "with_roi_every_rate_point": per_rate,
        "target": "ratio ≥ 2 with RoI, clearly lower without",
    }

    # 2. BD-rate of SLIM against JPEG, WebP (and AVIF), on monotone envelopes (the harness's report)
    bd = {}
    for anchor in [a for a in ("JPEG", "WebP", "AVIF") if a in summary]:
        deltas = bd_rates(summary, clfs, anchor, envelope=True)
        for method, per_codec in deltas.items():
            for codec, per_clf in per_codec.items():
                if codec.startswith("SLIM"):
                    for clf, cell in per_clf.items():
                        bd.setdefault(codec, {}).setdefault(anchor, {}).setdefault(Path(clf).name, {})[method] = cell
    out["claim2_bd_rate"] = bd

    # 3. At the lowest rate, diffusion against no diffusion
    lowest = f"lambda_r={max(cfg.rate_points):g}"
    out["claim3_lowest_rate"] = {
        "rate_point": lowest,
        "bpp": summary["SLIM"][lowest]["mean_bpp"],
        "top1": {name: {Path(c).name: summary[name][lowest]["top1"][c] for c in clfs}
                 for name in ("SLIM", "SLIM (from noise)", "SLIM w/o diffusion")},
    }
    return out


def write_results(work: Path, res: Path, results: dict) -> None:
    res.mkdir(parents=True, exist_ok=True)
    (res / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for name in ("rate_accuracy.png", "bd_rate.md", "summary.json"):
        shutil.copy(work / "eval" / name, res / name)
    log(f"results in {res}")


# -------------------------------------------------------------------------------------------------- export
def export_default(work: Path, cfg: ToyConfig, models: dict) -> None:
    """Bundle the default rate point, the toy classifier and a few test images into the package's assets."""
    import datasets

    assets = REPO / "slim_diffusers" / "assets"
    target = assets / "toy"
    if target.exists():
        shutil.rmtree(target)
    pipe = load_pipeline(models["roi"][cfg.default_rate])
    pipe.save_pretrained(target / "slim", safe_serialization=True)
    shutil.copytree(work / "foundation" / "resnet", target / "classifier", ignore=shutil.ignore_patterns("toy_done.json"))
    (target / "demo.json").write_text(json.dumps({"lambda_r": cfg.default_rate, "decode": dict(cfg.decode)}, indent=2) + "\n")
    write_asset_readme(target, cfg)
    images = assets / "images"
    for old in images.glob("*.png"):
        old.unlink()
    test = datasets.load_from_disk(str(work / "data" / "test"))
    for label in range(len(toy_world.CLASS_NAMES)):
        row = test[label]  # image i has class i % 10
        row["image"].save(images / f"{toy_world.CLASS_NAMES[label].replace(' ', '_')}.png")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    log(f"bundled default: {target} ({size / 2**20:.1f} MiB) and {len(toy_world.CLASS_NAMES)} images")


def write_asset_readme(target: Path, cfg: ToyConfig) -> None:
    (target / "README.md").write_text(f"""# Bundled toy SLIM model

What `slim demo` (`make demo`) runs offline. Written by `python benchmarks/toy/run_toy.py --export`.

- `slim/`: a `SLIMPipeline` (safetensors) trained in the toy world of `slim_diffusers/toy_world.py`
  (64×64 images, ten colour × shape classes) at λr = {cfg.default_rate:g}: compressor, decompressor and control
  module trained by `training/train_stage1.py` and `train_stage2.py`; VAE, UNet and CLIP text encoder are
  the toy stand-ins for Stable Diffusion 2.1 trained by `benchmarks/toy/foundation.py`.
- `classifier/`: the toy ResNet (`ResNetForImageClassification`) that gave the RoI masks and the task loss.
- `demo.json`: the decoding settings of the toy evaluation.

It knows the toy world only. Results and how they were measured: the README's "Toy-scale reproduction on
CPU" and `benchmarks/toy/results/`.
""")


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "toy"), help="cache of every stage")
    parser.add_argument("--results-dir", default=str(HERE / "results"), help="where results.json and the plots go")
    parser.add_argument("--export", action="store_true", help="bundle the trained default into slim_diffusers/assets")
    parser.add_argument("--smoke", action="store_true", help="tiny step counts: checks the code path in minutes")
    args = parser.parse_args(argv)
    if args.smoke and args.export:
        parser.error("--export bundles a real run's model; not with --smoke")
    cfg = SMOKE if args.smoke else ToyConfig()
    torch.set_num_threads(2)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    t0 = time.perf_counter()
    foundation_info = stage_foundation(work, cfg, timings)
    stage_data(work, cfg, timings)
    models = stage_slim(work, cfg, timings)
    report = stage_evaluate(work, cfg, models, timings)
    # how long each stage took when it ran: a re-run reuses cached stages and times only what it does
    stage_file = work / "stage_seconds.json"
    stage_seconds = {**(json.loads(stage_file.read_text()) if stage_file.is_file() else {}), **timings}
    stage_file.write_text(json.dumps(stage_seconds, indent=2) + "\n")
    results = {
        "foundation": foundation_info,
        "config": {**asdict(cfg), "codec": TOY_CODEC, "image_size": IMAGE_SIZE, "classifiers": CLASSIFIERS},
        "claims": claims(work, cfg, models, report),
        "timings_s": timings,
        "stage_seconds_when_run": stage_seconds,
        "sum_of_stage_seconds": round(sum(stage_seconds.values()), 1),
        "total_s_this_run": round(time.perf_counter() - t0, 1),
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
    write_results(work, Path(args.results_dir), results)
    if args.export:
        export_default(work, cfg, models)
    print(json.dumps(results["claims"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
