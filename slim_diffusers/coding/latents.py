"""Latent ↔ bytes: SLIM's compressor and decompressor put together around the one latent codec.

:func:`compress_latents` and :func:`decompress_latents` are what the pipeline calls: padding to the codec's
stride, the analysis transforms, :class:`~slim_diffusers.coding.latent_codec.SLIMLatentCodec` (one rANS
stream per image) and the synthesis transform. :func:`run_codec` is the same path for training, with
likelihoods instead of bytes.

Entropy coding runs one item at a time, so a batch codes exactly like the same images one by one.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import SLIMModelMismatchError
from ..models.compressor import SLIMCompressor
from ..models.decompressor import SLIMDecompressor


@dataclass
class SLIMCodecOutput:
    """Training-time result of :func:`run_codec`.

    Args:
        latents: reconstructed latent ẑ, cropped to the input size.
        likelihoods: ``{"y": ..., "z": ...}`` per-symbol likelihoods.
    """

    latents: torch.Tensor
    likelihoods: Dict[str, torch.Tensor]

    def bits(self) -> torch.Tensor:
        """Rate in bits, summed over the batch: ``-Σ log2(likelihoods)``."""
        return sum(-torch.log2(l).sum() for l in self.likelihoods.values())


def check_pair(compressor: SLIMCompressor, decompressor: SLIMDecompressor) -> None:
    """Raise :class:`SLIMModelMismatchError` when the two components cannot work together."""
    keys = ("latent_channels", "latent_codec_channels", "hyper_channels")
    for key in keys:
        a, b = compressor.config[key], decompressor.config[key]
        if a != b:
            raise SLIMModelMismatchError(
                f"compressor and decompressor disagree on {key} ({a} vs {b}); load both from the same checkpoint"
            )
    if compressor.num_rate_levels != decompressor.num_rate_levels:
        raise SLIMModelMismatchError(
            f"compressor and decompressor disagree on the rate levels ({compressor.num_rate_levels} vs "
            f"{decompressor.num_rate_levels}; 0: a fixed-rate model); load both from the same checkpoint"
        )
    if compressor.config.num_downsamples != decompressor.config.num_upsamples:
        raise SLIMModelMismatchError(
            f"compressor downsamples {compressor.config.num_downsamples}× by 2 but the decompressor upsamples "
            f"{decompressor.config.num_upsamples}×; load both from the same checkpoint"
        )


def pad_latents(latents: torch.Tensor, stride: int) -> torch.Tensor:
    """Replicate-pad height and width up to a multiple of ``stride`` (replicated edges cost few bits)."""
    h, w = latents.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return latents
    return F.pad(latents, (0, pw, 0, ph), mode="replicate")


Rate = Optional[Union[float, torch.Tensor]]


def _item_rate(rate: Rate, i: int) -> Rate:
    if isinstance(rate, torch.Tensor) and rate.numel() > 1:
        return rate.reshape(-1)[i]
    return rate


def _analyse(compressor: SLIMCompressor, latents: torch.Tensor, rate: Rate = None):
    if compressor.training:
        return compressor(latents, rate)
    # one item at a time at inference: a payload must not depend on what else was in the batch
    items = [compressor(latents[i : i + 1], _item_rate(rate, i)) for i in range(latents.shape[0])]
    return type(items[0])(y=torch.cat([o.y for o in items]), z=torch.cat([o.z for o in items]))


def run_codec(compressor: SLIMCompressor, decompressor: SLIMDecompressor, latents: torch.Tensor,
              rate: Rate = None) -> SLIMCodecOutput:
    """Differentiable pass for training (and the eval-mode reconstruction when the modules are in eval).
    ``rate``: variable-rate models only, one level for the batch or one per item (training draws one per item)."""
    h, w = latents.shape[-2:]
    coded = _analyse(compressor, pad_latents(latents, decompressor.total_stride), rate)
    out = decompressor(coded.y, coded.z, rate)
    return SLIMCodecOutput(latents=out.latents[..., :h, :w], likelihoods=out.likelihoods)


# --------------------------------------------------------------------------------------------- coding
@torch.no_grad()
def compress_latents(compressor: SLIMCompressor, decompressor: SLIMDecompressor, latents: torch.Tensor,
                     rate: Optional[float] = None) -> List[bytes]:
    """Entropy-code a batch of latents ``(B, C, H, W)``; one payload per item. ``rate``: the level of a variable-rate
    model (the decoder must be given the same one: the ``.slim`` header carries it)."""
    check_pair(compressor, decompressor)
    decompressor.check_rate(rate)
    if latents.ndim != 4 or latents.shape[1] != compressor.config.latent_channels:
        raise ValueError(
            f"expected latents of shape (batch, {compressor.config.latent_channels}, H, W), got {tuple(latents.shape)}"
        )
    coded = _analyse(compressor, pad_latents(latents, decompressor.total_stride), rate)
    return decompressor.entropy_encode(coded.y, coded.z)


@torch.no_grad()
def decompress_latents(decompressor: SLIMDecompressor, payloads: Sequence[bytes], latent_shape: Sequence[int],
                       rate: Optional[float] = None) -> torch.Tensor:
    """Decode payloads written by :func:`compress_latents` for latents of spatial size ``latent_shape[-2:]`` (at
    ``rate``, for a variable-rate model)."""
    h, w = int(latent_shape[-2]), int(latent_shape[-1])
    if h <= 0 or w <= 0:
        raise ValueError(f"latent size must be positive, got {h}×{w}")
    return decompressor.decode(payloads, (h, w), rate)


@torch.no_grad()
def estimate_bits(compressor: SLIMCompressor, decompressor: SLIMDecompressor, latents: torch.Tensor,
                  rate: Optional[float] = None) -> float:
    """Rate estimate ``-Σ log2(likelihoods)`` in eval mode, over the whole batch (payload framing excluded)."""
    check_pair(compressor, decompressor)
    was_training = (compressor.training, decompressor.training)
    compressor.eval(), decompressor.eval()
    try:
        return float(run_codec(compressor, decompressor, latents, rate).bits())
    finally:
        compressor.train(was_training[0]), decompressor.train(was_training[1])


@torch.no_grad()
def convert_to_exact_entropy_model(
    compressor: SLIMCompressor, decompressor: SLIMDecompressor, latents: Sequence[torch.Tensor], config=None
) -> SLIMDecompressor:
    """The exact-entropy-model copy of a trained ``decompressor`` (:meth:`SLIMDecompressor.convert_to_exact_entropy_model`),
    calibrated on representative ``latents``: tensors ``(B, C, H, W)`` (or one batch), e.g. the VAE latents of a few
    dozen training images. The compressor is unchanged: it works with both. A variable-rate model is calibrated on
    the latents at every trained level (the gained ``y`` of each level reaches the entropy networks)."""
    check_pair(compressor, decompressor)
    if isinstance(latents, torch.Tensor):
        latents = [latents]
    rates = list(range(compressor.num_rate_levels)) or [None]
    was_training = compressor.training
    compressor.eval()
    try:
        items = []
        for batch in latents:
            batch = batch.to(compressor.device, compressor.dtype)
            for rate in rates:
                coded = _analyse(compressor, pad_latents(batch, decompressor.total_stride), rate)
                items += [(coded.y[i : i + 1], coded.z[i : i + 1]) for i in range(batch.shape[0])]
    finally:
        compressor.train(was_training)
    return decompressor.convert_to_exact_entropy_model(items, config)
