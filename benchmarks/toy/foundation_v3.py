"""Toy world v3's foundation gates: do the stand-ins meet what SLIM takes for granted?

    .venv/bin/python benchmarks/toy/foundation_v3.py                     # the bundled model (slim_diffusers/assets/toy)
    .venv/bin/python benchmarks/toy/foundation_v3.py --model DIR --classifier DIR --results-dir DIR
    .venv/bin/python benchmarks/toy/foundation_v3.py --smoke --work-dir /tmp/gates   # tiny sizes (CI)
    .venv/bin/python benchmarks/toy/foundation_v3.py --stages prior --prior-model outputs/prior_v3/sd \
        --results-dir outputs/prior_v3/gates                         # the prior gate of train_prior.py's LDM

SLIM's decoder leans on a pretrained prior (Stable Diffusion 2.1), a VAE that keeps what the classifier reads and a
control module that carries ẑ into the UNet. Before any claim of SLIM is tested in the toy world, each of these is
measured on the validation split (toy world seed 5, never used for training or the final test), with 95 % intervals:

- ``classifier``: the ResNet on clean images (gate: ≥ 99 % top-1);
- ``vae_ceiling``: the ResNet on the VAE's reconstructions of clean images, the most any codec of the latent can keep
  (gate: ≥ 95 %);
- ``prior``: the LDM (UNet + text encoder, the control module switched off) drawing from captions alone, from noise:
  the share of drawings the ResNet puts in the captioned kind (gate: ≥ 90 %), and each of the four variants (markings)
  drawn in 10–40 % of the drawings (captions name the kind only, so a prior that knows the world draws every variant);
- ``control_ceiling``: the control module + UNet decoding from the *uncompressed* latent z as control, at the decode
  settings the pipeline uses (``demo.json``: strength 0.5) and from noise (strength 1), paired with the VAE alone on
  the same images (gate: within 5 points of the VAE). The same for two artificially degraded controls, z blurred and
  z coarsely quantised: there the diffusion decoder should beat the VAE alone (reported, not a gate: no threshold was
  set before the measurement).

Each stage's result is cached in ``--work-dir`` (keyed by its settings: a changed setting measures again); the results,
with the gates, the CPU and wall seconds each stage spent and the models' provenance, go to
``RESULTS_DIR/foundation_v3.json`` (written atomically).
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from foundation import IMAGE_SIZE, VALIDATION_SEED, to_pixels  # noqa: E402

from slim_diffusers import toy_world  # noqa: E402
from slim_diffusers.evaluation.statistics import accuracy_interval  # noqa: E402
from slim_diffusers.utils.file_utils import write_atomically  # noqa: E402

BUNDLED = REPO / "slim_diffusers" / "assets" / "toy"
# fixed before the first measurement (issue: "a fair test of SLIM, part 1")
GATES = {"classifier_top1": 99.0, "vae_ceiling_top1": 95.0, "prior_kind_accuracy": 90.0,
         "prior_variant_share": (10.0, 40.0), "control_ceiling_max_drop": 5.0}


def settings(smoke: bool) -> dict:
    """How many images and steps each stage uses; ``--smoke`` checks the code path in seconds (numbers meaningless)."""
    if smoke:
        return dict(clean_images=4, ceiling_images=4, prior_per_kind=2, prior_steps=2, control_images=4,
                    noise_steps=2, bootstrap=50, batch=4)
    return dict(clean_images=500, ceiling_images=500, prior_per_kind=40, prior_steps=20, control_images=200,
                noise_steps=20, bootstrap=2000, batch=50)


# -------------------------------------------------------------------------------------------- measuring helpers
class Reader:
    """The classifier of the gates, on pixels in [-1, 1] rounded to 8 bits as a decoded image file would be."""

    def __init__(self, classifier_dir: Path):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.model = AutoModelForImageClassification.from_pretrained(str(classifier_dir)).eval()
        self.processor = AutoImageProcessor.from_pretrained(str(classifier_dir))

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> List[int]:
        from PIL import Image

        arrays = ((pixels.clamp(-1, 1).permute(0, 2, 3, 1).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
        inputs = self.processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")
        return self.model(**inputs).logits.argmax(-1).tolist()


def share(hits: Sequence[bool]) -> dict:
    """A share of images (percent) with its 95 % Wilson interval."""
    n, k = len(hits), int(sum(bool(h) for h in hits))
    low, high = accuracy_interval(k, n)
    return {"value": 100.0 * k / n, "low": low, "high": high, "n": n}


def paired_difference(a: Sequence[bool], b: Sequence[bool], replicates: int, seed: int = 0) -> dict:
    """Top-1 of ``a`` minus top-1 of ``b`` on the same images (points), with a 95 % percentile bootstrap over images."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (replicates, len(a)))
    diffs = 100.0 * (a[idx].mean(1) - b[idx].mean(1))
    return {"value": 100.0 * float(a.mean() - b.mean()), "low": float(np.percentile(diffs, 2.5)),
            "high": float(np.percentile(diffs, 97.5)), "n": int(len(a))}


def validation_items(n: int):
    return toy_world.samples(n, seed=VALIDATION_SEED, size=IMAGE_SIZE)


def batches(items, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def blur_latents(z: torch.Tensor) -> torch.Tensor:
    """z with its finest detail removed: area-averaged to half size and upsampled back (bilinear)."""
    return F.interpolate(F.avg_pool2d(z, 2), size=z.shape[-2:], mode="bilinear", align_corners=False)


def quantize_latents(z: torch.Tensor, step: float = 1.0) -> torch.Tensor:
    """z rounded to a coarse grid (``step`` in the scaled latent's units, where the latents have unit spread)."""
    return torch.round(z / step) * step


DEGRADATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "z": lambda z: z, "z blurred": blur_latents, "z quantised (step 1)": quantize_latents}


# ----------------------------------------------------------------------------------------------------- stages
def stage_classifier(ctx, s) -> dict:
    items = validation_items(s["clean_images"])
    hits = []
    for chunk in batches(items, s["batch"]):
        pred = ctx.reader.predict(to_pixels([i.image for i in chunk]))
        hits += [p == i.label for p, i in zip(pred, chunk)]
    top1 = share(hits)
    return {"top1": top1, "gate": GATES["classifier_top1"], "passed": top1["value"] >= GATES["classifier_top1"]}


@torch.no_grad()
def stage_vae_ceiling(ctx, s) -> dict:
    vae = ctx.pipe.vae
    items = validation_items(s["ceiling_images"])
    hits, kinds = [], []
    for chunk in batches(items, s["batch"]):
        recon = vae.decode(vae.encode(to_pixels([i.image for i in chunk])).latent_dist.mode()).sample
        pred = ctx.reader.predict(recon)
        hits += [p == i.label for p, i in zip(pred, chunk)]
        kinds += [toy_world.kind_of(p) == toy_world.kind_of(i.label) for p, i in zip(pred, chunk)]
    top1 = share(hits)
    return {"top1": top1, "kind_accuracy": share(kinds), "gate": GATES["vae_ceiling_top1"],
            "passed": top1["value"] >= GATES["vae_ceiling_top1"]}


def _denoise(pipe, control, captions, steps, strength, guidance, conditioning_scale, seed):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(captions))]
    return pipe.denoise(control, captions, steps, strength, guidance, conditioning_scale, 0.0, generators, None, None,
                        ["latents"])


@torch.no_grad()
def stage_prior(ctx, s) -> dict:
    """The LDM alone from captions ("a star"): zero control scaled by 0, from pure noise, classifier-free guidance as
    the earlier text-to-image check used (3.0)."""
    pipe = ctx.pipe
    n_kinds = len(toy_world.KINDS)
    kinds = [k for k in range(n_kinds) for _ in range(s["prior_per_kind"])]
    size = IMAGE_SIZE // pipe.vae_scale_factor
    preds = []
    for start in range(0, len(kinds), s["batch"]):
        chunk = kinds[start : start + s["batch"]]
        control = torch.zeros(len(chunk), pipe.unet.config.in_channels, size, size)
        latents = _denoise(pipe, control, [f"a {toy_world.KINDS[k]}" for k in chunk], s["prior_steps"], 1.0,
                           ctx.prior_guidance, 0.0, start)
        preds += ctx.reader.predict(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample)
    kind_hits = [toy_world.kind_of(p) == k for p, k in zip(preds, kinds)]
    variants = [toy_world.variant_of(p) for p in preds]
    variant_share = {v: share([x == i for x in variants]) for i, v in enumerate(toy_world.VARIANTS)}
    per_kind = {toy_world.KINDS[k]: {"kind_accuracy": share([h for h, kk in zip(kind_hits, kinds) if kk == k]),
                                     "variants": {v: sum(1 for x, kk in zip(variants, kinds) if kk == k and x == i)
                                                  for i, v in enumerate(toy_world.VARIANTS)}}
                for k in range(n_kinds)}
    kind_accuracy = share(kind_hits)
    low, high = GATES["prior_variant_share"]
    variants_ok = all(low <= e["value"] <= high for e in variant_share.values())
    return {"kind_accuracy": kind_accuracy, "variant_share": variant_share, "per_kind": per_kind,
            "steps": s["prior_steps"], "guidance_scale": ctx.prior_guidance, "timestep_spacing": ctx.spacing,
            "gate": {"kind_accuracy": GATES["prior_kind_accuracy"], "variant_share": [low, high]},
            "passed": kind_accuracy["value"] >= GATES["prior_kind_accuracy"] and variants_ok}


@torch.no_grad()
def stage_control_ceiling(ctx, s, controls: Sequence[str] = tuple(DEGRADATIONS)) -> dict:
    """The control path alone: every decoder reads z (or a degraded z, ``controls`` of ``DEGRADATIONS``) of the same
    images with its true caption."""
    pipe = ctx.pipe
    items = validation_items(s["control_images"])
    decode = ctx.decode  # the pipeline's own settings (demo.json)
    decoders = {
        "vae": None,
        f"diffusion, strength {decode['strength']:g}, {decode['num_inference_steps']}-step schedule":
            (decode["num_inference_steps"], decode["strength"]),
        f"diffusion from noise, {s['noise_steps']} steps": (s["noise_steps"], 1.0),
    }
    hits = {(c, d): [] for c in controls for d in decoders}
    scale = pipe.vae.config.scaling_factor
    for start, chunk in zip(range(0, len(items), s["batch"]), batches(items, s["batch"])):
        z = pipe.vae.encode(to_pixels([i.image for i in chunk])).latent_dist.mode() * scale
        for c in controls:
            control = DEGRADATIONS[c](z)
            for d, how in decoders.items():
                latents = control if how is None else _denoise(pipe, control, [i.caption for i in chunk], how[0],
                                                               how[1], 1.0, 1.0, int(decode.get("seed", 0)) + start)
                pred = ctx.reader.predict(pipe.vae.decode(latents / scale).sample)
                hits[(c, d)] += [p == i.label for p, i in zip(pred, chunk)]
    out = {"images": len(items), "decode": decode, "timestep_spacing": ctx.spacing, "controls": {}}
    passed = True
    for c in controls:
        entry = {}
        for d in decoders:
            entry[d] = {"top1": share(hits[(c, d)])}
            if d != "vae":
                entry[d]["minus_vae"] = paired_difference(hits[(c, d)], hits[(c, "vae")], s["bootstrap"])
                if c == "z":
                    ok = entry[d]["minus_vae"]["value"] >= -GATES["control_ceiling_max_drop"]
                    entry[d]["passed"] = ok
                    passed &= ok
                else:
                    entry[d]["beats_vae"] = entry[d]["minus_vae"]["value"] > 0
        out["controls"][c] = entry
    out["gate"] = f"diffusion from z within {GATES['control_ceiling_max_drop']:g} points of the VAE on the same images"
    out["passed"] = passed
    return out


@torch.no_grad()
def stage_prior_detail(ctx, s) -> dict:
    """A diagnostic, not a gate: does the LDM alone keep the markings it is handed? The true z of validation images,
    noised to each of ``DETAIL_STRENGTHS`` and denoised by the UNet alone (control scaled by 0; 20 trailing steps over
    the whole schedule, so strength 0.4 runs 8 from t ≈ 400) with the true caption, read by the ResNet: top-1 and the
    share of each variant read as itself. A prior that draws a variant keeps it from small noise and, as the noise
    grows, draws it again; one that does not replaces it with what it does draw."""
    pipe = ctx.pipe
    items = validation_items(s["control_images"])
    scale = pipe.vae.config.scaling_factor
    hits = {strength: [] for strength in DETAIL_STRENGTHS}
    for start, chunk in zip(range(0, len(items), s["batch"]), batches(items, s["batch"])):
        z = pipe.vae.encode(to_pixels([i.image for i in chunk])).latent_dist.mode() * scale
        for strength in DETAIL_STRENGTHS:
            latents = _denoise(pipe, z, [i.caption for i in chunk], s["prior_steps"], strength, ctx.prior_guidance, 0.0,
                               start)
            hits[strength] += list(zip(ctx.reader.predict(pipe.vae.decode(latents / scale).sample),
                                       [i.label for i in chunk]))
    out = {"images": len(items), "steps": s["prior_steps"], "guidance_scale": ctx.prior_guidance,
           "timestep_spacing": ctx.spacing, "strengths": {}}
    for strength, pairs in hits.items():
        variant_kept = {v: share([toy_world.variant_of(p) == i for p, label in pairs
                                  if toy_world.variant_of(label) == i]) for i, v in enumerate(toy_world.VARIANTS)}
        out["strengths"][f"{strength:g}"] = {"top1": share([p == label for p, label in pairs]),
                                             "kind_accuracy": share([toy_world.kind_of(p) == toy_world.kind_of(label)
                                                                     for p, label in pairs]),
                                             "variant_kept": variant_kept}
    return out


DETAIL_STRENGTHS = (0.2, 0.4, 0.6, 0.8)
STAGES = {"classifier": stage_classifier, "vae_ceiling": stage_vae_ceiling, "prior": stage_prior,
          "control_ceiling": stage_control_ceiling}
DIAGNOSTICS = {"prior_detail": stage_prior_detail}  # measured on request (--stages), reported beside the gates


# ---------------------------------------------------------------------------------------------------- context
class Context:
    def __init__(self, model: Path, classifier: Path, spacing: str, prior_guidance: float, prior_model: Path = None):
        from diffusers import DDIMScheduler

        from slim_diffusers import SLIMPipeline

        self.pipe = SLIMPipeline.from_pretrained(str(model))
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config, timestep_spacing=spacing)
        self.spacing, self.prior_guidance = spacing, prior_guidance
        self.reader = Reader(classifier)
        if prior_model is not None:  # another LDM's UNet and text encoder (e.g. train_prior.py's) for the prior gate
            from diffusers import UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer

            self.pipe.unet = UNet2DConditionModel.from_pretrained(str(prior_model / "unet")).eval()
            self.pipe.text_encoder = CLIPTextModel.from_pretrained(str(prior_model / "text_encoder")).eval()
            self.pipe.tokenizer = CLIPTokenizer.from_pretrained(str(prior_model / "tokenizer"))
        demo = model.parent / "demo.json"
        self.decode = (json.loads(demo.read_text())["decode"] if demo.is_file()
                       else {"num_inference_steps": 2, "strength": 0.5, "seed": 0})


def provenance(paths: Sequence[Path]) -> dict:
    """SHA-256 of every weights file the gates read, and the commit of the code that measured them."""
    files = {}
    for root in paths:
        for f in sorted(root.rglob("*.safetensors")):
            files[str(f.relative_to(REPO) if f.is_relative_to(REPO) else f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"weights_sha256": files, "code_commit": commit}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=BUNDLED / "slim", help="a SLIM pipeline (VAE, UNet, text encoder, "
                        "control module); default: the bundled toy model")
    parser.add_argument("--classifier", type=Path, default=BUNDLED / "classifier", help="the toy ResNet")
    parser.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "foundation_v3", help="cache of every stage")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default: benchmarks/toy/results (with --smoke: WORK_DIR/results)")
    parser.add_argument("--timestep-spacing", choices=["leading", "trailing"], default="trailing",
                        help="the DDIM schedule's spacing at decode (the bundled model decodes with trailing)")
    parser.add_argument("--prior-guidance", type=float, default=3.0, help="classifier-free guidance of the prior gate")
    parser.add_argument("--prior-model", type=Path, default=None,
                        help="measure the prior gate of this LDM (a StableDiffusionPipeline folder, e.g. train_prior.py's "
                        "OUT/sd) instead of --model's UNet and text encoder; only with --stages prior")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES) + list(DIAGNOSTICS), default=list(STAGES),
                        help="the gates (default: all) and, on request, the diagnostics (prior_detail)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code path in seconds")
    args = parser.parse_args(argv)
    for path in (args.model, args.classifier):
        if not path.is_dir():
            parser.error(f"{path} is not a directory: give a saved SLIM pipeline (--model) and classifier (--classifier)")
    if args.prior_model is not None and not set(args.stages) <= {"prior", "prior_detail"}:
        parser.error("--prior-model replaces the UNet the control module was trained with: measure it with --stages "
                     "prior (and prior_detail)")
    if args.prior_model is not None and args.results_dir is None and not args.smoke:
        parser.error("--prior-model needs its own --results-dir: the default holds the foundation's gates")
    s = settings(args.smoke)
    results_dir = args.results_dir or (args.work_dir / "results" if args.smoke else HERE / "results")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ctx = Context(args.model, args.classifier, args.timestep_spacing, args.prior_guidance, args.prior_model)
    results = {"gates": {}, "diagnostics": {}, "budget": {}, "settings": s, "validation_seed": VALIDATION_SEED}
    for name in args.stages:
        key = {"settings": s, "model": str(args.model.resolve()), "classifier": str(args.classifier.resolve()),
               "spacing": args.timestep_spacing, "prior_guidance": args.prior_guidance,
               **({} if args.prior_model is None else {"prior_model": str(args.prior_model.resolve())})}
        # another prior's measurement is cached beside the foundation's, not over it
        tag = "" if args.prior_model is None else "-" + hashlib.sha256(key["prior_model"].encode()).hexdigest()[:8]
        cache = args.work_dir / f"{name}{tag}.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else None
        if cached is None or cached.get("key") != key:
            wall, cpu = time.perf_counter(), time.process_time()
            result = {**STAGES, **DIAGNOSTICS}[name](ctx, s)
            cached = {"key": key, "result": result, "wall_seconds": round(time.perf_counter() - wall, 1),
                      "cpu_seconds": round(time.process_time() - cpu, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
            write_atomically(cache, json.dumps(cached, indent=2).encode())
            print(f"[gates] {name}: passed={result.get('passed', '(a diagnostic)')} ({cached['wall_seconds']} s)",
                  flush=True)
        results["gates" if name in STAGES else "diagnostics"][name] = cached["result"]
        results["budget"][name] = {k: cached[k] for k in ("wall_seconds", "cpu_seconds", "date")}
    results["all_passed"] = all(g["passed"] for g in results["gates"].values()) if results["gates"] else None
    results["provenance"] = {
        "model": str(args.model.relative_to(REPO) if args.model.resolve().is_relative_to(REPO) else args.model),
        "classifier": str(args.classifier.relative_to(REPO) if args.classifier.resolve().is_relative_to(REPO)
                          else args.classifier),
        **provenance([args.model, args.classifier, *([args.prior_model] if args.prior_model else [])]),
        "command": "benchmarks/toy/foundation_v3.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(results_dir / "foundation_v3.json", (json.dumps(results, indent=2) + "\n").encode())
    print(json.dumps({k: g["passed"] for k, g in results["gates"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
