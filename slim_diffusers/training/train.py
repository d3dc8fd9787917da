"""The training loop of SLIM's compressor, decompressor and control module (both stages), with Accelerate.

Users launch the stage scripts, which call :func:`main` with their stage::

    accelerate launch training/train_stage1.py --pretrained_model_name_or_path PATH --train_data_dir DATA ...
    accelerate launch training/train_stage2.py --pretrained_model_name_or_path STAGE1_OUTPUT ...

Only the compressor, the decompressor and the control module learn (plus optional UNet LoRA adapters); the
VAE, UNet, text encoder and classifier stay frozen. What the loop uses — the training module, data, checkpoints,
validation, the saved pipeline and its card — is in :mod:`slim_diffusers.training.training_utils`; the loss
terms in :mod:`slim_diffusers.training.losses`. Checkpoints (``checkpoint-N``) are Accelerate states; the
output directory is a pipeline that ``SLIMPipeline.from_pretrained`` loads (safetensors).
"""

import argparse
import json
import logging
import math
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed

from ..utils.distributed import use_cpu_workers
from ..utils.file_utils import staged_directory
from .losses import LEVEL_SCALES, MASK_NORMALIZATIONS, decode_timesteps, perceptual_distance
from .inputs import exit_on_mistakes, training_input_mistakes
from .training_utils import (
    EpochSampler,
    SLIMTrainingModule,
    classifier_preprocess_fn,
    collate,
    load_pipeline,
    load_training_dataset,
    log_validation,
    loss_weights,
    make_transform,
    make_variable_rate,
    resolve_checkpoint,
    exact_decompressor,
    save_checkpoint,
    save_pipeline,
    write_model_card,
)

logger = get_logger(__name__)


def recorded_args(args) -> dict:
    """The run's arguments as ``training_state.json`` keeps them (what trained these weights, for whoever reads them
    later): JSON values, paths as text; the Hub token is never written."""
    out = {}
    for key, value in sorted(vars(args).items()):
        if key == "hub_token":
            continue
        out[key] = value if value is None or isinstance(value, (bool, int, float, str)) else (
            [v if isinstance(v, (bool, int, float, str)) else str(v) for v in value]
            if isinstance(value, (list, tuple)) else str(value))
    return out


def replay_schedule(lr_scheduler, steps: int) -> None:
    """Step a freshly built learning-rate schedule to ``steps``, as a resumed run does before its first step.

    The schedule is a function of the step count only, so this gives the learning rate an uninterrupted run has at
    that step. PyTorch warns that the scheduler stepped before the optimizer (it may skip the schedule's first
    value); here that is the point, so the warning, which would suggest a broken resume, is silenced for it alone.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                category=UserWarning)
        for _ in range(steps):
            lr_scheduler.step()


def parse_args(stage: int, argv=None, check_inputs: bool = True):
    """The flags of stage ``stage``; with ``check_inputs`` the dataset, models and output path they name are checked
    (one line each, exit status 2) before anything loads."""
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
    p.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for memory: recompute the activations of the control module and of the frozen "
                   "UNet and VAE decoder that the gradients pass through")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--lr_scheduler", default="constant",
                   help="diffusers' get_scheduler: constant, constant_with_warmup, linear, cosine, ... (default: constant)")
    p.add_argument("--lr_warmup_steps", type=int, default=0, help="steps of linear learning-rate warm-up from 0")
    p.add_argument("--aux_learning_rate", type=float, default=1e-3, help="for the entropy bottleneck's quantiles")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_weight_decay", type=float, default=1e-2)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    p.add_argument("--checkpointing_steps", type=int, default=5000)
    p.add_argument("--checkpoints_total_limit", type=int, default=None)
    p.add_argument("--resume_from_checkpoint", default=None,
                   help="a checkpoint directory, or 'latest' (the newest complete one; incomplete ones are skipped)")
    p.add_argument("--remove_incomplete_checkpoints", action="store_true",
                   help="with --resume_from_checkpoint latest: delete the checkpoints whose writing was interrupted "
                        "instead of keeping them for inspection")
    p.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none")
    p.add_argument("--logging_dir", default="logs")
    p.add_argument("--validation_steps", type=int, default=1000)
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    p.add_argument("--lambda_rate", type=float, nargs="+", default=[1.0],
                   help="λr; several values train one variable-rate model with a rate level per value (level 0: the "
                   "largest λr, the fewest bits), each training image coded at a level drawn at random")
    p.add_argument("--level_loss_scale", choices=LEVEL_SCALES, default="none",
                   help="several --lambda_rate values only (our addition, not the paper's): 'inverse_lambda' divides "
                   "each image's loss by max(1, λr of its level), so that a level of large λr does not outweigh the "
                   "others in the shared weights' gradients; 'none' (default): every image's terms as they are")
    p.add_argument("--lambda_guide", type=float, default=1.0, help="λg")
    p.add_argument("--lambda_diffusion", type=float, default=1.0, help="λd")
    p.add_argument("--lambda_roi", type=float, default=1.0, help="λroi (stage 2)")
    p.add_argument("--lambda_task", type=float, default=0.1, help="λt (stage 2)")
    p.add_argument("--no_roi", action="store_true", help="replace the RoI mask by ones (the 'w/o RoI' ablation)")
    p.add_argument("--mask_normalization", choices=MASK_NORMALIZATIONS, default="mass",
                   help="masked MSE terms (guide, RoI): 'mass' divides by the mask's mass, so λg and λroi weigh the same "
                   "distortion with and without RoI masks; 'literal' is the paper's MSE(M⊙a, M⊙b) over every element")
    p.add_argument("--stage2_timesteps", choices=["decode", "uniform"], default="decode",
                   help="stage 2: draw x̂'s one-step timestep from those the decoder runs at (--decode_* flags), or "
                   "uniformly from [0, T)")
    p.add_argument("--decode_num_inference_steps", type=int, default=20, help="the decode settings of --stage2_timesteps "
                   "decode (default: the pipeline's, 20 steps from noise)")
    p.add_argument("--decode_strength", type=float, default=1.0)
    p.add_argument("--decode_timestep_spacing", default=None, choices=["leading", "trailing", "linspace"],
                   help="default: the scheduler's own")
    p.add_argument("--control_warmup_steps", type=int, default=0,
                   help="our addition, not the paper's: for the first N steps the denoising term's control is the "
                   "uncompressed latent z instead of ẑ, so the control module learns to follow a latent before the "
                   "codec's is any good (the rate and guide terms train the codec meanwhile); 0: the paper's training")
    p.add_argument("--unet_lora_rank", type=int, default=0, help="add PEFT LoRA adapters of this rank to the UNet")
    p.add_argument("--classifier_name_or_path", default="microsoft/resnet-50", help="frozen task classifier (stage 2)")
    p.add_argument("--lpips_net", default="vgg", choices=["vgg", "alex", "squeeze"])
    p.add_argument("--lpips_random_init", action="store_true",
                   help="offline runs: LPIPS without downloaded weights (random backbone, heads made non-negative)")
    p.add_argument("--lpips_signed_heads", action="store_true",
                   help="with --lpips_random_init: keep the heads' random signs (toy world v2; not a distance)")
    p.add_argument("--exact_entropy_model", action="store_true",
                   help="save the pipeline with an exact (integer) entropy model: post-training conversion of the "
                   "trained one, calibrated on training images; its files decode bit-identically on every device")
    p.add_argument("--exact_calibration_images", type=int, default=32,
                   help="training images to calibrate the exact entropy model on (default: 32)")
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_model_id", default=None)
    p.add_argument("--hub_token", default=None)
    args = p.parse_args(argv)
    if (args.train_data_dir is None) == (args.dataset_name is None):
        p.error("give exactly one of --train_data_dir and --dataset_name")
    if args.level_loss_scale != "none" and len(args.lambda_rate) < 2:
        p.error("--level_loss_scale scales the levels of a variable-rate model: give several --lambda_rate values")
    args.stage = stage
    if check_inputs:
        exit_on_mistakes(p.prog, training_input_mistakes(args))  # before anything loads or any folder is made
    return args


def main(stage: int, argv=None) -> int:
    """Train stage ``stage`` with the command-line flags ``argv``; returns the final global step."""
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
    resume = resolve_checkpoint(output_dir, args.resume_from_checkpoint,  # before any model loads
                                remove_incomplete=args.remove_incomplete_checkpoints and accelerator.is_main_process)

    pipe = load_pipeline(args.pretrained_model_name_or_path)
    weights = loss_weights(args)
    # loss options of every stage; stage 2 adds its classifier, LPIPS and x̂'s timesteps
    stage2 = {"mask_normalization": args.mask_normalization}
    if stage == 2 and args.stage2_timesteps == "decode":
        stage2["stage2_timesteps"] = decode_timesteps(pipe.scheduler, args.decode_num_inference_steps,
                                                      args.decode_strength, args.decode_timestep_spacing)
        logger.info(f"stage 2 draws x̂'s timestep from the decoder's {stage2['stage2_timesteps'].tolist()}")
    if weights.rate_levels is not None:
        make_variable_rate(pipe, weights.rate_levels)
        earlier = Path(args.pretrained_model_name_or_path) / "training_state.json"
        before = json.loads(earlier.read_text()).get("rate_levels") if earlier.is_file() else None
        if before is not None and list(before) != list(weights.rate_levels):
            logger.warning(f"the levels were trained with λr {before}; this run gives them {list(weights.rate_levels)}")
    elif pipe.decompressor.num_rate_levels:
        raise ValueError(
            f"{args.pretrained_model_name_or_path} is a variable-rate model with {pipe.decompressor.num_rate_levels} rate "
            "levels: give one --lambda_rate value per level"
        )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in (pipe.vae, pipe.unet, pipe.text_encoder):
        frozen.requires_grad_(False).eval().to(accelerator.device, dtype=weight_dtype)
    if args.unet_lora_rank > 0:
        from peft import LoraConfig

        pipe.unet.to(dtype=torch.float32)
        pipe.unet.add_adapter(LoraConfig(r=args.unet_lora_rank, lora_alpha=args.unet_lora_rank,
                                         init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    model = SLIMTrainingModule.from_pipeline(pipe, train_unet_lora=args.unet_lora_rank > 0)
    del pipe  # the training module holds every component from here on
    for m in (model.compressor, model.decompressor, model.controlnet):
        m.to(accelerator.device).train().requires_grad_(True)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()

    main_params, aux_params = model.parameter_groups()
    # CompressAI fits the hyper-prior's quantiles with their own loss and rate; here they are a second
    # parameter group of the one optimizer and their loss joins the main one, so a single backward pass
    # goes through DDP (a second backward into DDP-wrapped parameters is not allowed)
    optimizer = torch.optim.AdamW(
        [{"params": main_params}, {"params": aux_params, "lr": args.aux_learning_rate, "weight_decay": 0.0}],
        lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )

    train_ds, val_ds = load_training_dataset(args)
    train_ds = train_ds.with_transform(make_transform(args.resolution, args.no_roi))
    val_ds = val_ds.with_transform(make_transform(args.resolution, args.no_roi))
    sampler = EpochSampler(len(train_ds), args.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=args.train_batch_size, sampler=sampler,
                                         collate_fn=collate, num_workers=args.dataloader_num_workers, drop_last=True)

    if stage == 2:
        from transformers import AutoModelForImageClassification

        classifier = AutoModelForImageClassification.from_pretrained(args.classifier_name_or_path)
        classifier.requires_grad_(False).eval().to(accelerator.device)
        lpips_model = perceptual_distance(args.lpips_net, args.lpips_random_init, args.lpips_signed_heads)
        lpips_model.to(accelerator.device)
        stage2.update(classifier=classifier, classifier_preprocess=classifier_preprocess_fn(args.classifier_name_or_path),
                      lpips_model=lpips_model)

    from diffusers.optimization import get_scheduler

    # a function of the step count only: rebuilt on resume by stepping it to the checkpoint's step
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=args.max_train_steps)

    if accelerator.is_main_process:  # made once everything has loaded: a run that fails to start leaves no folder
        output_dir.mkdir(parents=True, exist_ok=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError(f"the dataset has fewer than {args.train_batch_size} training images per process")
    if accelerator.is_main_process and args.report_to != "none":
        tracked = {k: (v[0] if len(v) == 1 else " ".join(map(str, v))) if isinstance(v, list) else v
                   for k, v in vars(args).items()}  # --lambda_rate: a number, or the levels' λr as text
        accelerator.init_trackers(f"slim-stage{stage}", config={k: v for k, v in tracked.items()
                                                               if isinstance(v, (int, float, str, bool))})

    global_step = 0
    if resume is not None:
        accelerator.load_state(str(resume))
        global_step = int(resume.name.split("-")[1])
        logger.info(f"resumed from {resume} at step {global_step}")
        replay_schedule(lr_scheduler, global_step)
    elif args.resume_from_checkpoint:
        logger.info("no checkpoint to resume from: starting a new run")
    first_epoch, skip = divmod(global_step * args.gradient_accumulation_steps, len(loader))
    unwrapped = accelerator.unwrap_model(model)

    def validate(step):
        return log_validation(unwrapped, val_ds, accelerator, weights, weight_dtype, stage, args.seed, step, **stage2)

    metrics = {}
    done = global_step >= args.max_train_steps
    epoch = first_epoch
    while not done:
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        # Accelerate's loaders pass their own epoch counter to the sampler; give them the real epoch so
        # that a resumed run draws the same permutation as an uninterrupted one
        batches.set_epoch(epoch)
        skip = 0
        micro = 0  # micro-batches already accumulated into this optimizer step (checkpoints fall between steps)
        for batch in batches:
            with accelerator.accumulate(model):
                # every random draw of a step (timesteps, noise, CompressAI's uniform quantisation noise, rate levels)
                # comes from (seed, step, micro-batch, process) alone, so a resumed run draws exactly what an
                # uninterrupted one would, and the micro-batches of one step draw apart
                step_seed = args.seed * 1_000_003 + global_step * 7919 + micro * 104_729 + accelerator.process_index
                torch.manual_seed(step_seed)
                generator = torch.Generator().manual_seed(step_seed)
                # a variable-rate model codes each image at a level drawn from the step's generator, first
                rate = None
                if weights.rate_levels is not None:
                    rate = torch.randint(len(weights.rate_levels), (batch["pixels"].shape[0],), generator=generator)
                embeds = unwrapped.encode_captions(batch["caption"], accelerator.device, weight_dtype)
                terms = model(batch["pixels"].to(accelerator.device, weight_dtype), batch["roi_mask"].to(accelerator.device),
                              embeds, weights, stage=stage, labels=batch["label"].to(accelerator.device),
                              generator=generator, rate=rate, control_from_latents=global_step < args.control_warmup_steps,
                              **stage2)
                aux_loss = unwrapped.decompressor.aux_loss()
                accelerator.backward(terms["loss"] + aux_loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(main_params, args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                micro += 1
                continue
            micro = 0
            global_step += 1
            logs = {k: float(v.detach()) for k, v in terms.items()}
            logs["aux_loss"] = float(aux_loss.detach())
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if args.validation_steps and global_step % args.validation_steps == 0:
                metrics = validate(global_step)
            if global_step >= args.max_train_steps:
                done = True
                break
        epoch += 1

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.validation_steps and (global_step % args.validation_steps or not metrics):
            metrics = validate(global_step) or metrics
        exact = exact_decompressor(unwrapped, train_ds, args.exact_calibration_images) if args.exact_entropy_model else None
        # the pipeline, its card and the training state appear together, model_index.json last: a kill during the
        # save leaves the previous output loadable or none at all, and the run resumes from its last checkpoint
        with staged_directory(output_dir) as stage:
            save_pipeline(unwrapped, stage, args.unet_lora_rank > 0, decompressor=exact)
            write_model_card(args, stage, metrics, global_step)
            (stage / "training_state.json").write_text(json.dumps(
                {"global_step": global_step, "num_processes": accelerator.num_processes, "metrics": metrics,
                 **({} if weights.rate_levels is None else {"rate_levels": weights.rate_levels}),
                 "args": recorded_args(args)}, indent=2))
        if args.push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo_id = create_repo(args.hub_model_id or output_dir.name, exist_ok=True, token=args.hub_token).repo_id
            upload_folder(repo_id=repo_id, folder_path=str(output_dir), token=args.hub_token,
                          ignore_patterns=["checkpoint-*", ".*", f"{args.logging_dir}/*"])
    accelerator.end_training()
    return global_step
