"""Toy world v2: SLIM's claims tested where they can fail, end to end on two CPU cores.

    .venv/bin/python benchmarks/toy/run_toy.py                  # everything; finished stages are reused
    .venv/bin/python benchmarks/toy/run_toy.py --export         # also re-export the bundled demo model
    .venv/bin/python benchmarks/toy/run_toy.py --smoke --work-dir /tmp/toy   # the same code at tiny sizes (CI)

The world (``slim_diffusers/toy_world.py``): 96² images, 20 classes = 5 kinds × 4 markings, the target among
plain distractors on a costly background, captions that name the kind only. Stages, each cached under
``--work-dir`` (an interrupted run resumes; training jobs also resume from their last checkpoint):

1. foundation models (``foundation.py``): VAE, classifiers (ResNet: Grad-CAM, task loss, evaluation; ResNet-B:
   evaluation only) and a text-conditional latent diffusion model saved as a ``StableDiffusionPipeline``;
2. data: SLIM's training set through ``training/prepare_dataset.py`` (Grad-CAM masks of the ResNet, the coarse
   captions), and the held-out test set;
3. SLIM through ``training/train_stage1.py`` / ``train_stage2.py`` at every rate point, with RoI masks and
   without (the "w/o RoI" ablation), each trained the same way: stage 1 at the middle rate from the untrained
   model, the other rates fine-tuned from it, then stage 2 at every rate;
4. learned baselines (``learned_baselines.py``): bmshj2018-hyperprior trained for MSE, and fine-tuned with the
   classifier's cross-entropy (standing in for learned codecs for machines); they need only the ResNet, so the
   foundation stage trains them beside the LDM, and this stage loads them;
5. evaluation through the harness of ``slim evaluate`` (real bytes) of every codec and ablation;
6. the claims, with 95 % intervals (``claims.py``), written to ``benchmarks/toy/results/``.

Jobs that do not depend on each other run side by side, one thread each (two cores; small models gain
little from a second thread and a lot from a second process).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

import claims  # noqa: E402  (this folder is the script's: on sys.path when run as a script)
import foundation  # noqa: E402
from foundation import BASELINE_TRAIN_SEED, IMAGE_SIZE, SLIM_TRAIN_SEED, TEST_SEED  # noqa: E402

from slim_diffusers.utils.file_utils import (  # noqa: E402
    fsync_tree,
    replace_directory,
    staged_directory,
    write_atomically,
)
from slim_diffusers import toy_world  # noqa: E402

# SLIM's codec at toy scale: the 4×24×24 latent of a 96² image → y 48×12×12 (stride 2), z 32×3×3
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
    """Every setting of a run, fixed before any SLIM result was seen. ``SMOKE`` runs the same code in a couple of
    minutes (CI's check that the reproduction works end to end; its numbers mean nothing)."""

    rate_points: Tuple[float, ...] = (0.25, 1.0, 4.0, 16.0)  # λr, one SLIM model each; the highest: lowest rate
    warm_start_rate: float = 1.0  # stage 1 trains here from scratch; the other rates fine-tune from it
    # steps, batch, learning rate; sized so that the whole run fits 120 minutes on two cores
    slim_stage1_base: Tuple[int, int, float] = (500, 16, 1e-3)
    slim_stage1_finetune: Tuple[int, int, float] = (150, 16, 5e-4)
    slim_stage2: Tuple[int, int, float] = (80, 16, 3e-4)
    lambdas: Tuple[Tuple[str, float], ...] = (
        ("lambda_guide", 1.0), ("lambda_diffusion", 1.0), ("lambda_roi", 1.0), ("lambda_task", 0.1))
    # decoding: ẑ noised halfway on an 8-step schedule, so 4 denoising steps run
    decode: Tuple[Tuple[str, object], ...] = (("num_inference_steps", 8), ("strength", 0.5), ("seed", 0))
    steps_ablation: Tuple[int, ...] = (1, 2, 10)  # denoising steps run (besides the default 4), two lowest rates
    baseline_qualities: Tuple[int, ...] = (1, 5, 10, 20, 40, 70, 90)
    num_train: int = 3000
    num_test: int = 1000
    num_bitmap_images: int = 200
    foundation_steps: Tuple[Tuple[str, int], ...] = (("vae", 2000), ("resnet", 1200), ("resnet_b", 1000), ("ldm", 1200))
    ldm_pool: int = 8000
    eval_batch: int = 50
    bootstrap_replicates: int = 1000
    # loss options every training job gets. Toy world v2 trained with the paper's literal mask weighting, x̂'s timestep
    # uniform on [0, 1000) and LPIPS heads of random sign, the training scripts' behaviour before v3 changed their
    # defaults (slim_diffusers/training/losses.py): named here so that the v2 recipe still reproduces v2
    train_options: Tuple[str, ...] = ("--mask_normalization", "literal", "--stage2_timesteps", "uniform",
                                      "--lpips_signed_heads")
    lr_warmup_fraction: float = 0.0  # > 0: linear warm-up over this fraction of each job's steps
    timestep_spacing: str = "leading"  # the SLIM pipelines' DDIM schedule (the LDM's own: leading, as SD 2.1's)


# Toy world v3's SLIM recipe (the v2 review's findings 1–3): the masked terms normalised by the mask's mass, so the RoI
# and w/o-RoI variants at one λr sit at the same operating point; every chain warm-starts from the lowest λr (the most
# bits: v2's warm start at λr 1 was, under the literal mask weighting, λr ≈ 8 for the RoI model, where per-λ models
# collapsed); the paper's learning rate order (1e-4; 2e-4 for the from-scratch stage 1) with a 5 % linear warm-up; x̂'s
# timestep drawn from those of the decode (one step at t = 499: strength 0.5 on a trailing 2-step schedule); LPIPS
# heads non-negative; λt 0.02, where the task term pulls on ẑ about as hard as the guide and RoI terms together
# (benchmarks/toy/stage2_gradients.py on the bundled v2 model: balance at λt 0.017–0.022 on ẑ, 0.008 on the control
# module, under mass normalisation; v2's 0.1 made the task term 4.5–6× the others on ẑ, 9–13× on the control module).
# Ten times v2's steps. Run with --recipe v3 (its own work directory).
V3 = ToyConfig(
    warm_start_rate=0.25,
    lambdas=(("lambda_guide", 1.0), ("lambda_diffusion", 1.0), ("lambda_roi", 1.0), ("lambda_task", 0.02)),
    slim_stage1_base=(5000, 16, 2e-4), slim_stage1_finetune=(1500, 16, 1e-4),
    slim_stage2=(800, 16, 1e-4), decode=(("num_inference_steps", 2), ("strength", 0.5), ("seed", 0)),
    train_options=("--mask_normalization", "mass", "--stage2_timesteps", "decode", "--decode_num_inference_steps", "2",
                   "--decode_strength", "0.5"),
    lr_warmup_fraction=0.05, timestep_spacing="trailing",
)
SMOKE = ToyConfig(
    rate_points=(1.0, 4.0), warm_start_rate=1.0, slim_stage1_base=(2, 4, 1e-3), slim_stage1_finetune=(2, 4, 5e-4),
    slim_stage2=(2, 4, 3e-4), decode=(("num_inference_steps", 2), ("strength", 0.5), ("seed", 0)),
    steps_ablation=(1,), baseline_qualities=(5, 50),
    num_train=24, num_test=6, num_bitmap_images=3,
    foundation_steps=(("vae", 2), ("resnet", 2), ("resnet_b", 2), ("ldm", 2)), ldm_pool=16, eval_batch=4,
    bootstrap_replicates=20,
)


def is_smoke(cfg: ToyConfig) -> bool:
    """Whether ``cfg`` runs at SMOKE's sizes (SMOKE itself or a recipe's smoke variant)."""
    return cfg.foundation_steps == SMOKE.foundation_steps


def recipe_config(recipe: str = "v2", smoke: bool = False) -> ToyConfig:
    """The run's settings: v2's or v3's recipe, at full size or (``smoke``) at SMOKE's sizes with the recipe's options."""
    if recipe not in ("v2", "v3"):
        raise ValueError(f"unknown recipe {recipe!r}: v2 or v3")
    if not smoke:
        return V3 if recipe == "v3" else ToyConfig()
    if recipe == "v2":
        return SMOKE
    return replace(SMOKE, warm_start_rate=min(SMOKE.rate_points), train_options=V3.train_options, lambdas=V3.lambdas,
                   lr_warmup_fraction=V3.lr_warmup_fraction, timestep_spacing=V3.timestep_spacing)


CLASSIFIERS = ("resnet", "resnet_b")
# which jobs belong to which stage, for the stage wall times of the runs that did the work
STAGE_JOBS = {"foundation": "foundation/", "data": "data/", "slim": "slim/", "learned baselines": "learned/",
              "evaluation": "evaluate"}  # stand-ins for ResNet-50 (used in training) and ConvNeXt-T (never seen; a ResNet of another shape here)
_LOG_LOCK = threading.Lock()


def log(msg: str) -> None:
    with _LOG_LOCK:
        print(f"[toy {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rate_label(rate: float) -> str:
    return f"lambda_r={rate:g}"


# ---------------------------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One command of a chain; skipped when ``done`` exists (its own checkpoints resume it otherwise)."""

    name: str
    cmd: List[object]
    done: Path


def run_chains(chains: Dict[str, List[Job]], work: Path, timings: dict, record: Optional[Path] = None) -> None:
    """Each chain's jobs run in order; the chains run side by side, each job a process with one thread.

    Output goes to ``work/logs/<job>.log``; every job that ran gets its wall time in ``timings`` (and, with
    ``record``, in that JSON file as soon as it ends, beside the times recorded there before). A failing job stops
    its chain; the others finish first, then the error is raised."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def run_chain(jobs: List[Job]) -> None:
        for job in jobs:
            if job.done.exists():
                continue
            log(f"{job.name}: started")
            t0 = time.perf_counter()
            with open(logs / f"{job.name.replace('/', '_')}.log", "a", encoding="utf-8") as out:
                result = subprocess.run([str(c) for c in job.cmd], env=env, stdout=out, stderr=subprocess.STDOUT)
            if result.returncode != 0 or not job.done.exists():
                raise RuntimeError(f"{job.name} failed (exit {result.returncode}); see {logs / job.name.replace('/', '_')}.log")
            with _LOG_LOCK:
                timings[job.name] = round(time.perf_counter() - t0, 1)
                if record is not None:
                    recorded = json.loads(record.read_text()) if record.is_file() else {}
                    recorded[job.name] = timings[job.name]
                    write_atomically(record, (json.dumps(recorded, indent=2) + "\n").encode())
            log(f"{job.name}: {timings[job.name]} s")

    with ThreadPoolExecutor(max_workers=max(len(chains), 1)) as pool:
        futures = [pool.submit(run_chain, jobs) for jobs in chains.values()]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


# ---------------------------------------------------------------------------------------------- stages
def stage_foundation(work: Path, cfg: ToyConfig, timings: dict, learned_baselines: bool = True) -> dict:
    """The foundation models (and, beside the LDM, the learned baselines unless ``learned_baselines`` is off: studies
    that need only the foundation models skip them)."""
    f = work / "foundation"
    steps = dict(cfg.foundation_steps)
    script = HERE / "foundation.py"

    def job(name, *extra):
        return Job(f"foundation/{name}", [sys.executable, script, name, f / name, "--steps", steps[name], *extra],
                   f / name / "toy_done.json")

    # the learned baselines need only the ResNet: they train on the core the classifiers leave while the LDM trains
    learned = Job("learned/baselines", [sys.executable, HERE / "learned_baselines.py", "--work-dir", work / "learned",
                                        "--classifier", f / "resnet", "--image-size", IMAGE_SIZE,
                                        "--data-seed", BASELINE_TRAIN_SEED, "--test-seed", TEST_SEED, "--num-test", 20,
                                        "--threads", 1, *(["--tiny"] if is_smoke(cfg) else [])],
                  work / "learned" / "report.json")
    run_chains({
        "vae+ldm": [job("vae"), Job("foundation/ldm", [sys.executable, script, "ldm", f / "sd", "--steps", steps["ldm"],
                                                          "--vae", f / "vae", "--pool", cfg.ldm_pool], f / "sd" / "toy_done.json")],
        "classifiers, learned baselines": [job("resnet"), job("resnet_b"), *([learned] if learned_baselines else [])],
    }, work, timings)
    info = {name: json.loads((f / folder / "toy_done.json").read_text())
            for name, folder in (("vae", "vae"), ("resnet", "resnet"), ("resnet_b", "resnet_b"), ("ldm", "sd"))}
    check = f / "sd" / "text_to_image.json"
    if not check.is_file():
        result = foundation.text_to_image_accuracy(f / "sd", f / "resnet", per_class=8 if not is_smoke(cfg) else 1,
                                                   steps=20 if not is_smoke(cfg) else 2)
        write_atomically(check, json.dumps(result).encode())
    info["ldm"]["text_to_image"] = json.loads(check.read_text())
    ceiling = f / "vae" / "ceiling.json"
    if not ceiling.is_file():
        measured = foundation.vae_ceiling(f / "vae", f / "resnet", n=500 if not is_smoke(cfg) else 4)
        write_atomically(ceiling, json.dumps(measured).encode())
    info["vae"]["classifier_on_reconstructions"] = json.loads(ceiling.read_text())
    return info


def stage_data(work: Path, cfg: ToyConfig, timings: dict) -> None:
    data = work / "data"
    for folder, n, seed in ((data / "test", cfg.num_test, TEST_SEED), (data / "train-raw", cfg.num_train, SLIM_TRAIN_SEED)):
        if not (folder / "dataset_info.json").is_file():
            with staged_directory(folder) as stage:  # a kill while it is written leaves no folder that looks done
                toy_world.as_dataset(n, seed=seed, size=IMAGE_SIZE).save_to_disk(str(stage))
    raw = data / "train-raw"
    run_chains({"data": [Job("data/prepare_dataset", [
        sys.executable, REPO / "training" / "prepare_dataset.py", "--dataset_name", raw, "--split", "train",
        "--num_samples", 0, "--classifier_name_or_path", work / "foundation" / "resnet", "--caption_column", "caption",
        "--batch_size", 64, "--output_dir", data / "train"], data / "train" / "dataset_info.json")]}, work, timings)


def untrained_slim(sd: Path, out: Path, timestep_spacing: str) -> Path:
    """An untrained SLIM model at ``out`` (kept if it is there): ``sd``'s VAE, UNet and text encoder (a
    ``StableDiffusionPipeline`` folder), a new toy codec (seed 0), the control module copied from the UNet, DDIM with
    ``timestep_spacing``."""
    from diffusers import DDIMScheduler

    from slim_diffusers import SLIMPipeline

    if not (out / "model_index.json").is_file():
        torch.manual_seed(0)
        pipe = SLIMPipeline.from_stable_diffusion(str(sd), **TOY_CODEC)
        if timestep_spacing != pipe.scheduler.config.timestep_spacing:
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=timestep_spacing)
        pipe.save_pretrained(out)
    return out


def stage_init(work: Path, timestep_spacing: str = "leading") -> Path:
    """The untrained SLIM model every chain starts from; its scheduler's ``timestep_spacing`` is what its descendants
    train x̂ at (``--stage2_timesteps decode``) and decode with."""
    return untrained_slim(work / "foundation" / "sd", work / "slim" / "init", timestep_spacing)


def _train_job(name: str, script: str, model: Path, data: Path, out: Path, rate, no_roi: bool, stage: tuple,
               cfg: ToyConfig, extra=()) -> Job:
    """One training script's run; ``rate``: λr, or a sequence of them for a variable-rate model."""
    steps, batch, lr = stage
    cmd = [sys.executable, REPO / "training" / script, "--pretrained_model_name_or_path", model,
           "--train_data_dir", data, "--output_dir", out, "--resolution", IMAGE_SIZE,
           "--train_batch_size", batch, "--max_train_steps", steps, "--learning_rate", lr,
           "--checkpointing_steps", max(steps // 4, 1), "--checkpoints_total_limit", 1,
           "--resume_from_checkpoint", "latest", "--validation_steps", steps, "--num_validation_images", min(16, batch),
           "--report_to", "none", "--seed", 0, "--lambda_rate", *(rate if isinstance(rate, (list, tuple)) else [rate]), *sum(([f"--{k}", v] for k, v in cfg.lambdas), []),
           *(["--no_roi"] if no_roi else []), *cfg.train_options,
           *(["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", max(int(cfg.lr_warmup_fraction * steps), 1)]
             if cfg.lr_warmup_fraction > 0 else []), *extra]
    return Job(name, cmd, out / "model_index.json")


def slim_chains(work: Path, cfg: ToyConfig, variants=("roi", "no_roi")) -> Tuple[Dict[str, List[Job]], dict]:
    """The training chains of SLIM per rate point (``variants``: with RoI masks, without) and the models they write:
    in each chain, stage 1 at the warm-start rate from the untrained model, the other rates' stage 1 fine-tuned from
    it, then stage 2 at every rate."""
    init = stage_init(work, cfg.timestep_spacing)
    data = work / "data" / "train"
    stage2_extra = ["--classifier_name_or_path", work / "foundation" / "resnet", "--lpips_net", "alex",
                    "--lpips_random_init"]
    models: Dict[str, Dict[float, Path]] = {variant: {} for variant in variants}
    chains = {}
    for variant, no_roi in (("roi", False), ("no_roi", True)):
        if variant not in variants:
            continue
        suffix = "-noroi" if no_roi else ""
        base = work / "slim" / f"stage1-lr{cfg.warm_start_rate:g}{suffix}"
        jobs = [_train_job(f"slim/stage1-lr{cfg.warm_start_rate:g}{suffix}", "train_stage1.py", init, data, base,
                           cfg.warm_start_rate, no_roi, cfg.slim_stage1_base, cfg)]
        for rate in cfg.rate_points:
            s1 = base if rate == cfg.warm_start_rate else work / "slim" / f"stage1-lr{rate:g}{suffix}"
            if s1 is not base:
                jobs.append(_train_job(f"slim/stage1-lr{rate:g}{suffix}", "train_stage1.py", base, data, s1, rate,
                                       no_roi, cfg.slim_stage1_finetune, cfg))
            s2 = work / "slim" / f"stage2-lr{rate:g}{suffix}"
            jobs.append(_train_job(f"slim/stage2-lr{rate:g}{suffix}", "train_stage2.py", s1, data, s2, rate, no_roi,
                                   cfg.slim_stage2, cfg, stage2_extra))
            models[variant][rate] = s2
        chains[variant] = jobs
    return chains, models


def stage_slim(work: Path, cfg: ToyConfig, timings: dict) -> dict:
    """Both chains of :func:`slim_chains` (with and without RoI masks) side by side."""
    chains, models = slim_chains(work, cfg)
    run_chains(chains, work, timings)
    return models


def stage_learned(work: Path, cfg: ToyConfig, timings: dict, smoke: bool):
    """The learned baselines (``learned_baselines.py``): bmshj2018-hyperprior for MSE at every λ (one from scratch,
    the others fine-tuned from it) and each fine-tuned through the classifier's cross-entropy. The foundation stage
    trains them beside the LDM; here they are loaded (or trained, if that job's models are missing)."""
    import learned_baselines

    torch.set_num_threads(2)
    result = learned_baselines.train_learned_codecs(
        work / "learned", work / "foundation" / "resnet", sample_fn=toy_world.samples, data_seed=BASELINE_TRAIN_SEED,
        image_size=IMAGE_SIZE, config=learned_baselines.SMOKE if smoke else learned_baselines.LearnedBaselineConfig())
    timings.update({f"learned/{name}": seconds for name, seconds in result.timings_s.items()})
    return result


# ---------------------------------------------------------------------------------------------- evaluation
def load_pipeline(path: Path):
    from slim_diffusers import SLIMPipeline

    pipe = SLIMPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class CaptionOnlyCodec:
    """What the caption alone buys: a ``.slim`` file with the caption and no latent (an empty payload), decoded
    by the frozen LDM from noise with the control module switched off (its residuals scaled by 0)."""

    suffix = ".slim"

    def __init__(self, pipe, name: str = "caption only", steps: int = 8, seed: int = 0, guidance_scale: float = 1.0):
        self.pipe, self.name, self.steps, self.seed, self.guidance_scale = pipe, name, steps, seed, guidance_scale
        self.rate_points = ["caption"]

    def encode(self, image, rate_point, caption=None) -> bytes:
        from slim_diffusers import SLIMBitstream

        return SLIMBitstream(height=image.height, width=image.width, fingerprint=self.pipe.decompressor.fingerprint(),
                             caption=caption or "", payload=b"").to_bytes()

    def decode(self, data: bytes, rate_point):
        return self.decode_batch([data], rate_point)[0]

    def decode_batch(self, datas, rate_point):
        from slim_diffusers import SLIMBitstream

        pipe = self.pipe
        bitstreams = [SLIMBitstream.from_bytes(d) for d in datas]
        size = pipe._latent_size(bitstreams[0])
        zeros = torch.zeros(len(datas), pipe.unet.config.in_channels, *size)
        latents = pipe.denoise(zeros, [bs.caption for bs in bitstreams], self.steps, 1.0, self.guidance_scale, 0.0, 0.0,
                               [torch.Generator().manual_seed(self.seed) for _ in datas], None, None, ["latents"])
        pixels = [pipe.decode_latents(latents[i : i + 1], bs) for i, bs in enumerate(bitstreams)]
        return [pipe.image_processor.postprocess(p, output_type="pil")[0] for p in pixels]


class EncodeOnce:
    """The ablations that decode SLIM's own files another way (w/o diffusion, k steps) reuse its bytes: each image is
    encoded once per (model, caption), as a receiver would decode one file several ways. The bytes are those a
    second encoding would give (the encoder is deterministic and every codec sees the same batches); only the
    time of encoding again is saved."""

    def __init__(self):
        self.store: Dict[tuple, bytes] = {}

    def share(self, codec):
        encode_batch = codec.encode_batch

        def encode_once(images, rate_point, captions):
            captions = [codec.caption] * len(images) if codec.caption is not None else list(captions)
            # a variable-rate pipeline codes at several rates: the rate is part of what makes the bytes
            pipe = (id(codec.pipelines[rate_point]), (codec.rates or {}).get(rate_point))
            keys = [(pipe, c, hashlib.sha256(im.tobytes()).hexdigest()) for im, c in zip(images, captions)]
            todo = [i for i, k in enumerate(keys) if k not in self.store]
            if todo:
                for i, data in zip(todo, encode_batch([images[i] for i in todo], rate_point, [captions[i] for i in todo])):
                    self.store[keys[i]] = data
            return [self.store[k] for k in keys]

        codec.encode_batch = encode_once
        return codec


def evaluation_codecs(cfg: ToyConfig, models: dict, learned: dict) -> list:
    from slim_diffusers.evaluation.baselines import PillowCodec, pillow_supports
    from slim_diffusers.evaluation.codecs import SLIMCodec

    decode = dict(cfg.decode)
    roi = {rate_label(r): load_pipeline(p) for r, p in sorted(models["roi"].items())}
    no_roi = {rate_label(r): load_pipeline(p) for r, p in sorted(models["no_roi"].items())}
    lowest_two = {k: roi[k] for k in [rate_label(r) for r in sorted(cfg.rate_points)[-2:]]}
    once = EncodeOnce()
    codecs = [once.share(c) for c in (
        SLIMCodec(roi, name="SLIM", **decode),
        SLIMCodec(roi, name="SLIM w/o diffusion", use_diffusion=False),
        SLIMCodec(roi, name="SLIM empty caption", caption="", **decode),
        SLIMCodec(no_roi, name="SLIM w/o RoI", **decode),
    )]
    codecs.append(CaptionOnlyCodec(roi[rate_label(cfg.warm_start_rate)], steps=int(decode["num_inference_steps"]),
                                   seed=int(decode["seed"])))
    for k in cfg.steps_ablation:  # k steps run at strength 0.5: a schedule of 2k steps
        codecs.append(once.share(SLIMCodec(lowest_two, name=f"SLIM {k} step{'s' if k > 1 else ''}",
                                           **{**decode, "num_inference_steps": 2 * k})))
    codecs += [PillowCodec(fmt, qualities=cfg.baseline_qualities) for fmt in ("JPEG", "WEBP", "AVIF")
               if fmt != "AVIF" or pillow_supports("AVIF")]
    return codecs + learned.codecs()


def stage_evaluate(work: Path, cfg: ToyConfig, models: dict, learned: dict, timings: dict) -> dict:
    import datasets

    from slim_diffusers.evaluation.harness import Classifier
    from slim_diffusers.evaluation.run import run_evaluation

    torch.set_num_threads(2)
    codecs = evaluation_codecs(cfg, models, learned)
    classifiers = [Classifier.from_pretrained(str(work / "foundation" / name), name=name) for name in CLASSIFIERS]
    ds = datasets.load_from_disk(str(work / "data" / "test"))
    t0 = time.perf_counter()
    run = run_evaluation(work / "eval", ds, codecs, classifiers, caption_column="caption", anchor="JPEG",
                         envelope=True, batch_size=cfg.eval_batch)
    if run.rows_written:  # rows found finished are not evaluated again
        timings["evaluate"] = round(time.perf_counter() - t0, 1)
    return run.report


# -------------------------------------------------------------------------------------------------- export
FOUNDATION_V2 = ("VAE, UNet and CLIP text encoder are the toy stand-ins for Stable Diffusion 2.1 trained by\n"
                 "  `benchmarks/toy/foundation.py`.")


def export_default(work: Path, cfg: ToyConfig, models: dict, model: Optional[Path] = None,
                   demo: Optional[dict] = None, trained_as: Optional[str] = None, decode: Optional[dict] = None,
                   command: str = "benchmarks/toy/run_toy.py --export", classifier: Optional[Path] = None,
                   test_images: Optional[Path] = None, components: str = FOUNDATION_V2,
                   assets: Optional[Path] = None) -> None:
    """Bundle a SLIM model, the toy classifier and one test image per class into the package: by default SLIM's
    highest rate point (the lowest λr: the most accurate); ``model``, ``demo`` (what ``demo.json`` records besides
    the decoding settings) and ``trained_as`` (how the asset README describes its training) bundle another; ``decode``
    replaces the run's decoding settings. ``classifier`` (default: the run's ResNet), ``test_images`` (a saved
    dataset of the test split; default: the run's), ``components`` (the asset README's line on the frozen parts) and
    ``assets`` (default: the package's) serve other runs than run_toy.py's."""
    import datasets

    from slim_diffusers.training.convert_exact import convert_pipeline_folder, toy_world_images

    assets = Path(assets) if assets is not None else REPO / "slim_diffusers" / "assets"
    bundled = assets / "toy"
    # built beside the bundled model and swapped in whole: a kill leaves the earlier one in place
    target = bundled.with_name(".toy.export")
    if target.exists():
        shutil.rmtree(target)

    rate = min(cfg.rate_points)
    if model is None:
        model, demo, trained_as = models["roi"][rate], {"lambda_r": rate}, f"at λr = {rate:g}, its highest rate"
    pipe = load_pipeline(model)
    pipe.save_pretrained(target / "slim", safe_serialization=True)
    # the bundled model decodes bit-exactly on every device: its entropy model converted to integers
    convert_pipeline_folder(target / "slim", None, toy_world_images(32, size=IMAGE_SIZE))
    shutil.copytree(classifier or work / "foundation" / "resnet", target / "classifier",
                    ignore=shutil.ignore_patterns("toy_done.json"))
    settings = {**demo, "decode": dict(decode or cfg.decode)}
    write_atomically(target / "demo.json", (json.dumps(settings, indent=2) + "\n").encode())
    write_asset_readme(target, trained_as, command, components)
    fsync_tree(target)
    replace_directory(target, bundled)
    target = bundled
    images = assets / "images"
    images.mkdir(exist_ok=True)
    for old in images.glob("*.png"):
        old.unlink()
    test = datasets.load_from_disk(str(test_images or work / "data" / "test"))
    for label in range(len(toy_world.CLASS_NAMES)):
        row = test[label]  # image i has class i % len(CLASS_NAMES)
        row["image"].save(images / f"{toy_world.CLASS_NAMES[label].replace(' ', '_')}.png")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    log(f"bundled default: {target} ({size / 2**20:.1f} MiB) and {len(toy_world.CLASS_NAMES)} images; "
        "now run tests/golden/update_golden.py and commit the new golden files")


def write_asset_readme(target: Path, trained_as: str, command: str, components: str = FOUNDATION_V2) -> None:
    write_atomically(target / "README.md", (f"""# Bundled toy SLIM model

What `slim demo` (`make demo`) runs offline. Written by `python {command}`.

- `slim/`: a `SLIMPipeline` (safetensors, with the exact integer entropy model: its files decode bit-exactly on every device) trained in toy world v2 (`slim_diffusers/toy_world.py`: 96×96 images,
  20 classes = 5 kinds × 4 markings, captions that name the kind only) {trained_as}:
  compressor, decompressor and control module trained by `training/train_stage1.py` and `train_stage2.py`;
  {components}
- `classifier/`: the toy ResNet (`ResNetForImageClassification`) that gave the RoI masks and the task loss.
- `demo.json`: the decoding settings of the toy evaluation.

It knows the toy world only. Results and how they were measured: the project README's toy reproduction
section, `docs/toy.md` and `benchmarks/toy/results/`.
""").encode("utf-8"))


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "toy"), help="cache of every stage")
    parser.add_argument("--results-dir", default=None,
                        help="where the results are written (default: benchmarks/toy/results; with --smoke, "
                        "WORK_DIR/results, so a smoke run never replaces the committed results)")
    parser.add_argument("--export", action="store_true", help="bundle the trained default into slim_diffusers/assets")
    parser.add_argument("--smoke", action="store_true", help="tiny step counts: checks the code path in minutes")
    parser.add_argument("--recipe", choices=["v2", "v3"], default="v2",
                        help="v2: the committed results' SLIM recipe; v3: the recipe after the v2 review (V3; give it "
                        "its own --work-dir and --results-dir)")
    args = parser.parse_args(argv)
    if args.smoke and args.export:
        parser.error("--export bundles a real run's model; not with --smoke")
    if args.recipe == "v3" and not args.smoke and (args.work_dir == parser.get_default("work_dir") or not args.results_dir):
        parser.error("--recipe v3 needs its own --work-dir and --results-dir: the defaults hold v2's run and results")
    cfg = recipe_config(args.recipe, args.smoke)
    torch.set_num_threads(2)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results_dir) if args.results_dir else (work / "results" if args.smoke else HERE / "results")
    timings: dict = {}  # job -> seconds, for the jobs this call ran
    stage_file = work / "stage_seconds.json"
    saved = json.loads(stage_file.read_text()) if stage_file.is_file() else {"jobs": {}, "stages": {}}

    def stage(name: str, fn, *stage_args):
        """Run a stage and record, as soon as it ends, what it and its jobs took (only when it did work: a re-run
        reuses cached stages, and their times stay those of the run that made them)."""
        t_stage, before = time.perf_counter(), set(timings)
        result = fn(*stage_args)
        saved["jobs"].update(timings)
        if any(job.startswith(STAGE_JOBS[name]) for job in set(timings) - before):
            saved["stages"][name] = round(time.perf_counter() - t_stage, 1)
        write_atomically(stage_file, (json.dumps(saved, indent=2) + "\n").encode("utf-8"))
        return result

    t0 = time.perf_counter()
    foundation_info = stage("foundation", stage_foundation, work, cfg, timings)
    stage("data", stage_data, work, cfg, timings)
    models = stage("slim", stage_slim, work, cfg, timings)
    learned = stage("learned baselines", stage_learned, work, cfg, timings, args.smoke)
    report = stage("evaluation", stage_evaluate, work, cfg, models, learned, timings)
    t_claims = time.perf_counter()
    results = claims.measure(work, cfg, models, report, rate_label, load_pipeline)
    saved["stages"]["claims"] = round(time.perf_counter() - t_claims, 1)
    write_atomically(stage_file, (json.dumps(saved, indent=2) + "\n").encode("utf-8"))
    results.update({
        "foundation": foundation_info,
        "config": {**asdict(cfg), "codec": TOY_CODEC, "image_size": IMAGE_SIZE, "classifiers": CLASSIFIERS,
                   "classes": list(toy_world.CLASS_NAMES), "seeds": {"foundation": foundation.FOUNDATION_SEED,
                   "slim_train": SLIM_TRAIN_SEED, "baseline_train": BASELINE_TRAIN_SEED, "test": TEST_SEED,
                   "validation": foundation.VALIDATION_SEED}},
        "seconds": {"stages_when_run": saved["stages"], "jobs_when_run": saved["jobs"],
                    "this_call": round(time.perf_counter() - t0, 1)},
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    })
    claims.write_results(work, results_dir, results)
    if args.export:
        export_default(work, cfg, models)
    print(json.dumps(results["claims"], indent=2)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
