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


@dataclass
class LossWeights:
    """The λs of the objective. Stage 1 ignores ``roi`` and ``task``.

    ``rate_levels``: a variable-rate model's λr per rate level (level 0 first: the largest λr, the fewest bits);
    each sample's rate term is weighted by the λr of the level it was coded at, and ``rate`` is unused."""

    rate: float = 1.0
    guide: float = 1.0
    diffusion: float = 1.0
    roi: float = 1.0
    task: float = 0.1
    rate_levels: Optional[Tuple[float, ...]] = None

    def as_dict(self) -> Dict[str, float]:
        values = asdict(self)
        if self.rate_levels is None:
            values.pop("rate_levels")
        else:
            values.pop("rate")
        return values


def rate_bpp(likelihoods: Dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Rate in bits per image pixel: ``-Σ log2(likelihoods) / pixels`` over the batch."""
    bits = sum(-torch.log2(lik).sum() for lik in likelihoods.values())
    return bits / num_pixels


def variable_rate_term(likelihoods: Dict[str, torch.Tensor], pixels_per_image: int, weights: LossWeights,
                       rate: Optional[torch.Tensor]) -> torch.Tensor:
    """``λr·R`` of a variable-rate model's objective: the mean over the batch of each image's bits per pixel weighted
    by the λr of its level (``rate``: the level of each image; ``weights.rate_levels``: λr per level)."""
    if rate is None:
        raise ValueError("a variable-rate objective needs the rate level of each image")
    rate = torch.as_tensor(rate)
    if rate.is_floating_point() and not torch.equal(rate, rate.round()):
        raise ValueError("training codes every image at a trained level: the rate levels must be whole numbers")
    bits = sum(-torch.log2(lik).flatten(1).sum(dim=1) for lik in likelihoods.values())
    lambdas = torch.tensor(weights.rate_levels, dtype=bits.dtype, device=bits.device)[rate.long().to(bits.device)]
    return (lambdas * bits / pixels_per_image).mean()


def guide_loss(latents: torch.Tensor, latents_hat: torch.Tensor, roi_mask: torch.Tensor) -> torch.Tensor:
    """MSE(M⊙z, M⊙ẑ) with the RoI mask at latent size."""
    return F.mse_loss(roi_mask * latents_hat, roi_mask * latents)


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
    terms = {
        "rate_bpp": rate_bpp(coded.likelihoods, pixels.shape[0] * pixels_per_image),
        "guide_loss": guide_loss(latents.to(latents_hat.dtype), latents_hat, mask_latent),
    }

    scheduler = model.scheduler
    batch = latents.shape[0]
    num_train_timesteps = scheduler.config.num_train_timesteps
    device = latents.device
    timesteps = torch.randint(0, num_train_timesteps, (batch,), device="cpu", generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(device, latents.dtype)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = controlled_noise_prediction(model.unet, model.controlnet, noisy, timesteps, prompt_embeds, latents_hat)
    terms["diffusion_loss"] = F.mse_loss(prediction.float(), diffusion_target(scheduler, latents, noise, timesteps).float())

    if weights.rate_levels is None:  # the fixed-rate objective, computed as it always was
        weighted_rate = weights.rate * terms["rate_bpp"]
    else:
        weighted_rate = variable_rate_term(coded.likelihoods, pixels_per_image, weights, rate)
    loss = weighted_rate + weights.guide * terms["guide_loss"] + weights.diffusion * terms["diffusion_loss"]

    if stage == 2:
        if classifier is None or lpips_model is None or labels is None:
            raise ValueError("stage 2 needs labels, a classifier and an LPIPS model")
        # one-step x̂: noise ẑ to t, predict x̂₀ with the controlled UNet, decode with the frozen VAE
        noise2 = torch.randn(latents.shape, generator=generator, device="cpu").to(device, latents.dtype)
        t2 = torch.randint(0, num_train_timesteps, (batch,), device="cpu", generator=generator).to(device)
        noisy_hat = scheduler.add_noise(latents_hat, noise2, t2)
        prediction_hat = controlled_noise_prediction(model.unet, model.controlnet, noisy_hat, t2, prompt_embeds, latents_hat)
        x0 = predict_original(scheduler, noisy_hat, prediction_hat, t2)
        decoded = model.vae.decode(x0 / model.vae.config.scaling_factor, return_dict=False)[0].clamp(-1, 1)
        decoded = decoded[..., : pixels.shape[-2], : pixels.shape[-1]]
        mask = roi_mask.to(decoded.dtype)
        terms["roi_mse"] = F.mse_loss(mask * decoded, mask * pixels)
        terms["roi_lpips"] = lpips_model(mask * decoded, mask * pixels).mean()
        logits = classifier(classifier_preprocess((decoded + 1) / 2))
        logits = logits.logits if hasattr(logits, "logits") else logits
        terms["task_loss"] = F.cross_entropy(logits.float(), labels)
        loss = loss + weights.roi * (terms["roi_mse"] + terms["roi_lpips"]) + weights.task * terms["task_loss"]

    terms["loss"] = loss
    return terms
