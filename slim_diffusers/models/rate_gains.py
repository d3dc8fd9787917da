"""Rate levels of a variable-rate SLIM codec: channel-wise gains on ``y`` (Cui et al., "Asymmetric Gained Deep
Image Compression With Continuous Rate Adaptation", CVPR 2021).

One model codes at ``L`` trained rate levels. The compressor multiplies ``y`` by the gain vector of the chosen
level before quantisation (a larger gain: finer quantisation, more bits); the decompressor multiplies the
quantised ``ŷ`` by that level's inverse-gain vector before the synthesis transform. The entropy model, the hyper
transforms and the control module are shared by every level: the hyper analysis sees the gained ``y``, so the
hyperprior adapts its scales to the level, and one set of CDF tables (and one exact integer entropy model) serves
every rate.

A *rate* is a level number ``r`` in ``[0, L − 1]``; ``0`` gives the fewest bits. A fractional rate ``i + t``
interpolates exponentially between levels ``i`` and ``i + 1``, ``g = g_i^(1−t) · g_(i+1)^t``, for the gains and the
inverse gains alike, which Cui et al. show gives rates between the trained ones. Gains are stored as their
logarithms, so that exponential interpolation is linear and a gain stays positive through training.
"""

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

# A rate travels in the .slim header in units of 1/RATE_STEPS of a level: the continuous knob is quantised to it
# before coding, so that the sender and the receiver use the same gains.
from ..coding.bitstream import RATE_STEPS

MAX_LEVELS = 256  # the .slim rate field holds levels 0 … 255.9375


def quantize_rate(rate: float) -> float:
    """The nearest rate a ``.slim`` file can carry (a multiple of ``1 / RATE_STEPS``)."""
    return round(float(rate) * RATE_STEPS) / RATE_STEPS


class RateGains(nn.Module):
    """``L`` channel-wise gain vectors and their exponential interpolation (see the module docstring).

    Args:
        num_levels: trained rate levels ``L`` (at least 2).
        channels: channels of ``y`` (M).
        log_step: initial spacing of the levels' log-gains: level ``l`` starts at gain ``exp(log_step · (l − L + 1))``
            (the highest level at gain 1). Half the log-ratio of successive rate weights λr is what high-rate
            quantisation theory asks for; ``ln(2) / 2`` matches λs spaced by a factor of 2.
        inverse: initialise as the inverse gains (``exp(−log_step · (l − L + 1))``).
    """

    def __init__(self, num_levels: int, channels: int, log_step: float = math.log(2) / 2, inverse: bool = False):
        super().__init__()
        if not 2 <= num_levels <= MAX_LEVELS:
            raise ValueError(f"a variable-rate codec has 2 to {MAX_LEVELS} rate levels, got {num_levels}")
        levels = torch.arange(num_levels, dtype=torch.float32) - (num_levels - 1)
        log_gains = (-1 if inverse else 1) * log_step * levels
        self.log_gains = nn.Parameter(log_gains[:, None].repeat(1, channels).contiguous())

    @property
    def num_levels(self) -> int:
        return self.log_gains.shape[0]

    def check_rate(self, rate: Union[float, torch.Tensor]) -> None:
        values = rate if isinstance(rate, torch.Tensor) else torch.tensor([float(rate)])
        if values.numel() and (not torch.isfinite(values).all() or values.min() < 0 or values.max() > self.num_levels - 1):
            raise ValueError(f"rate must be in [0, {self.num_levels - 1}] (this model's levels), got {rate}")

    def forward(self, rate: Union[float, torch.Tensor], batch: Optional[int] = None) -> torch.Tensor:
        """The gains for ``rate`` (a number, or one rate per item), shaped ``(B, C, 1, 1)`` to multiply ``y``."""
        self.check_rate(rate)
        # float32 holds every rate the header can carry (multiples of 1/16 below 256) exactly
        rate = torch.as_tensor(rate, dtype=torch.float32).reshape(-1).to(self.log_gains.device)
        if batch is not None and rate.numel() == 1:
            rate = rate.expand(batch)
        low = rate.floor().clamp(max=self.num_levels - 2).long()
        t = (rate - low).to(self.log_gains.dtype)[:, None]
        log_gains = self.log_gains[low] * (1 - t) + self.log_gains[low + 1] * t
        return torch.exp(log_gains)[:, :, None, None]


def level_lambdas(lambdas: Sequence[float]) -> list:
    """Rate weights λr ordered by level: level 0 (the fewest bits) gets the largest λr."""
    values = [float(v) for v in lambdas]
    if len(set(values)) != len(values) or any(v <= 0 for v in values):
        raise ValueError(f"the rate levels' λr must be positive and distinct, got {values}")
    if len(values) > MAX_LEVELS:
        raise ValueError(f"at most {MAX_LEVELS} rate levels, got {len(values)}")
    return sorted(values, reverse=True)


def initial_log_step(lambdas: Sequence[float]) -> float:
    """The gain spacing :class:`RateGains` starts from for these λr (half the mean log-ratio of neighbours)."""
    ordered = level_lambdas(lambdas)
    return 0.5 * math.log(ordered[0] / ordered[-1]) / (len(ordered) - 1)
