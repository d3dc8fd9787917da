"""The sender's half of the SLIM latent codec: analysis transforms only.

Ownership (see also :mod:`slim_diffusers.models.decompressor`): the compressor holds the latent analysis
transform ``g_a`` and the hyper analysis ``h_a``; everything that both sides need to agree on symbol for
symbol (the factorized hyper-latent prior, the hyper synthesis ``h_s``, the checkerboard/channel-group
context networks and their CDF tables) lives in :class:`~slim_diffusers.SLIMDecompressor`, which a sender
therefore loads too. No weight is stored twice.
"""

from dataclasses import dataclass
from typing import Optional, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .layers import analysis_transform, conv3x3
from .rate_gains import RateGains


@dataclass
class SLIMCompressorOutput(BaseOutput):
    """
    Args:
        y (`torch.Tensor` of shape `(batch, latent_codec_channels, H/s, W/s)`): the continuous latent code.
        z (`torch.Tensor` of shape `(batch, hyper_channels, H/4s, W/4s)`): the continuous hyper-latent.
    """

    y: torch.Tensor
    z: torch.Tensor


class SLIMCompressor(ModelMixin, ConfigMixin):
    r"""
    Latent analysis (``g_a``) and hyper analysis (``h_a``) of SLIM's ELIC-style compressor.

    Input is a Stable Diffusion latent already multiplied by the VAE scaling factor.

    Parameters:
        latent_channels (`int`, defaults to 4): channels of the diffusion latent.
        hidden_channels (`int`, defaults to 128): width of the residual analysis transform.
        latent_codec_channels (`int`, defaults to 320): channels of the coded latent ``y`` (M).
        hyper_channels (`int`, defaults to 192): channels of the hyper-latent ``z`` (N).
        num_downsamples (`int`, defaults to 2): stride-2 stages of ``g_a`` (stride 4 on the latent).
        num_res_blocks (`int`, defaults to 1): residual bottleneck blocks before each downsampling.
        num_rate_levels (`int`, defaults to 0): ``0`` codes at the one rate the model was trained for; ``L ≥ 2``
            makes a variable-rate codec whose gain vectors (:class:`~slim_diffusers.models.rate_gains.RateGains`)
            scale ``y`` before quantisation at one of ``L`` trained levels or between them (``rate`` in ``forward``).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        hidden_channels: int = 128,
        latent_codec_channels: int = 320,
        hyper_channels: int = 192,
        num_downsamples: int = 2,
        num_res_blocks: int = 1,
        num_rate_levels: int = 0,
    ):
        super().__init__()
        self.g_a = analysis_transform(
            latent_channels, hidden_channels, latent_codec_channels, num_downsamples, num_res_blocks
        )
        self.h_a = nn.Sequential(
            conv3x3(latent_codec_channels, hyper_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hyper_channels, hyper_channels, kernel_size=5, stride=2, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(hyper_channels, hyper_channels, kernel_size=5, stride=2, padding=2),
        )
        # only variable-rate models have gains: a fixed-rate model's weights and checkpoints are what they were
        self.rate_gains = RateGains(num_rate_levels, latent_codec_channels) if num_rate_levels else None

    @property
    def num_rate_levels(self) -> int:
        """Trained rate levels (0: a fixed-rate model)."""
        return int(self.config.get("num_rate_levels", 0) or 0)

    def forward(self, latents: torch.Tensor, rate: Optional[Union[float, torch.Tensor]] = None, return_dict: bool = True):
        """``y`` and ``z`` of the latents; a variable-rate model needs ``rate`` (a level in ``[0, L − 1]``, or one
        per item), a fixed-rate model takes none. The hyper analysis sees the gained ``y``."""
        y = self.g_a(latents)
        if self.rate_gains is not None:
            if rate is None:
                raise ValueError(f"this is a variable-rate compressor ({self.num_rate_levels} levels): pass a rate")
            y = y * self.rate_gains(rate, batch=y.shape[0]).to(y.dtype)
        elif rate is not None:
            raise ValueError("this compressor codes at one rate (trained for one λr); a rate needs a variable-rate model")
        z = self.h_a(y)
        if not return_dict:
            return (y, z)
        return SLIMCompressorOutput(y=y, z=z)


# model_index.json records where a component's class lives; recording the package (not this file) keeps
# saved pipelines loadable when the code moves. diffusers then finds the class and its base classes
# (ModelMixin, ...) as attributes of `slim_diffusers`.
SLIMCompressor.__module__ = "slim_diffusers"
