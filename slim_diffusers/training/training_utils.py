"""What SLIM's training scripts share, kept in the package as diffusers keeps ``diffusers.training_utils``.

- :class:`SLIMTrainingModule` owns what trains (compressor, decompressor, control module) and is handed the
  frozen VAE, UNet, text encoder and scheduler; its ``forward`` is the objective of
  :mod:`slim_diffusers.training.losses`. One module is one DDP wrapper and one state per checkpoint, and the
  frozen models are not in it, so a checkpoint holds only what trains.
- the training data: columns, transforms, a resumable epoch order;
- checkpoints (Accelerate states with a format marker), validation, the saved pipeline and its model card.

``training/train_stage1.py`` and ``train_stage2.py`` run :func:`slim_diffusers.training.train.main`.
"""

import copy
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..semantics.roi import classifier_inputs, roi_mask_to_array
from ..utils.file_utils import fsync_tree, remove_tree, replace_directory, sweep_leftovers, write_atomically
from .dataset_builder import HUB_CARDS
from .losses import LossWeights, slim_losses

logger = logging.getLogger(__name__)

# Accelerate states written by these scripts carry this marker; the version before it prepared the three
# trainable models separately (model.safetensors, model_1..., one per component)
CHECKPOINT_FORMAT = 2
CHECKPOINT_MARKER = "slim_checkpoint.json"


class CheckpointVersionError(ValueError):
    """A checkpoint was written by a version of the training scripts that this one cannot resume."""


class IncompleteCheckpointError(ValueError):
    """A checkpoint whose writing was interrupted (a kill during the save): resume from an earlier one."""


# ------------------------------------------------------------------------------------------------ module
@dataclass
class FrozenComponents:
    """The parts of Stable Diffusion that SLIM uses without training them."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


class SLIMTrainingModule(nn.Module):
    """The trainable parts of SLIM in one module, with the frozen models handed in.

    Args:
        compressor, decompressor, controlnet: the trainable components (registered: they are what DDP wraps,
            what the optimizer steps and what a checkpoint holds).
        frozen: the frozen VAE, UNet, text encoder, tokenizer and scheduler; held outside the module's
            parameters and state (move them to the device and dtype yourself).
        train_unet_lora: the UNet carries trainable LoRA adapters (``--unet_lora_rank``): it is registered too,
            so DDP synchronises their gradients and checkpoints keep them.
    """

    def __init__(self, compressor, decompressor, controlnet, frozen: FrozenComponents, train_unet_lora: bool = False):
        super().__init__()
        self.compressor = compressor
        self.decompressor = decompressor
        self.controlnet = controlnet
        self.frozen = frozen  # a dataclass, not a module: not registered
        if train_unet_lora:
            self.add_module("unet_with_lora", frozen.unet)

    @classmethod
    def from_pipeline(cls, pipe, train_unet_lora: bool = False) -> "SLIMTrainingModule":
        frozen = FrozenComponents(pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)
        return cls(pipe.compressor, pipe.decompressor, pipe.controlnet, frozen, train_unet_lora=train_unet_lora)

    # the loss reads the components by these names, from this module or from a pipeline
    @property
    def vae(self):
        return self.frozen.vae

    @property
    def unet(self):
        return self.frozen.unet

    @property
    def text_encoder(self):
        return self.frozen.text_encoder

    @property
    def scheduler(self):
        return self.frozen.scheduler

    def parameter_groups(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        """``(main, aux)``: everything that trains, and the hyper-prior's quantiles, which CompressAI fits with their
        own loss and learning rate."""
        aux = [p for n, p in self.decompressor.named_parameters() if n.endswith("quantiles")]
        main = [p for n, p in self.decompressor.named_parameters() if not n.endswith("quantiles")]
        main += list(self.compressor.parameters()) + list(self.controlnet.parameters())
        if "unet_with_lora" in self._modules:
            main += [p for p in self.frozen.unet.parameters() if p.requires_grad]
        return main, aux

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them: those of the control module, and of
        the frozen UNet and VAE decoder, which the gradients pass through (the control module's residuals enter the
        UNet; stage 2's x̂ comes out of the VAE decoder). At SD 2.1-base's size the frozen models hold most of the
        activations: stage 2 at 512², batch 1, keeps about 12 GiB of them with the control module alone
        checkpointed and 1.4 GiB with all three (float32)."""
        self.controlnet.enable_gradient_checkpointing()
        self.frozen.unet.enable_gradient_checkpointing()
        self.frozen.vae.enable_gradient_checkpointing()

    @torch.no_grad()
    def encode_captions(self, captions: List[str], device, dtype) -> torch.Tensor:
        from ..pipelines.pipeline_slim import encode_captions

        return encode_captions(self.frozen.tokenizer, self.frozen.text_encoder, captions, device, dtype)

    def forward(self, pixels, roi_mask, prompt_embeds, weights: LossWeights, stage: int = 1, **stage2) -> Dict[str, torch.Tensor]:
        """The loss terms of one batch (:func:`slim_diffusers.training.losses.slim_losses`); ``stage2`` takes its
        ``labels``, ``classifier``, ``classifier_preprocess``, ``lpips_model`` and ``generator``."""
        return slim_losses(self, pixels, roi_mask, prompt_embeds, weights, stage=stage, **stage2)

    def pipeline(self, copy_decompressor: bool = False):
        """A :class:`~slim_diffusers.SLIMPipeline` of these modules (the same objects, not copies), for validation
        and saving. ``copy_decompressor`` gives it a copy of the decompressor whose CDF tables may be rebuilt
        without touching the one being trained (resized buffers would break DDP's buffer broadcast)."""
        from ..pipelines.pipeline_slim import SLIMPipeline

        frozen = self.frozen
        decompressor = copy.deepcopy(self.decompressor) if copy_decompressor else self.decompressor
        pipe = SLIMPipeline(vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer,
                            unet=frozen.unet, controlnet=self.controlnet, scheduler=frozen.scheduler,
                            compressor=self.compressor, decompressor=decompressor)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def make_variable_rate(pipe, lambdas) -> None:
    """Give ``pipe`` (a :class:`~slim_diffusers.SLIMPipeline` about to be trained) one rate level per λr of ``lambdas``.

    A fixed-rate compressor and decompressor (a new SLIM, or a trained fixed-rate one to start from) are replaced by
    variable-rate copies with the same weights and new gain vectors, spaced for these λr
    (:func:`~slim_diffusers.models.rate_gains.initial_log_step`); a variable-rate pair with as many levels is kept
    (stage 2 starting from a variable-rate stage 1). The conversion is deterministic, so a resumed run rebuilds the
    model its checkpoint was saved from."""
    from ..models.compressor import SLIMCompressor
    from ..models.decompressor import SLIMDecompressor
    from ..models.rate_gains import RateGains, initial_log_step

    levels = len(lambdas)
    have = (pipe.compressor.num_rate_levels, pipe.decompressor.num_rate_levels)
    if have == (levels, levels):
        return
    if any(have):
        raise ValueError(
            f"the model has {max(have)} rate levels, but --lambda_rate gives {levels} values; give one λr per level"
        )
    if pipe.decompressor.exact_entropy_model:
        raise ValueError("an exact (integer) entropy model does not train: start from the float model it was converted from")
    step = initial_log_step(lambdas)
    made = []
    for old, cls, gains in ((pipe.compressor, SLIMCompressor, "rate_gains"),
                            (pipe.decompressor, SLIMDecompressor, "rate_inverse_gains")):
        options = {k: v for k, v in old.config.items() if not k.startswith("_")}
        new = cls(**{**options, "num_rate_levels": levels})
        missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
        if unexpected or any(not k.startswith(gains + ".") for k in missing):
            raise RuntimeError(f"could not carry the {cls.__name__} weights over: {unexpected or missing}")
        setattr(new, gains, RateGains(levels, options["latent_codec_channels"], log_step=step,
                                      inverse=gains == "rate_inverse_gains"))
        made.append(new.to(old.device, old.dtype))
    pipe.register_modules(compressor=made[0], decompressor=made[1])


def load_pipeline(path: str):
    """A saved SLIM pipeline (stage 2 starts from stage 1's output), or a new SLIM from a Stable Diffusion checkpoint."""
    from ..pipelines.pipeline_slim import SLIMPipeline

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


# ------------------------------------------------------------------------------------------------ data
def load_training_dataset(args):
    """``(train, validation)``: the first ``--num_validation_images`` rows are held out."""
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


# ------------------------------------------------------------------------------------------ checkpoints
CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")
# a checkpoint being written: every process saves its part here; the main process renames it when complete
PARTIAL_SUFFIX = ".partial"


def checkpoint_dirs(output_dir: Path) -> List[Path]:
    """The ``checkpoint-<step>`` folders of ``output_dir``, oldest first (complete or not)."""
    found = [d for d in Path(output_dir).glob("checkpoint-*") if CHECKPOINT_NAME.fullmatch(d.name) and d.is_dir()]
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


def partial_checkpoint_dirs(output_dir: Path) -> List[Path]:
    """Checkpoints whose writing was interrupted (``.checkpoint-<step>.partial``)."""
    return sorted(d for d in Path(output_dir).glob(f".checkpoint-*{PARTIAL_SUFFIX}") if d.is_dir())


def checkpoint_state(path: Path) -> str:
    """``"complete"``; ``"incomplete"`` (no marker, or a file the marker lists is missing or of another size: the
    write was interrupted); ``"0.1.0"`` (the layout of slim-diffusers 0.1.0, one Accelerate model per component);
    ``"format N"`` (a marker of another checkpoint format)."""
    marker = path / CHECKPOINT_MARKER
    if not marker.is_file():
        return "0.1.0" if (path / "model_1.safetensors").is_file() else "incomplete"
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "incomplete"
    if info.get("checkpoint_format") != CHECKPOINT_FORMAT:
        return f"format {info.get('checkpoint_format')}"
    for name, size in info.get("files", {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            return "incomplete"
    return "complete"


def save_checkpoint(accelerator, output_dir: Path, global_step: int, total_limit: Optional[int] = None) -> Path:
    """An Accelerate state at ``checkpoint-<step>``, written so that a kill at any instant loses nothing resumable.

    Every process writes its part into ``.checkpoint-<step>.partial``; then the main process writes the marker
    (format, version, step, and each file's size) last, flushes it all to disk, renames the folder into place,
    and only then deletes the oldest complete checkpoints beyond ``total_limit``. The other processes wait at
    barriers, so none runs ahead of a checkpoint that is not yet in place.
    """
    from .. import __version__

    output_dir = Path(output_dir)
    path = output_dir / f"checkpoint-{global_step}"
    partial = output_dir / f".checkpoint-{global_step}{PARTIAL_SUFFIX}"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # what an earlier, killed attempt at this step left
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.relative_to(partial).as_posix(): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
        write_atomically(partial / CHECKPOINT_MARKER, json.dumps(
            {"checkpoint_format": CHECKPOINT_FORMAT, "slim_diffusers_version": __version__, "global_step": global_step,
             "files": files}, indent=2).encode())
        fsync_tree(partial)
        replace_directory(partial, path)
        if total_limit is not None:
            complete = [d for d in checkpoint_dirs(output_dir) if checkpoint_state(d) == "complete"]
            for old in complete[: max(len(complete) - total_limit, 0)]:
                remove_tree(old)
        sweep_leftovers(output_dir)
    accelerator.wait_for_everyone()
    return path


def resolve_checkpoint(output_dir: Path, resume_from: Optional[str], remove_incomplete: bool = False) -> Optional[Path]:
    """The checkpoint ``--resume_from_checkpoint`` names, checked to be one these scripts can resume.

    ``latest``: the newest *complete* checkpoint in ``output_dir`` (``None`` when there is none); incomplete ones
    (a write that was killed) are skipped and named in one log line, and deleted when ``remove_incomplete``.
    """
    if not resume_from:
        return None
    if resume_from == "latest":
        skipped, found = [], None
        for candidate in reversed(checkpoint_dirs(output_dir)):
            state = checkpoint_state(candidate)
            if state == "incomplete":
                skipped.append(candidate)
                continue
            found = candidate
            break
        skipped = partial_checkpoint_dirs(output_dir) + skipped[::-1]
        if skipped:
            names = ", ".join(d.name for d in skipped)
            if remove_incomplete:
                for d in skipped:
                    remove_tree(d)
                logger.warning(f"removed incomplete checkpoints (their writing was interrupted): {names}")
            else:
                logger.warning(f"skipping incomplete checkpoints (their writing was interrupted; kept for inspection, "
                               f"--remove_incomplete_checkpoints deletes them): {names}")
        if found is None:
            return None
        path = found
    else:
        path = Path(resume_from)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = checkpoint_state(path)
    if state == "incomplete":
        raise IncompleteCheckpointError(
            f"{path} is incomplete: its writing was interrupted (no {CHECKPOINT_MARKER}, or a file it lists is missing "
            "or cut short). Resume from an earlier checkpoint, or give --resume_from_checkpoint latest to take the "
            "newest complete one"
        )
    if state == "0.1.0":
        raise CheckpointVersionError(
            f"{path} was written by slim-diffusers 0.1.0, whose training scripts saved the compressor, decompressor "
            "and control module as three separate Accelerate models; this version trains them as one module and "
            "cannot resume it. Resume it with slim-diffusers 0.1.0, or start a new run from the last pipeline it saved "
            "(--pretrained_model_name_or_path <its output_dir>)"
        )
    if state != "complete":
        raise CheckpointVersionError(
            f"{path} has checkpoint {state}; this slim-diffusers resumes format {CHECKPOINT_FORMAT}"
        )
    return path


# ------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def log_validation(module: SLIMTrainingModule, val_ds, accelerator, weights: LossWeights, weight_dtype, stage: int,
                   seed: int, step: int, **stage2) -> Dict[str, float]:
    """Loss terms and bits per pixel from real bytes on the held-out images, through a pipeline built from the
    unwrapped modules (with its own copy of the decompressor, whose CDF tables are rebuilt for coding)."""
    if len(val_ds) == 0 or not accelerator.is_main_process:
        return {}
    pipe = module.pipeline(copy_decompressor=True)
    trained = (module.compressor, module.controlnet)
    for m in (*trained, pipe.decompressor):
        m.eval()
    pipe.decompressor.update(force=True)
    levels = pipe.num_rate_levels
    try:
        batch = collate([val_ds[i] for i in range(len(val_ds))])
        pixels = batch["pixels"].to(accelerator.device, weight_dtype)
        embeds = module.encode_captions(batch["caption"], accelerator.device, weight_dtype)
        # a variable-rate model's images take the levels in turn
        rate = torch.arange(len(val_ds)) % levels if levels else None
        with accelerator.autocast():  # the precision the training steps run in (accelerate autocasts the prepared model)
            terms = slim_losses(pipe, pixels, batch["roi_mask"].to(accelerator.device), embeds, weights, stage=stage,
                                labels=batch["label"].to(accelerator.device),
                                generator=torch.Generator().manual_seed(seed), rate=rate, **stage2)
        images = list(((batch["pixels"] + 1) / 2).clamp(0, 1))
        # bits per pixel from real bytes: every image at every level of a variable-rate model
        coded = {level: pipe.compress(images, captions=batch["caption"], rate=level) for level in range(levels)} or {
            None: pipe.compress(images, captions=batch["caption"])}
    finally:
        for m in trained:
            m.train()
    metrics = {f"val/{k}": float(v) for k, v in terms.items()}
    for level, bitstreams in coded.items():
        suffix = "" if level is None else f"_rate{level}"
        metrics[f"val/bpp{suffix}"] = float(np.mean([bs.bits_per_pixel for bs in bitstreams]))
        metrics[f"val/bytes{suffix}"] = float(np.mean([bs.num_bytes for bs in bitstreams]))
    accelerator.log(metrics, step=step)
    logger.info(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


# ------------------------------------------------------------------------------------------------ output
@torch.no_grad()
def exact_decompressor(module: SLIMTrainingModule, dataset, num_images: int):
    """Post-training conversion of the trained decompressor into an exact (integer) entropy model, calibrated on
    the latents of the first ``num_images`` images of ``dataset`` (transformed, with ``pixels`` in [-1, 1]).
    The decompressor being trained is not changed."""
    from ..coding.latents import convert_to_exact_entropy_model

    vae = module.vae
    device = next(module.compressor.parameters()).device
    latents = []
    for i in range(min(num_images, len(dataset))):
        pixels = dataset[i]["pixels"].unsqueeze(0).to(device, vae.dtype)
        latents.append((vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor).float())
    if not latents:
        raise ValueError("no images to calibrate the exact entropy model on")
    decompressor = copy.deepcopy(module.decompressor).eval()
    decompressor.update(force=True)
    return convert_to_exact_entropy_model(module.compressor, decompressor, latents)


def save_pipeline(module: SLIMTrainingModule, output_dir: Path, has_lora: bool, decompressor=None) -> None:
    """Write the trained pipeline (safetensors) with CDF tables built from the final weights; ``decompressor``
    replaces the trained one (the exact entropy model of :func:`exact_decompressor`)."""
    pipe = module.pipeline()
    pipe.decompressor.update(force=True)
    if decompressor is not None:
        pipe.register_modules(decompressor=decompressor)
    if has_lora:
        # merged into the UNet weights: the saved pipeline loads with plain from_pretrained
        pipe.unet.fuse_lora() if hasattr(pipe.unet, "fuse_lora") else None
        pipe.unet.unload_lora() if hasattr(pipe.unet, "unload_lora") else None
    for m in (pipe.compressor, pipe.decompressor, pipe.controlnet, pipe.unet):
        m.eval()
    pipe.save_pretrained(output_dir, safe_serialization=True)


# ----------------------------------------------------------------------------------------------- cards
def loss_weights(args) -> LossWeights:
    """The λs the training flags give; several ``--lambda_rate`` values make a variable-rate objective."""
    from ..models.rate_gains import level_lambdas

    lambdas = list(args.lambda_rate) if isinstance(args.lambda_rate, (list, tuple)) else [args.lambda_rate]
    levels = tuple(level_lambdas(lambdas)) if len(lambdas) > 1 else None
    return LossWeights(lambdas[0] if levels is None else levels[-1], args.lambda_guide, args.lambda_diffusion,
                       args.lambda_roi, args.lambda_task, rate_levels=levels,
                       level_scale=getattr(args, "level_loss_scale", "none"))


def rate_levels_line(weights: LossWeights) -> str:
    """The model card's line on a variable-rate model's levels (the λr of each); none for a model of one rate."""
    levels = weights.rate_levels
    if levels is None:
        return ""
    listed = ", ".join(f"{i}: λr={v:g}" for i, v in enumerate(levels))
    return (f"- Rate: variable rate, {len(levels)} trained levels ({listed}); `pipe.compress(image, rate=r)` with r from "
            f"0 (the fewest bits) to {len(levels) - 1}, fractions interpolating\n")


def format_version_text(args, weights: LossWeights) -> str:
    exact = getattr(args, "exact_entropy_model", False)
    model = "exact integer entropy model" if exact else "floating-point entropy model"
    if weights.rate_levels is not None:
        return f"3 (variable rate, {model})"
    return f"{2 if exact else 1} ({model})"

def write_model_card(args, output_dir: Path, metrics: dict, global_step: int):
    """``README.md`` of the output from ``hub_cards/model_card.md``. The YAML header is written by
    ``huggingface_hub.ModelCardData``; ``base_model`` and ``datasets`` name Hub ids only (a local path is not
    valid Hub metadata, so it is named in the text instead). The validation metrics go both into the card's
    table and into the Hub's ``model-index`` (``huggingface_hub.EvalResult``), which the Hub shows beside the
    model; a run without validation claims none."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base = args.pretrained_model_name_or_path
    dataset = args.dataset_name or args.train_data_dir
    hub_dataset = None if args.dataset_name is None or Path(args.dataset_name).exists() else args.dataset_name
    repo_id = args.hub_model_id or Path(args.output_dir).name  # output_dir may be the staging folder of the save
    weights = loss_weights(args)
    eval_results = [
        EvalResult(task_type="image-to-image", task_name="Image compression for machines",
                   dataset_type=hub_dataset or "local", dataset_name=hub_dataset or Path(str(dataset)).name,
                   dataset_split="validation", metric_type=name.removeprefix("val/"), metric_name=name,
                   metric_value=float(value))
        for name, value in sorted(metrics.items())
    ]
    data = ModelCardData(
        library_name="diffusers",
        license="apache-2.0",
        base_model=None if Path(base).exists() else base,
        datasets=None if hub_dataset is None else [hub_dataset],
        tags=["slim-diffusers", "image-compression", "coding-for-machines", "stable-diffusion", "controlnet"],
        pipeline_tag="image-to-image",
        model_name=repo_id if eval_results else None,
        eval_results=eval_results or None,
    )
    template = (HUB_CARDS / "model_card.md").read_text(encoding="utf-8")
    text = template.format(
        metadata=data.to_yaml(),
        repo_id=repo_id,
        base_model=base,
        dataset=dataset,
        stage=args.stage,
        steps=global_step,
        lambdas=", ".join(f"λ{k}={v}" for k, v in weights.as_dict().items() if k != "rate_levels"),
        rate_line=rate_levels_line(weights),
        roi="off (w/o RoI ablation)" if args.no_roi else "Grad-CAM RoI masks",
        lora=args.unet_lora_rank or "none",
        format_version=format_version_text(args, weights),
        metrics="\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())) or "| (no validation run) | |",
    )
    card = ModelCard(text)
    card.save(output_dir / "README.md")
    return card


