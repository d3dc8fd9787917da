"""Latent ↔ bytes: padding, entropy coding with the SLIM codec components, payload framing.

A payload is one rANS stream (CompressAI's coder) holding every symbol of one image's latent: the
hyper-latent first, then the checkerboard anchors and non-anchors of each channel group. One stream per
image rather than one per group saves the coder's 8-byte flush per group, which matters at a few hundred
bytes per image. Every tensor shape follows from the latent size, so the payload carries no shapes.

Entropy coding runs one item at a time, so a batch codes exactly like the same images one by one.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from compressai.ans import BufferedRansEncoder, RansDecoder

from .errors import SLIMBitstreamError, SLIMModelMismatchError
from .models.compressor import SLIMCompressor
from .models.decompressor import SLIMDecompressor


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


def _analyse(compressor: SLIMCompressor, latents: torch.Tensor):
    if compressor.training:
        return compressor(latents)
    # one item at a time at inference: a payload must not depend on what else was in the batch
    items = [compressor(latents[i : i + 1]) for i in range(latents.shape[0])]
    return type(items[0])(y=torch.cat([o.y for o in items]), z=torch.cat([o.z for o in items]))


def run_codec(compressor: SLIMCompressor, decompressor: SLIMDecompressor, latents: torch.Tensor) -> SLIMCodecOutput:
    """Differentiable pass for training (and the eval-mode reconstruction when the modules are in eval)."""
    h, w = latents.shape[-2:]
    # in multi-process training both arrive wrapped in DistributedDataParallel: call the wrappers (they
    # synchronise gradients), read attributes from the modules inside
    stride = getattr(decompressor, "module", decompressor).total_stride
    coded = _analyse(compressor, pad_latents(latents, stride))
    out = decompressor(coded.y, coded.z)
    return SLIMCodecOutput(latents=out.latents[..., :h, :w], likelihoods=out.likelihoods)


def _overread_margin(payload: bytes, decompressor: SLIMDecompressor, sizes) -> int:
    # CompressAI's rANS decoder does not check the end of its buffer: on a corrupt stream it keeps reading.
    # Zeros after the payload bound what it can read (at most one 32-bit word per symbol, plus escape
    # codes that stop at the first zero nibble), so a bad file decodes to garbage instead of reading
    # foreign memory.
    (yh, yw), (zh, zw) = sizes
    symbols = decompressor.config.latent_codec_channels * yh * yw + decompressor.config.hyper_channels * zh * zw
    return 4 * (symbols + 16) + 16 * len(payload)


def payload_decoder(decompressor: SLIMDecompressor, payload: bytes, sizes) -> RansDecoder:
    """A rANS decoder over ``payload`` (one image's stream), checked for shape and guarded against over-reads."""
    payload = bytes(payload)
    if len(payload) < 8 or len(payload) % 4:
        raise SLIMBitstreamError(
            f"corrupt payload: {len(payload)} bytes is not a whole rANS stream (a multiple of 4, at least 8)"
        )
    decoder = RansDecoder()
    decoder.set_stream(payload + bytes(_overread_margin(payload, decompressor, sizes)))
    return decoder


def _require_tables(decompressor: SLIMDecompressor) -> None:
    if not decompressor.is_ready_to_code:
        raise RuntimeError("the decompressor has no CDF tables yet: call `decompressor.update()` after training")


# --------------------------------------------------------------------------------------------- coding
@torch.no_grad()
def compress_latents(compressor: SLIMCompressor, decompressor: SLIMDecompressor, latents: torch.Tensor) -> List[bytes]:
    """Entropy-code a batch of latents ``(B, C, H, W)``; one payload per item."""
    check_pair(compressor, decompressor)
    _require_tables(decompressor)
    if latents.ndim != 4 or latents.shape[1] != compressor.config.latent_channels:
        raise ValueError(
            f"expected latents of shape (batch, {compressor.config.latent_channels}, H, W), got {tuple(latents.shape)}"
        )
    payloads = []
    for item in pad_latents(latents, decompressor.total_stride).split(1):
        coded = compressor(item)
        encoder = BufferedRansEncoder()
        decompressor.code_item(coded.y, coded.z, encoder=encoder)
        payloads.append(encoder.flush())
    return payloads


@torch.no_grad()
def decompress_latents(decompressor: SLIMDecompressor, payloads: Sequence[bytes], latent_shape: Sequence[int]) -> torch.Tensor:
    """Decode payloads written by :func:`compress_latents` for latents of spatial size ``latent_shape[-2:]``."""
    _require_tables(decompressor)
    h, w = int(latent_shape[-2]), int(latent_shape[-1])
    if h <= 0 or w <= 0:
        raise ValueError(f"latent size must be positive, got {h}×{w}")
    sizes = decompressor.code_shapes(h, w)
    y_hats = []
    for payload in payloads:
        y_hats.append(decompressor.code_item(decoder=payload_decoder(decompressor, payload, sizes), sizes=sizes)[0])
    latents = decompressor.synthesize(torch.cat(y_hats, dim=0))
    return latents[..., :h, :w]


@torch.no_grad()
def estimate_bits(compressor: SLIMCompressor, decompressor: SLIMDecompressor, latents: torch.Tensor) -> float:
    """Rate estimate ``-Σ log2(likelihoods)`` in eval mode, over the whole batch (payload framing excluded)."""
    check_pair(compressor, decompressor)
    was_training = (compressor.training, decompressor.training)
    compressor.eval(), decompressor.eval()
    try:
        return float(run_codec(compressor, decompressor, latents).bits())
    finally:
        compressor.train(was_training[0]), decompressor.train(was_training[1])
