"""Toy world v3's text-to-image prior: the toy LDM (UNet + CLIP text encoder) trained on until it draws what a caption
names, resumably, with its training curve and the prior gate logged as it goes.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/toy/train_prior.py --out outputs/prior_v3 --steps 60000
    (the same command again resumes from the last checkpoint; --smoke checks the code path in seconds)

The v2 LDM (1200 steps) draws the captioned kind in a quarter of its drawings (``foundation_v3.py``'s prior gate):
undertrained, not too small for a world of 5 outlines × 4 markings. So this continues training the bundled toy model's
UNet and text encoder (``--init``; ``--from-scratch`` builds ``foundation.py``'s architecture anew) on latents of the
frozen bundled VAE, with what the diffusers text-to-image examples add to the plain ε-loss: an EMA of the weights (the
drawn model), min-SNR-γ loss weighting (γ = 5, Hang et al. 2023), a linear learning-rate warm-up, 10 % of captions
dropped so that classifier-free guidance works at decode. Trained that way, its drawings hardly depended on the
caption (docs/toy.md: flat at 32–42 % over 6000 steps in two runs), so two options go further: ``--target-weight``
weighs the ε-loss up on the target, whose outline and markings are all a caption and a variant decide, against the
background that is most of the frame; ``--text-embedding`` gives every ResNet block the pooled caption through the
timestep embedding, besides the cross-attention layers.

Written under ``--out``:

- ``curve.jsonl``: one line per ``--log-every`` steps (mean loss, learning rate, wall and CPU seconds), and one per
  ``--eval-every`` steps with the prior gate on the EMA weights (kind accuracy of drawings from captions alone,
  the variants' shares; toy world validation classifier), appended as training goes;
- ``checkpoint/``: the UNet, its EMA, the text encoder (``save_pretrained``, safetensors), the optimizer's state
  (safetensors) and ``state.json`` (step, seconds), replaced atomically every ``--checkpoint-every`` steps;
- ``sd/``: a ``StableDiffusionPipeline`` of the EMA weights with the VAE (safetensors) at the end, with
  ``provenance.json`` (command, seed, steps, wall and CPU time, machine, init weights' hashes).
"""

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import foundation  # noqa: E402
from convergence import log_line  # noqa: E402
from foundation import IMAGE_SIZE  # noqa: E402

from slim_diffusers import toy_world  # noqa: E402
from slim_diffusers.training.train import replay_schedule  # noqa: E402
from slim_diffusers.utils.file_utils import (  # noqa: E402
    fsync_tree,
    replace_directory,
    staged_directory,
    write_atomically,
)

BUNDLED = REPO / "slim_diffusers" / "assets" / "toy"
POOL_SEED = foundation.FOUNDATION_SEED + 20  # the v2 LDM's training images (the foundation seed's LDM offset)


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    state = opt.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[key] = value
    save_file(tensors, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps(scalars))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "optimizer.safetensors"))
    scalars = json.loads((path / "optimizer.json").read_text())
    state = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in scalars["state"].items():
        state.setdefault(int(idx), {}).update(entry)
    opt.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def latent_pool(vae, n: int, cache: Path):
    """The training latents, captions and target masks (at latent size) of ``n`` toy images, encoded once by the
    frozen VAE and cached. A mask entry is the share of its latent pixel's patch of pixels that the target covers."""
    from safetensors.torch import load_file, save

    if cache.is_file() and cache.with_suffix(".json").is_file():
        data = load_file(str(cache))
        captions = json.loads(cache.with_suffix(".json").read_text())
        if len(captions) == n and "masks" in data:
            return data["latents"], captions, data["masks"]
    latents, captions = foundation.encode_pool(vae, n, POOL_SEED)
    factor = IMAGE_SIZE // latents.shape[-1]
    masks = torch.cat([F.avg_pool2d(torch.from_numpy(np.stack([s.object_mask for s in
                       toy_world.samples(min(512, n - start), seed=POOL_SEED, size=IMAGE_SIZE, start=start)]))[:, None],
                       factor) for start in range(0, n, 512)])
    write_atomically(cache, save({"latents": latents.contiguous(), "masks": masks.contiguous()}))
    write_atomically(cache.with_suffix(".json"), json.dumps(captions).encode())
    return latents, captions, masks


def target_weights(masks: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-element weights of the ε-loss: 1 everywhere, ``1 + weight`` on the target grown by one latent pixel (its
    outline and markings are what a caption's kind and a variant are drawn with; the background is most of the
    frame and of the plain loss)."""
    return 1.0 + weight * F.max_pool2d(masks, 3, stride=1, padding=1)


@torch.no_grad()
def prior_gate(unet, text_encoder, tokenizer, vae, scheduler, reader, per_kind: int, steps: int, guidance: float) -> dict:
    """Drawings from captions alone ("a star"), classified: the kind accuracy and the variants' shares (percent)."""
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    kinds = [k for k in range(len(toy_world.KINDS)) for _ in range(per_kind)]
    preds = []
    for start in range(0, len(kinds), 50):
        chunk = kinds[start : start + 50]
        images = sd([f"a {toy_world.KINDS[k]}" for k in chunk], height=IMAGE_SIZE, width=IMAGE_SIZE,
                    num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                    generator=torch.Generator().manual_seed(start)).images
        preds += reader.predict(images * 2 - 1)
    kind = 100.0 * sum(toy_world.kind_of(p) == k for p, k in zip(preds, kinds)) / len(kinds)
    shares = {v: 100.0 * sum(toy_world.variant_of(p) == i for p in preds) / len(preds)
              for i, v in enumerate(toy_world.VARIANTS)}
    return {"drawings": len(kinds), "kind_accuracy": kind, "variant_share": shares}


def with_text_embedding(unet):
    """``unet`` with a pooled-caption embedding added to its timestep embedding, everything else kept; the new
    embedding's projection is zeroed, so the model starts out drawing exactly what ``unet`` draws."""
    from diffusers import UNet2DConditionModel

    new = UNet2DConditionModel.from_config({**unet.config, "addition_embed_type": "text"})
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("add_embedding.") for k in missing):
        raise RuntimeError(f"unexpected weights: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(new.add_embedding.proj.weight)
    torch.nn.init.zeros_(new.add_embedding.proj.bias)
    return new


def sha256_of(folder: Path) -> dict:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.rglob("*.safetensors"))}


def main(argv=None) -> int:
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, compute_snr
    from transformers import CLIPTextModel, CLIPTokenizer

    from foundation_v3 import Reader

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=foundation.v2_ldm(), help="a folder with unet/ and text_encoder/ "
                        "(a pipeline, or another run's OUT/checkpoint); vae/ and tokenizer/ from it too when it has them, "
                        "else toy world v2's (default: toy world v2's LDM, foundation.v2_ldm())")
    parser.add_argument("--from-scratch", action="store_true", help="new UNet and text encoder (foundation.py's)")
    parser.add_argument("--classifier", type=Path, default=BUNDLED / "classifier")
    parser.add_argument("--steps", type=int, default=60000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="min-SNR-γ weighting; 0: the plain ε-loss")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--target-weight", type=float, default=0.0, help="extra weight of the ε-loss on the target "
                        "(grown by one latent pixel): 1 + this there, 1 elsewhere, normalised per batch; 0: the plain loss")
    parser.add_argument("--text-embedding", action="store_true", help="add the pooled caption to the timestep "
                        "embedding as well (UNet2DConditionModel's addition_embed_type='text', DeepFloyd IF's attention "
                        "pooling; SDXL adds its pooled caption the same way): every ResNet block sees the caption, not only "
                        "the cross-attention layers. From --init: its weights, the new embedding's output zeroed")
    parser.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant_with_warmup"],
                        help="after the warm-up; constant_with_warmup lets a run be extended with a larger --steps")
    parser.add_argument("--pool", type=int, default=8000, help="training images (latents encoded once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--eval-per-kind", type=int, default=10)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    args = parser.parse_args(argv)
    if args.smoke:  # an explicit --steps is kept, so that a smoke run can be resumed further
        args.steps = 4 if args.steps == parser.get_default("steps") else args.steps
        args.batch, args.pool, args.warmup = 4, 8, 1
        args.log_every, args.eval_every, args.checkpoint_every, args.eval_per_kind, args.eval_steps = 2, 4, 2, 1, 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    curve = out / "curve.jsonl"
    torch.manual_seed(args.seed)

    def part(name):  # another run's checkpoint/ has no VAE or tokenizer: toy world v2's (the pool's VAE)
        return args.init / name if (args.init / name).is_dir() else foundation.v2_ldm() / name

    vae = AutoencoderKL.from_pretrained(str(part("vae"))).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(part("tokenizer")))
    resume = (ckpt / "state.json").is_file()
    if resume:
        unet = UNet2DConditionModel.from_pretrained(str(ckpt / "unet"))
        text_encoder = CLIPTextModel.from_pretrained(str(ckpt / "text_encoder"))
    elif args.from_scratch:
        text_encoder, tokenizer = foundation.build_text_encoder_and_tokenizer()
        unet = foundation.build_unet()
    else:
        text_encoder = CLIPTextModel.from_pretrained(str(args.init / "text_encoder"))
        unet = UNet2DConditionModel.from_pretrained(str(args.init / "unet"))
    if args.text_embedding and not resume and unet.config.addition_embed_type is None:
        unet = with_text_embedding(unet)
    # training noise: SD 2.1-base's schedule (foundation.build_scheduler); drawings: DDIM with trailing spacing
    noise_scheduler = DDPMScheduler.from_config(foundation.build_scheduler().config)
    draw_scheduler = DDIMScheduler.from_config(foundation.build_scheduler().config, timestep_spacing="trailing")
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    lr_sched = get_scheduler(args.lr_schedule, opt, num_warmup_steps=args.warmup, num_training_steps=args.steps)
    ema = EMAModel(params, decay=args.ema_decay)

    step, seconds, cpu_seconds = 0, 0.0, 0.0
    if resume:
        from safetensors.torch import load_file

        state = json.loads((ckpt / "state.json").read_text())
        load_optimizer(opt, ckpt)
        shadow = load_file(str(ckpt / "ema.safetensors"))
        ema.load_state_dict({**json.loads((ckpt / "ema.json").read_text()),
                             "shadow_params": [shadow[str(i)] for i in range(len(shadow))]})
        step, seconds, cpu_seconds = state["step"], state["seconds"], state["cpu_seconds"]
        replay_schedule(lr_sched, step)  # the learning rate is a function of the step
        print(f"[prior] resumed at step {step}", flush=True)
    reader = Reader(args.classifier)
    latents, captions, masks = latent_pool(vae, args.pool, out / "latent_pool.safetensors")
    ids = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    empty_ids, ids = ids[-1], ids[:-1]

    def checkpoint():
        from safetensors.torch import save_file

        tmp = out / "checkpoint.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        unet.save_pretrained(tmp / "unet")
        text_encoder.save_pretrained(tmp / "text_encoder")
        save_optimizer(opt, tmp)
        ema_state = ema.state_dict()
        save_file({str(i): t.contiguous() for i, t in enumerate(ema_state.pop("shadow_params"))}, str(tmp / "ema.safetensors"))
        (tmp / "ema.json").write_text(json.dumps({k: v for k, v in ema_state.items() if not torch.is_tensor(v)}))
        (tmp / "state.json").write_text(json.dumps({"step": step, "seconds": seconds, "cpu_seconds": cpu_seconds}))
        fsync_tree(tmp)
        replace_directory(tmp, ckpt)  # the earlier checkpoint or this one at every instant

    def evaluate():
        ema.store(params)
        ema.copy_to(params)
        unet.eval(), text_encoder.eval()
        gate = prior_gate(unet, text_encoder, tokenizer, vae, draw_scheduler, reader, args.eval_per_kind,
                          args.eval_steps, args.guidance)
        ema.restore(params)
        unet.train(), text_encoder.train()
        log_line(curve, {"step": step, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                         "prior_gate_ema": gate, "guidance_scale": args.guidance, "eval_steps": args.eval_steps})
        print(f"[prior] step {step}: kind accuracy {gate['kind_accuracy']:.1f} %, variants {gate['variant_share']}",
              flush=True)

    unet.train(), text_encoder.train()
    window = []
    if step == 0:
        evaluate()
    while step < args.steps:
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # a step draws the same after a resume
        idx = torch.randint(0, len(latents), (args.batch,), generator=gen)
        z = latents[idx]
        flip = torch.rand(args.batch, generator=gen) < 0.5  # every class is mirror-symmetric up to its tilt
        z = torch.where(flip.view(-1, 1, 1, 1), z.flip(-1), z)
        m = masks[idx]
        m = torch.where(flip.view(-1, 1, 1, 1), m.flip(-1), m)
        tok = ids[idx].clone()
        tok[torch.rand(args.batch, generator=gen) < args.caption_dropout] = empty_ids
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch,), generator=gen)
        pred = unet(noise_scheduler.add_noise(z, noise, t), t, text_encoder(tok)[0]).sample
        w = target_weights(m, args.target_weight)
        per_image = (w * (pred - noise) ** 2).mean(dim=(1, 2, 3)) / w.mean()
        if args.snr_gamma > 0:  # min-SNR-γ for ε-prediction: weight min(SNR, γ) / SNR
            snr = compute_snr(noise_scheduler, t)
            per_image = per_image * torch.clamp(snr, max=args.snr_gamma) / snr
        loss = per_image.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema.step(params)
        step += 1
        seconds += time.perf_counter() - t_wall
        cpu_seconds += time.process_time() - t_cpu
        window.append(float(loss.detach()))
        if not math.isfinite(window[-1]):
            raise FloatingPointError(f"the loss is {window[-1]} at step {step}: lower --lr and resume")
        if step % args.log_every == 0:
            log_line(curve, {"step": step, "loss": sum(window) / len(window), "lr": lr_sched.get_last_lr()[0],
                             "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1)})
            window = []
        if step % args.checkpoint_every == 0 or step == args.steps:
            checkpoint()
        if step % args.eval_every == 0 or step == args.steps:
            evaluate()

    ema.copy_to(params)
    unet.eval(), text_encoder.eval()
    sd = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 scheduler=foundation.build_scheduler(), safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)
    with staged_directory(out / "sd") as stage:  # appears whole, provenance included
        sd.save_pretrained(stage, safe_serialization=True)
        (stage / "provenance.json").write_text(json.dumps({
            "command": "benchmarks/toy/train_prior.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seed": args.seed, "steps": step, "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
            "init": None if args.from_scratch else {"path": str(args.init), "weights_sha256": sha256_of(args.init / "unet")},
            "weights": "EMA", "settings": {k: str(v) for k, v in vars(args).items()},
        }, indent=2) + "\n")
    print(f"[prior] done: {out / 'sd'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
