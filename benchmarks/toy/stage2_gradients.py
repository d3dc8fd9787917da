"""How strongly each term of SLIM's stage-2 objective pulls on what trains: the gradient norm of every weighted term into
ẑ (the decompressed latent, as the codec decodes it; the compressor learns through it) and into the control module's
parameters, on a batch of validation images (toy world seed 5), for the mask weightings and x̂ timesteps of
:mod:`slim_diffusers.training.losses`. The rate term does not act on ẑ and is left out.

    .venv/bin/python benchmarks/toy/stage2_gradients.py                       # the bundled model, 16 images
    .venv/bin/python benchmarks/toy/stage2_gradients.py --model DIR --lambda-task 0.1 --out grads.json

This is how λt is chosen: no term should drown the others. The script prints, per setting, the λt under which the
task term's pull equals the others' — on ẑ (λg·guide + λroi·RoI) and on the control module (λd·denoising + λroi·RoI):
the balance points; a λt between them keeps every term at work. Run it on the stage-1 model that stage 2 starts from. RoI masks are the classifier's Grad-CAM masks of the true class, as
``training/prepare_dataset.py`` writes them.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from foundation import IMAGE_SIZE, VALIDATION_SEED, to_pixels  # noqa: E402

from slim_diffusers import toy_world  # noqa: E402
from slim_diffusers.training import losses  # noqa: E402

BUNDLED = REPO / "slim_diffusers" / "assets" / "toy"
TERMS = ("guide_loss", "diffusion_loss", "roi", "task_loss")


def measure(pipe, batch, weights, rate, classifier, preprocess, lpips_model, normalization, stage2_timesteps, seed=0):
    """Gradient norms of each weighted term into ẑ, the compressor and the control module (one batch, one draw)."""
    captured = []
    run_codec = losses.run_codec

    def keep_latents(*args, **kwargs):
        # ẑ as the codec decodes it (eval mode: quantised, as from the real bytes), a leaf so that each term's pull on
        # it can be read; a model with an exact (integer) entropy model does not run its training pass at all
        with torch.no_grad():
            coded = run_codec(*args, **kwargs)
        coded.latents.requires_grad_(True)
        captured.append(coded.latents)
        return coded

    losses.run_codec = keep_latents
    try:
        terms = losses.slim_losses(pipe, batch["pixels"], batch["mask"], batch["embeds"], weights, stage=2,
                                   labels=batch["labels"], classifier=classifier, classifier_preprocess=preprocess,
                                   lpips_model=lpips_model, generator=torch.Generator().manual_seed(seed), rate=rate,
                                   mask_normalization=normalization, stage2_timesteps=stage2_timesteps)
    finally:
        losses.run_codec = run_codec
    z_hat = captured[0]
    weighted = {
        "guide_loss": weights.guide * terms["guide_loss"],
        "diffusion_loss": weights.diffusion * terms["diffusion_loss"],
        "roi": weights.roi * (terms["roi_mse"] + terms["roi_lpips"]),
        "task_loss": weights.task * terms["task_loss"],
    }
    groups = {"z_hat": [z_hat], "control_module": [p for p in pipe.controlnet.parameters() if p.requires_grad]}
    norms = {}
    for name in TERMS:
        norms[name] = {"value": float(weighted[name].detach())}
        for group, params in groups.items():
            grads = torch.autograd.grad(weighted[name], params, retain_graph=True, allow_unused=True)
            norms[name][group] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)
                                                  or torch.tensor(0.0)))
    # the λt at which the task term pulls as hard as the other terms: on ẑ (guide + RoI) and on the control module
    # (denoising + RoI)
    others = {"z_hat": ("guide_loss", "roi"), "control_module": ("diffusion_loss", "roi")}
    balance = {group: (weights.task * sum(norms[t][group] for t in terms_) / norms["task_loss"][group]
                       if norms["task_loss"][group] > 0 else None) for group, terms_ in others.items()}
    return {"terms": norms, "lambda_task_balance": balance,
            "x_hat_timesteps": None if stage2_timesteps is None else stage2_timesteps.tolist()}


def main(argv=None) -> int:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from slim_diffusers import SLIMPipeline
    from slim_diffusers.semantics.roi import compute_roi_masks
    from slim_diffusers.training.training_utils import classifier_preprocess_fn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=BUNDLED / "slim")
    parser.add_argument("--classifier", type=Path, default=BUNDLED / "classifier")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rate", type=int, default=None, help="a variable-rate model's level (default: demo.json's)")
    parser.add_argument("--lambda-guide", type=float, default=1.0)
    parser.add_argument("--lambda-diffusion", type=float, default=1.0)
    parser.add_argument("--lambda-roi", type=float, default=1.0)
    parser.add_argument("--lambda-task", type=float, default=0.1)
    parser.add_argument("--decode", type=float, nargs=2, default=None, metavar=("STEPS", "STRENGTH"),
                        help="the decode whose timesteps x̂ is drawn from (default: demo.json's)")
    parser.add_argument("--no-roi", action="store_true",
                        help="masks of ones, as the 'w/o RoI' ablation trains (train_stage2.py --no_roi)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pipe = SLIMPipeline.from_pretrained(str(args.model))
    demo_file = args.model.parent / "demo.json"
    demo = json.loads(demo_file.read_text()) if demo_file.is_file() else {}
    steps, strength = args.decode or (demo.get("decode", {}).get("num_inference_steps", 20),
                                      demo.get("decode", {}).get("strength", 1.0))
    for m in (pipe.vae, pipe.unet, pipe.text_encoder):
        m.requires_grad_(False).eval()
    pipe.compressor.eval(), pipe.decompressor.eval()  # the codec as it decodes; the control module as it trains
    pipe.controlnet.train().requires_grad_(True)
    classifier = AutoModelForImageClassification.from_pretrained(str(args.classifier)).eval().requires_grad_(False)
    processor = AutoImageProcessor.from_pretrained(str(args.classifier))
    items = toy_world.samples(args.images, seed=VALIDATION_SEED, size=IMAGE_SIZE)
    masks = compute_roi_masks(classifier, processor, [i.image for i in items], labels=[i.label for i in items]).masks
    if args.no_roi:
        masks = [torch.ones_like(torch.as_tensor(m)) for m in masks]
    batch = {"pixels": to_pixels([i.image for i in items]), "mask": torch.stack([m.reshape(1, IMAGE_SIZE, IMAGE_SIZE)
                                                                                 for m in masks]).float(),
             "embeds": pipe.encode_prompt([i.caption for i in items], "cpu", False)[0],
             "labels": torch.tensor([i.label for i in items])}
    levels = pipe.decompressor.num_rate_levels
    rate = None
    lambdas = dict(guide=args.lambda_guide, diffusion=args.lambda_diffusion, roi=args.lambda_roi, task=args.lambda_task)
    if levels:
        level = args.rate if args.rate is not None else int(demo.get("default_rate", levels - 1))
        rate_levels = tuple(float(demo["rate_levels"][str(i)]) if "rate_levels" in demo else 1.0 for i in range(levels))
        weights = losses.LossWeights(rate_levels=rate_levels, **lambdas)
        rate = torch.full((args.images,), level)
    else:
        weights = losses.LossWeights(**lambdas)
    lpips_model = losses.perceptual_distance("alex", random_init=True)
    decode_t = losses.decode_timesteps(pipe.scheduler, int(steps), float(strength))
    model_name = args.model.resolve()
    results = {"model": str(model_name.relative_to(REPO) if model_name.is_relative_to(REPO) else args.model), "images": args.images, "rate_level": None if rate is None else int(rate[0]),
               "no_roi": bool(args.no_roi), "decode": {"num_inference_steps": int(steps), "strength": float(strength),
                          "timestep_spacing": pipe.scheduler.config.timestep_spacing},
               "weights": weights.as_dict(), "settings": {}}
    preprocess = classifier_preprocess_fn(str(args.classifier))
    for normalization in ("literal", "mass"):
        for name, t2 in (("uniform", None), ("decode", decode_t)):
            key = f"mask {normalization}, x̂ timesteps {name}"
            results["settings"][key] = measure(pipe, batch, weights, rate, classifier, preprocess, lpips_model,
                                               normalization, t2)
            r = results["settings"][key]
            b = r["lambda_task_balance"]
            print(f"\n{key}  (λt balancing the task's pull: on ẑ {b['z_hat']:.3g}, on the control module "
                  f"{b['control_module']:.3g})")
            print(f"  {'term (weighted)':<16} {'value':>9} {'|∇ẑ|':>10} {'|∇control|':>11}")
            for term, v in r["terms"].items():
                print(f"  {term:<16} {v['value']:>9.4f} {v['z_hat']:>10.3g} {v['control_module']:>11.3g}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
