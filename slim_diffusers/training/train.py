"""Training of SLIM's compressor, decompressor and control module (both stages), with Accelerate.

Run one of the stage scripts, which call :func:`main` with their stage:

    accelerate launch training/train_stage1.py --pretrained_model_name_or_path PATH --train_data_dir DATA ...
    accelerate launch training/train_stage2.py --pretrained_model_name_or_path STAGE1_OUTPUT ...

Only the compressor, the decompressor and the control module learn (plus optional UNet LoRA adapters);
the VAE, UNet, text encoder and classifier stay frozen. The loss terms come from
:mod:`slim_diffusers.training.losses`. Checkpoints (``checkpoint-N``) are Accelerate states; the output directory is
a pipeline that ``SLIMPipeline.from_pretrained`` loads (safetensors).
"""

import argparse
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from PIL import Image

from slim_diffusers import SLIMPipeline
from slim_diffusers.utils.distributed import use_cpu_workers
from slim_diffusers.training.losses import LossWeights, slim_losses
from slim_diffusers.semantics.roi import classifier_inputs, roi_mask_to_array

logger = get_logger(__name__)
HUB_CARDS = Path(__file__).resolve().parents[1] / "hub_cards"


def parse_args(stage: int, argv=None):
    p = argparse.ArgumentParser(description=f"SLIM training, stage {stage}")
    p.add_argument("--pretrained_model_name_or_path", required=True,
                   help="a saved SLIM pipeline (stage 2: the stage 1 output) or a Stable Diffusion 2.1 checkpoint")
    p.add_argument("--train_data_dir", default=None, help="dataset written by training/prepare_dataset.py (save_to_disk)")
    p.add_argument("--dataset_name", default=None, help="or a Hub dataset with the same columns")
    p.add_argument("--dataset_split", default="train")
    p.add_argument("--num_validation_images", type=int, default=4, help="held out from the dataset for validation")
    p.add_argument("--resolution", type=int, default=512, help="images are resized (short side) and centre-cropped")
    p.add_argument("--output_dir", default=f"slim-stage{stage}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_batch_size", type=int, default=4)
    p.add_argument("--max_train_steps", type=int, default=100_000, help="paper: 100k per stage")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for memory in the control module")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--aux_learning_rate", type=float, default=1e-3, help="for the entropy bottleneck's quantiles")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_weight_decay", type=float, default=1e-2)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    p.add_argument("--checkpointing_steps", type=int, default=5000)
    p.add_argument("--checkpoints_total_limit", type=int, default=None)
    p.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint directory, or 'latest'")
    p.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none")
    p.add_argument("--logging_dir", default="logs")
    p.add_argument("--validation_steps", type=int, default=1000)
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    p.add_argument("--lambda_rate", type=float, default=1.0, help="λr")
    p.add_argument("--lambda_guide", type=float, default=1.0, help="λg")
    p.add_argument("--lambda_diffusion", type=float, default=1.0, help="λd")
    p.add_argument("--lambda_roi", type=float, default=1.0, help="λroi (stage 2)")
    p.add_argument("--lambda_task", type=float, default=0.1, help="λt (stage 2)")
    p.add_argument("--no_roi", action="store_true", help="replace the RoI mask by ones (the 'w/o RoI' ablation)")
    p.add_argument("--unet_lora_rank", type=int, default=0, help="add PEFT LoRA adapters of this rank to the UNet")
    p.add_argument("--classifier_name_or_path", default="microsoft/resnet-50", help="frozen task classifier (stage 2)")
    p.add_argument("--lpips_net", default="vgg", choices=["vgg", "alex", "squeeze"])
    p.add_argument("--lpips_random_init", action="store_true", help="offline smoke runs: LPIPS without downloaded weights")
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_model_id", default=None)
    p.add_argument("--hub_token", default=None)
    args = p.parse_args(argv)
    if (args.train_data_dir is None) == (args.dataset_name is None):
        p.error("give exactly one of --train_data_dir and --dataset_name")
    args.stage = stage
    return args


# ------------------------------------------------------------------------------------------------ data
def load_training_dataset(args):
    import datasets

    if args.train_data_dir:
        ds = datasets.load_from_disk(args.train_data_dir)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[args.dataset_split]
    else:
        ds = datasets.load_dataset(args.dataset_name, split=args.dataset_split)
    missing = {"image", "label", "roi_mask", "caption"} - set(ds.column_names)
    if missing:
        raise ValueError(f"the dataset lacks columns {sorted(missing)}; build it with training/prepare_dataset.py")
    n_val = min(args.num_validation_images, max(len(ds) - 1, 0))
    return ds.select(range(n_val, len(ds))), ds.select(range(n_val))


def _resize_crop(image: Image.Image, size: int, resample) -> Image.Image:
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def make_transform(resolution: int, no_roi: bool):
    def transform(batch):
        pixels, masks = [], []
        for image, mask in zip(batch["image"], batch["roi_mask"]):
            image = _resize_crop(image.convert("RGB"), resolution, Image.BICUBIC)
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
            if no_roi:
                masks.append(torch.ones(1, resolution, resolution))
            else:
                # stored 8-bit "L" PNGs (prepare_dataset.py), "F" images or arrays, all to weights in [0, 1]
                mask = Image.fromarray(roi_mask_to_array(mask))  # float32 → mode "F"
                mask = _resize_crop(mask, resolution, Image.BILINEAR)
                masks.append(torch.from_numpy(np.array(mask, dtype=np.float32)).clamp(0, 1)[None])
        return {"pixels": pixels, "roi_mask": masks, "caption": batch["caption"], "label": batch["label"]}

    return transform


def collate(examples):
    return {
        "pixels": torch.stack([e["pixels"] for e in examples]),
        "roi_mask": torch.stack([e["roi_mask"] for e in examples]),
        "caption": [e["caption"] for e in examples],
        "label": torch.tensor([int(e["label"]) for e in examples]),
    }


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch, drawn from (seed, epoch) alone, so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())

    def __len__(self):
        return self.n


# ---------------------------------------------------------------------------------------------- models
def load_pipeline(path: str) -> SLIMPipeline:
    index = Path(path) / "model_index.json"
    if index.is_file() and json.loads(index.read_text()).get("_class_name") == "SLIMPipeline":
        return SLIMPipeline.from_pretrained(path)
    return SLIMPipeline.from_stable_diffusion(path)


def classifier_preprocess_fn(path: str):
    """Differentiable resize + normalisation to what the classifier was trained on (its image processor)."""
    from types import SimpleNamespace

    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        logger.warning(f"{path} has no image processor config: feeding the classifier 224² ImageNet-normalised images")
        processor = SimpleNamespace(size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406],
                                    image_std=[0.229, 0.224, 0.225])
    return lambda images01: classifier_inputs(images01, processor)


def unwrap(accelerator, model):
    model = accelerator.unwrap_model(model)
    return getattr(model, "_orig_mod", model)


# ----------------------------------------------------------------------------------------------- cards
def write_model_card(args, output_dir: Path, metrics: dict, global_step: int):
    """``README.md`` of the output from ``hub_cards/model_card.md``. The YAML header is written by
    ``huggingface_hub.ModelCardData``; ``base_model`` and ``datasets`` name Hub ids only (a local path is not
    valid Hub metadata, so it is named in the text instead)."""
    from huggingface_hub import ModelCard, ModelCardData

    from slim_diffusers.coding.bitstream import FORMAT_VERSION

    base = args.pretrained_model_name_or_path
    dataset = args.dataset_name or args.train_data_dir
    data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        base_model=None if Path(base).exists() else base,
        datasets=None if args.dataset_name is None or Path(args.dataset_name).exists() else [args.dataset_name],
        tags=["slim-diffusers", "image-compression", "coding-for-machines", "stable-diffusion", "controlnet"],
        pipeline_tag="image-to-image",
    )
    template = (HUB_CARDS / "model_card.md").read_text()
    text = template.format(
        metadata=data.to_yaml(),
        repo_id=args.hub_model_id or output_dir.name,
        base_model=base,
        dataset=dataset,
        stage=args.stage,
        steps=global_step,
        lambdas=", ".join(f"λ{k}={v}" for k, v in LossWeights(
            args.lambda_rate, args.lambda_guide, args.lambda_diffusion, args.lambda_roi, args.lambda_task).as_dict().items()),
        roi="off (w/o RoI ablation)" if args.no_roi else "Grad-CAM RoI masks",
        lora=args.unet_lora_rank or "none",
        format_version=FORMAT_VERSION,
        metrics="\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())) or "| (no validation run) | |",
    )
    card = ModelCard(text)
    card.save(output_dir / "README.md")
    return card


# ------------------------------------------------------------------------------------------------ main
def main(stage: int, argv=None):
    args = parse_args(stage, argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        cpu=use_cpu_workers(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    pipe = load_pipeline(args.pretrained_model_name_or_path)
    pipe.set_progress_bar_config(disable=True)
    for frozen in (pipe.vae, pipe.unet, pipe.text_encoder):
        frozen.requires_grad_(False).eval()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    pipe.vae.to(accelerator.device, dtype=weight_dtype)
    pipe.text_encoder.to(accelerator.device, dtype=weight_dtype)
    pipe.unet.to(accelerator.device, dtype=weight_dtype)

    trainable = [pipe.compressor, pipe.decompressor, pipe.controlnet]
    for m in trainable:
        m.to(accelerator.device).train().requires_grad_(True)
    if args.gradient_checkpointing:
        pipe.controlnet.enable_gradient_checkpointing()
    lora_params = []
    if args.unet_lora_rank > 0:
        from peft import LoraConfig

        pipe.unet.to(dtype=torch.float32)
        pipe.unet.add_adapter(LoraConfig(r=args.unet_lora_rank, lora_alpha=args.unet_lora_rank,
                                         init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        lora_params = [p for p in pipe.unet.parameters() if p.requires_grad]

    aux_params = [p for n, p in pipe.decompressor.named_parameters() if n.endswith("quantiles")]
    main_params = [p for n, p in pipe.decompressor.named_parameters() if not n.endswith("quantiles")]
    main_params += list(pipe.compressor.parameters()) + list(pipe.controlnet.parameters()) + lora_params
    # CompressAI fits the hyper-prior's quantiles with their own loss and rate; here they are a second
    # parameter group of the one optimizer and their loss joins the main one, so a single backward pass
    # goes through DDP (a second backward into DDP-wrapped parameters is not allowed)
    optimizer = torch.optim.AdamW(
        [{"params": main_params}, {"params": aux_params, "lr": args.aux_learning_rate, "weight_decay": 0.0}],
        lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )

    train_ds, val_ds = load_training_dataset(args)
    transform = make_transform(args.resolution, args.no_roi)
    train_ds = train_ds.with_transform(transform)
    val_ds = val_ds.with_transform(make_transform(args.resolution, args.no_roi))
    sampler = EpochSampler(len(train_ds), args.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=args.train_batch_size, sampler=sampler,
                                         collate_fn=collate, num_workers=args.dataloader_num_workers, drop_last=True)

    classifier = preprocess = lpips_model = None
    if stage == 2:
        import lpips
        from transformers import AutoModelForImageClassification

        classifier = AutoModelForImageClassification.from_pretrained(args.classifier_name_or_path)
        classifier.requires_grad_(False).eval().to(accelerator.device)
        preprocess = classifier_preprocess_fn(args.classifier_name_or_path)
        lpips_kw = dict(pretrained=False, pnet_rand=True) if args.lpips_random_init else {}
        lpips_model = lpips.LPIPS(net=args.lpips_net, verbose=False, **lpips_kw).to(accelerator.device).eval()
        lpips_model.requires_grad_(False)

    models = [pipe.compressor, pipe.decompressor, pipe.controlnet] + ([pipe.unet] if lora_params else [])
    prepared = accelerator.prepare(*models, optimizer, loader)
    models, (optimizer, loader) = prepared[: len(models)], prepared[len(models):]
    compressor, decompressor, controlnet = models[:3]

    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has fewer than {args.train_batch_size} training images per process")
    weights = LossWeights(args.lambda_rate, args.lambda_guide, args.lambda_diffusion, args.lambda_roi, args.lambda_task)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers(f"slim-stage{stage}", config={k: v for k, v in vars(args).items()
                                                               if isinstance(v, (int, float, str, bool))})

    global_step = 0
    if args.resume_from_checkpoint:
        path = args.resume_from_checkpoint
        if path == "latest":
            found = sorted(output_dir.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[1]))
            path = str(found[-1]) if found else None
        if path is None:
            logger.info("no checkpoint to resume from: starting a new run")
        else:
            accelerator.load_state(path)
            global_step = int(Path(path).name.split("-")[1])
            logger.info(f"resumed from {path} at step {global_step}")
    first_epoch, skip = divmod(global_step * args.gradient_accumulation_steps, len(loader))

    def components():
        """The pipeline with the training modules in it (unwrapped from DDP)."""
        pipe.compressor, pipe.decompressor, pipe.controlnet = (unwrap(accelerator, m) for m in (compressor, decompressor, controlnet))
        return pipe

    def compute_losses(batch, step):
        # every random draw of a step (timesteps, noise, CompressAI's uniform quantisation noise) comes from
        # (seed, step, process) alone, so a resumed run draws exactly what an uninterrupted one would
        step_seed = args.seed * 1_000_003 + step * 7919 + accelerator.process_index
        torch.manual_seed(step_seed)
        gen = torch.Generator().manual_seed(step_seed)
        with torch.no_grad():
            embeds = pipe.encode_captions(batch["caption"], accelerator.device, weight_dtype)
        return slim_losses(
            components_for_loss, batch["pixels"].to(accelerator.device, weight_dtype),
            batch["roi_mask"].to(accelerator.device), embeds, weights, stage=stage,
            labels=batch["label"].to(accelerator.device), classifier=classifier,
            classifier_preprocess=preprocess, lpips_model=lpips_model, generator=gen,
        )

    # the loss calls the wrapped modules (DDP syncs their gradients); the pipeline object carries them
    components_for_loss = _LossView(pipe, compressor, decompressor, controlnet)
    metrics = {}
    done = global_step >= args.max_train_steps
    epoch = first_epoch
    while not done:
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        # Accelerate's loaders pass their own epoch counter to the sampler; give them the real epoch so
        # that a resumed run draws the same permutation as an uninterrupted one
        batches.set_epoch(epoch)
        skip = 0
        for batch in batches:
            with accelerator.accumulate(*models):
                terms = compute_losses(batch, global_step)
                aux_loss = unwrap(accelerator, decompressor).aux_loss()
                accelerator.backward(terms["loss"] + aux_loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(main_params, args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            logs = {k: float(v.detach()) for k, v in terms.items()}
            logs["aux_loss"] = float(aux_loss.detach())
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args, output_dir, global_step)
            if args.validation_steps and global_step % args.validation_steps == 0:
                metrics = validate(components(), val_ds, accelerator, args, weights, weight_dtype, stage,
                                   classifier, preprocess, lpips_model, global_step)
            if global_step >= args.max_train_steps:
                done = True
                break
        epoch += 1

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = components()
        if args.validation_steps and (global_step % args.validation_steps or not metrics):
            metrics = validate(final, val_ds, accelerator, args, weights, weight_dtype, stage,
                               classifier, preprocess, lpips_model, global_step) or metrics
        save_pipeline(final, output_dir, bool(lora_params))
        write_model_card(args, output_dir, metrics, global_step)
        (output_dir / "training_state.json").write_text(json.dumps(
            {"global_step": global_step, "num_processes": accelerator.num_processes, "metrics": metrics}, indent=2))
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = create_repo(args.hub_model_id or output_dir.name, exist_ok=True, token=args.hub_token).repo_id
            upload_folder(repo_id=repo_id, folder_path=str(output_dir), token=args.hub_token,
                          ignore_patterns=["checkpoint-*", f"{args.logging_dir}/*"])
    accelerator.end_training()
    return global_step


class _LossView:
    """The pipeline as :func:`slim_losses` sees it, with the Accelerate-wrapped trainable modules."""

    def __init__(self, pipe, compressor, decompressor, controlnet):
        self._pipe, self.compressor, self.decompressor, self.controlnet = pipe, compressor, decompressor, controlnet

    def __getattr__(self, name):
        return getattr(self._pipe, name)


def save_checkpoint(accelerator, args, output_dir: Path, global_step: int):
    if accelerator.is_main_process and args.checkpoints_total_limit is not None:
        existing = sorted(output_dir.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[1]))
        for old in existing[: max(len(existing) - args.checkpoints_total_limit + 1, 0)]:
            shutil.rmtree(old)
    accelerator.save_state(str(output_dir / f"checkpoint-{global_step}"))


def save_pipeline(pipe: SLIMPipeline, output_dir: Path, has_lora: bool):
    """Write the trained pipeline (safetensors) with CDF tables built from the final weights."""
    pipe.decompressor.update(force=True)
    if has_lora:
        # merged into the UNet weights: the saved pipeline loads with plain from_pretrained
        pipe.unet.fuse_lora() if hasattr(pipe.unet, "fuse_lora") else None
        pipe.unet.unload_lora() if hasattr(pipe.unet, "unload_lora") else None
    for m in (pipe.compressor, pipe.decompressor, pipe.controlnet, pipe.unet):
        m.eval()
    pipe.save_pretrained(output_dir, safe_serialization=True)


@torch.no_grad()
def validate(pipe, val_ds, accelerator, args, weights, weight_dtype, stage, classifier, preprocess, lpips_model, step):
    """Loss terms and bits per pixel from real bytes on the held-out images."""
    if len(val_ds) == 0 or not accelerator.is_main_process:
        return {}
    import copy

    trained_decompressor = pipe.decompressor
    # CDF tables are built on a copy: resizing buffers of the module being trained would desynchronise
    # DDP's buffer broadcast across processes
    pipe.decompressor = copy.deepcopy(trained_decompressor)
    modules = (pipe.compressor, pipe.decompressor, pipe.controlnet)
    for m in modules:
        m.eval()
    pipe.decompressor.update(force=True)
    batch = collate([val_ds[i] for i in range(len(val_ds))])
    pixels = batch["pixels"].to(accelerator.device, weight_dtype)
    embeds = pipe.encode_captions(batch["caption"], accelerator.device, weight_dtype)
    terms = slim_losses(pipe, pixels, batch["roi_mask"].to(accelerator.device), embeds, weights, stage=stage,
                        labels=batch["label"].to(accelerator.device), classifier=classifier,
                        classifier_preprocess=preprocess, lpips_model=lpips_model,
                        generator=torch.Generator().manual_seed(args.seed))
    images = ((batch["pixels"] + 1) / 2).clamp(0, 1)
    bitstreams = pipe.compress(list(images), captions=batch["caption"])
    metrics = {f"val/{k}": float(v) for k, v in terms.items()}
    metrics["val/bpp"] = float(np.mean([bs.bits_per_pixel for bs in bitstreams]))
    metrics["val/bytes"] = float(np.mean([bs.num_bytes for bs in bitstreams]))
    accelerator.log(metrics, step=step)
    logger.info(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    for m in modules:
        m.train()
    pipe.decompressor = trained_decompressor
    return metrics
