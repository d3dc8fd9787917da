"""SLIM's training objective, shared by both training stages (paper §3.2).

Stage 1:  λr·R + λg·MSE(M⊙z, M⊙ẑ) + λd·MSE(target, model(z_t, t, c))
Stage 2:  stage 1 + λroi·(MSE + LPIPS)(M⊙x, M⊙x̂) + λt·CE(y, classifier(x̂))

``R`` is the rate in bits per pixel from the entropy model's likelihoods, ``M`` the RoI mask (resized to
the latent for the guide loss, at image size for the RoI loss), ``z`` the VAE latent, ``ẑ`` the
decompressed latent, ``target`` the noise ε or the velocity v as the scheduler's ``prediction_type`` says.

x̂ for stage 2 is a one-step estimate: ẑ is noised to a sampled timestep t, the UNet guided by the control
module predicts the clean latent x̂₀ in one step, and the frozen VAE decoder maps it to pixels. Running the
full sampler with gradients through every step would multiply memory and time by the number of steps;
the one-step estimate is what the decoder's first step sees and keeps gradients short.
"""

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..coding.latents import run_codec
from ..models.controlnet import controlled_noise_prediction


LEVEL_SCALES = ("none", "inverse_lambda")


@dataclass
class LossWeights:
    """The λs of the objective. Stage 1 ignores ``roi`` and ``task``.

    ``rate_levels``: a variable-rate model's λr per rate level (level 0 first: the largest λr, the fewest bits);
    each sample's rate term is weighted by the λr of the level it was coded at, and ``rate`` is unused.

    ``level_scale`` (variable-rate models; our addition, not the paper's): ``"none"`` sums every image's terms as they
    are; ``"inverse_lambda"`` divides each image's whole loss by max(1, λr of its level). Each level keeps its own
    optimum (its loss is only scaled), but a level of large λr no longer outweighs the others in the shared weights'
    gradients by its λr (with Adam, whose steps follow the largest gradients, it otherwise slows every other level)."""

    rate: float = 1.0
    guide: float = 1.0
    diffusion: float = 1.0
    roi: float = 1.0
    task: float = 0.1
    rate_levels: Optional[Tuple[float, ...]] = None
    level_scale: str = "none"

    def __post_init__(self):
        if self.level_scale not in LEVEL_SCALES:
            raise ValueError(f"unknown level_scale {self.level_scale!r}: use one of {LEVEL_SCALES}")
        if self.level_scale != "none" and self.rate_levels is None:
            raise ValueError("level_scale scales a variable-rate model's levels: give rate_levels (several λr)")

    def as_dict(self) -> Dict[str, float]:
        values = asdict(self)
        if self.level_scale == "none":
            values.pop("level_scale")
        if self.rate_levels is None:
            values.pop("rate_levels")
        else:
            values.pop("rate")
        return values


def rate_bpp(likelihoods: Dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Rate in bits per image pixel: ``-Σ log2(likelihoods) / pixels`` over the batch."""
    bits = sum(-torch.log2(lik).sum() for lik in likelihoods.values())
    return bits / num_pixels


def _level_lambdas(weights: LossWeights, rate, dtype, device) -> torch.Tensor:
    if rate is None:
        raise ValueError("a variable-rate objective needs the rate level of each image")
    rate = torch.as_tensor(rate)
    if rate.is_floating_point() and not torch.equal(rate, rate.round()):
        raise ValueError("training codes every image at a trained level: the rate levels must be whole numbers")
    return torch.tensor(weights.rate_levels, dtype=dtype, device=device)[rate.long().to(device)]


def level_sample_weights(weights: LossWeights, rate, dtype=torch.float32, device="cpu") -> Optional[torch.Tensor]:
    """Each image's loss scale under ``weights.level_scale`` (``(B,)``), or None where every image counts as it is."""
    if weights.level_scale == "none":
        return None
    return 1.0 / _level_lambdas(weights, rate, dtype, device).clamp_min(1.0)


def variable_rate_term(likelihoods: Dict[str, torch.Tensor], pixels_per_image: int, weights: LossWeights,
                       rate: Optional[torch.Tensor], sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``λr·R`` of a variable-rate model's objective: the mean over the batch of each image's bits per pixel weighted
    by the λr of its level (``rate``: the level of each image; ``weights.rate_levels``: λr per level), and by
    ``sample_weights`` when given."""
    bits = sum(-torch.log2(lik).flatten(1).sum(dim=1) for lik in likelihoods.values())
    lambdas = _level_lambdas(weights, rate, bits.dtype, bits.device)
    if sample_weights is not None:
        lambdas = lambdas * sample_weights.to(bits)
    return (lambdas * bits / pixels_per_image).mean()


def _weighted_by_image(values: torch.Tensor, sample_weights: torch.Tensor) -> torch.Tensor:
    """``values`` (B, ...) with each image's entries scaled by its weight (``(B,)``)."""
    return values * sample_weights.to(values).view(-1, *([1] * (values.dim() - 1)))


def _per_image(values: torch.Tensor, sample_weights: torch.Tensor) -> torch.Tensor:
    """``values`` (B, ...) weighted by image and averaged as an unweighted mean would be."""
    return _weighted_by_image(values, sample_weights).mean()


MASK_NORMALIZATIONS = ("mass", "literal")


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, normalization: str = "mass",
               sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MSE of ``a`` and ``b`` weighted by the mask (broadcast over channels).

    ``"literal"``: the paper's ``MSE(M⊙a, M⊙b)``, a mean over every element, which scales with E[M²];
    ``"mass"``: ``Σ M²(a−b)² / Σ M²``, a mean over the mask's mass (equal to the plain MSE for an all-ones mask).
    ``sample_weights`` (``(B,)``) scales each image's share of the sum, the normalisation unchanged."""
    if normalization == "literal":
        if sample_weights is None:
            return F.mse_loss(mask * a, mask * b)
        return _per_image((mask * a - mask * b) ** 2, sample_weights)
    if normalization != "mass":
        raise ValueError(f"unknown mask normalization {normalization!r}: use one of {MASK_NORMALIZATIONS}")
    weight = (mask * mask).expand_as(a)
    squared = weight * (a - b) ** 2
    if sample_weights is not None:
        squared = _weighted_by_image(squared, sample_weights)
    return squared.sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)


def guide_loss(latents: torch.Tensor, latents_hat: torch.Tensor, roi_mask: torch.Tensor,
               normalization: str = "mass", sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The guide loss between z and ẑ with the RoI mask at latent size (:func:`masked_mse`)."""
    return masked_mse(latents_hat, latents, roi_mask, normalization, sample_weights)


def decode_timesteps(scheduler, num_inference_steps: int, strength: float,
                     timestep_spacing: Optional[str] = None) -> torch.Tensor:
    """The timesteps a decoder with these settings denoises at, by :meth:`SLIMPipeline.get_timesteps`'s rule (the
    last ``round(num_inference_steps · strength)`` of the schedule, at least one); the first is the noise level the
    decode starts from. ``scheduler`` is not changed (a copy from its config sets the timesteps)."""
    if num_inference_steps < 1 or not 0.0 < strength <= 1.0:
        raise ValueError(f"a decode runs at least one step at a strength in (0, 1]; got {num_inference_steps} steps at "
                         f"strength {strength}")
    overrides = {} if timestep_spacing is None else {"timestep_spacing": timestep_spacing}
    copy = type(scheduler).from_config(scheduler.config, **overrides)
    copy.set_timesteps(num_inference_steps)
    timesteps = copy.timesteps
    if strength >= 1.0:
        return timesteps.clone()
    kept = min(max(int(round(num_inference_steps * strength)), 1), num_inference_steps)
    return timesteps[(num_inference_steps - kept) * copy.order :].clone()


def perceptual_distance(net: str = "alex", random_init: bool = False, signed_heads: bool = False):
    """LPIPS for the stage-2 RoI term. Offline runs (``random_init``) cannot load the pretrained backbone and heads;
    LPIPS's own linear heads are trained non-negative, which is what makes it a distance (≥ 0, 0 for identical
    images), so randomly initialised heads are made non-negative (``|w|``) too. ``signed_heads`` keeps the random signs
    of toy world v2, under which minimising "LPIPS" drove it below zero while the pixel error grew."""
    import lpips

    kwargs = dict(pretrained=False, pnet_rand=True) if random_init else {}
    model = lpips.LPIPS(net=net, verbose=False, **kwargs)
    if random_init and not signed_heads:
        with torch.no_grad():
            for head in model.lins:
                for layer in head.modules():
                    if isinstance(layer, torch.nn.Conv2d):
                        layer.weight.abs_()
    return model.eval().requires_grad_(False)


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}: SLIM trains ε- or v-prediction models")


def predict_original(scheduler, noisy: torch.Tensor, model_output: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """x̂₀ from one model evaluation (ε or v parameterisation)."""
    alphas = scheduler.alphas_cumprod.to(device=noisy.device, dtype=noisy.dtype)[timesteps].view(-1, 1, 1, 1)
    if scheduler.config.prediction_type == "epsilon":
        return (noisy - (1 - alphas).sqrt() * model_output) / alphas.sqrt()
    return alphas.sqrt() * noisy - (1 - alphas).sqrt() * model_output


def resize_mask(roi_mask: torch.Tensor, size) -> torch.Tensor:
    """Area-average a (B, 1, H, W) mask to ``size``: a latent position's weight is its pixels' mean."""
    return F.adaptive_avg_pool2d(roi_mask, size) if tuple(roi_mask.shape[-2:]) != tuple(size) else roi_mask


def slim_losses(
    model,
    pixels: torch.Tensor,
    roi_mask: torch.Tensor,
    prompt_embeds: torch.Tensor,
    weights: LossWeights,
    stage: int = 1,
    labels: Optional[torch.Tensor] = None,
    classifier=None,
    classifier_preprocess=None,
    lpips_model=None,
    generator: Optional[torch.Generator] = None,
    rate: Optional[torch.Tensor] = None,
    mask_normalization: str = "mass",
    stage2_timesteps: Optional[torch.Tensor] = None,
    control_from_latents: bool = False,
) -> Dict[str, torch.Tensor]:
    """All loss terms for one batch, and their weighted sum under ``"loss"``.

    Args:
        model: what holds the components — a :class:`~slim_diffusers.training.SLIMTrainingModule` or a
            :class:`~slim_diffusers.SLIMPipeline` (its ``vae``, ``unet``, ``scheduler``, ``controlnet``,
            ``compressor`` and ``decompressor`` are used; only the last three should require gradients).
        pixels: images in [-1, 1], (B, 3, H, W), H and W multiples of the VAE stride.
        roi_mask: (B, 1, H, W) in [0, 1]; all ones trains without RoI focus (the "w/o RoI" ablation).
        prompt_embeds: CLIP-encoded captions, (B, L, D).
        stage: 1 or 2.
        labels, classifier, classifier_preprocess, lpips_model: stage 2 only. ``classifier_preprocess``
            maps decoded images in [0, 1] to the classifier's input.
        rate: variable-rate models only: the rate level of each image, ``(B,)`` (training draws them).
        mask_normalization: ``"mass"`` or ``"literal"`` (the paper's form), for the guide and RoI MSE terms.
        stage2_timesteps: the timesteps x̂'s one-step estimate is drawn from (e.g. :func:`decode_timesteps`);
            ``None``: uniform on [0, T).
        control_from_latents: the denoising term's control is the uncompressed latent z, not ẑ (the training
            scripts' ``--control_warmup_steps``, our addition); the codec then learns from the rate and guide terms only.
    """
    with torch.no_grad():
        latents = model.vae.encode(pixels).latent_dist.mode() * model.vae.config.scaling_factor
    # the codec trains in its own precision (float32) whatever the frozen models' precision or an enclosing autocast,
    # as it codes: the rate sums -log2 of tens of thousands of likelihoods, which bfloat16 would round to 3 digits
    with torch.autocast(latents.device.type, enabled=False):
        coded = run_codec(model.compressor, model.decompressor, latents.to(model.compressor.dtype), rate)
    latents_hat = coded.latents
    mask_latent = resize_mask(roi_mask, latents.shape[-2:]).to(latents_hat.dtype)

    pixels_per_image = pixels.shape[-2] * pixels.shape[-1]
    # weights.level_scale: each image's loss scaled by its level (None: every image as it is, the paper's sum)
    sample = None if weights.rate_levels is None else level_sample_weights(weights, rate, latents_hat.dtype,
                                                                            latents_hat.device)
    terms = {
        "rate_bpp": rate_bpp(coded.likelihoods, pixels.shape[0] * pixels_per_image),
        "guide_loss": guide_loss(latents.to(latents_hat.dtype), latents_hat, mask_latent, mask_normalization, sample),
    }

    scheduler = model.scheduler
    batch = latents.shape[0]
    num_train_timesteps = scheduler.config.num_train_timesteps
    device = latents.device
    timesteps = torch.randint(0, num_train_timesteps, (batch,), device="cpu", generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(device, latents.dtype)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    control = latents.to(latents_hat.dtype) if control_from_latents else latents_hat
    prediction = controlled_noise_prediction(model.unet, model.controlnet, noisy, timesteps, prompt_embeds, control)
    target = diffusion_target(scheduler, latents, noise, timesteps).float()
    if sample is None:
        terms["diffusion_loss"] = F.mse_loss(prediction.float(), target)
    else:
        terms["diffusion_loss"] = _per_image((prediction.float() - target) ** 2, sample)

    if weights.rate_levels is None:  # the fixed-rate objective, computed as it always was
        weighted_rate = weights.rate * terms["rate_bpp"]
    else:
        weighted_rate = variable_rate_term(coded.likelihoods, pixels_per_image, weights, rate, sample)
    loss = weighted_rate + weights.guide * terms["guide_loss"] + weights.diffusion * terms["diffusion_loss"]

    if stage == 2:
        if classifier is None or lpips_model is None or labels is None:
            raise ValueError("stage 2 needs labels, a classifier and an LPIPS model")
        # one-step x̂: noise ẑ to t, predict x̂₀ with the controlled UNet, decode with the frozen VAE
        noise2 = torch.randn(latents.shape, generator=generator, device="cpu").to(device, latents.dtype)
        if stage2_timesteps is None:
            t2 = torch.randint(0, num_train_timesteps, (batch,), device="cpu", generator=generator).to(device)
        else:
            choices = torch.as_tensor(stage2_timesteps, dtype=torch.long).flatten().cpu()
            t2 = choices[torch.randint(0, len(choices), (batch,), device="cpu", generator=generator)].to(device)
        noisy_hat = scheduler.add_noise(latents_hat, noise2, t2)
        prediction_hat = controlled_noise_prediction(model.unet, model.controlnet, noisy_hat, t2, prompt_embeds, latents_hat)
        x0 = predict_original(scheduler, noisy_hat, prediction_hat, t2)
        decoded = model.vae.decode(x0 / model.vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)
        decoded = decoded[..., : pixels.shape[-2], : pixels.shape[-1]]
        mask = roi_mask.to(decoded.dtype)
        terms["roi_mse"] = masked_mse(decoded, pixels, mask, mask_normalization, sample)
        distance = lpips_model(mask * decoded, mask * pixels)
        terms["roi_lpips"] = distance.mean() if sample is None else _per_image(distance, sample)
        logits = classifier(classifier_preprocess((decoded + 1) / 2))
        logits = logits.logits if hasattr(logits, "logits") else logits
        if sample is None:
            terms["task_loss"] = F.cross_entropy(logits.float(), labels)
        else:
            terms["task_loss"] = _per_image(F.cross_entropy(logits.float(), labels, reduction="none"), sample)
        loss = loss + weights.roi * (terms["roi_mse"] + terms["roi_lpips"]) + weights.task * terms["task_loss"]

    terms["loss"] = loss
    return terms
