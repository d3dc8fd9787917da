"""Rate control: the rate at which a file fits a size, found by measuring files (never from a rate estimate).

A variable-rate model codes at any rate on a grid of ``1 / RATE_STEPS`` of a level, the steps the ``.slim`` header
carries: ``top + 1`` grid points ``0 … top`` with ``top = RATE_STEPS · (L − 1)``. The search here sees the codec only
as ``size(u)``, the bytes of the whole file at grid point ``u`` (header, caption, payload and CRC), and counts
every file it has measured, so the VAE and the caption are computed once by the caller and only the codec re-runs.

Bytes grow with the rate on the whole, but nothing makes them monotone: the gains of a fractional rate are
interpolated, the hyperprior sees the gained ``y`` and rANS payloads grow in whole words. So the search
(:func:`highest_fitting_rate`) does not assume it:

1. the highest rate ``top``: if its file fits, it is the answer (one encode, for generous targets);
2. rate ``0``: if its file fits, bisection on the grid keeps ``lo`` (fits) below ``hi`` (does not fit) until
   ``hi = lo + 1``, then measures the ``window`` grid points above ``hi``; one of them fitting means the bytes dipped,
   and the bisection goes on from the highest of them (towards ``top``, known not to fit);
3. rate ``0`` too large: every grid point is measured, highest first, until one fits; when none does,
   :class:`~slim_diffusers.SLIMTargetSizeError` gives the smallest size measured, over the whole grid.

What this guarantees, whatever the bytes do: the file returned fits (it was measured); a file is returned whenever
any grid point gives one that fits (step 3 measures all of them before it gives up); and no grid point from the
chosen rate's next one up to ``window + 1`` steps above it fits. When bytes do not decrease with the rate, the
chosen rate is therefore the highest that fits; ``exhaustive=True`` makes that hold in every case, by measuring the
whole grid (``top + 1`` encodes instead of about ``3 + log2(top) + window``). benchmarks/rate_control.py measures
both on the bundled model and on a 512² codec.

:func:`allocate_mean_rate` spends a batch's budget of mean bits per pixel. A rate level is a trained trade-off
(one rate weight λr), so one common rate puts every image at (nearly) the same slope of its own rate–distortion
curve, which is the condition for the least total distortion at a given total rate: the largest common rate whose
mean fits is found with the same search, on the batch's mean, and the budget left is spent raising single images
one grid step, the cheapest first. Images that need many bytes at that slope get them, images that need few give
them up.
"""

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Dict, List, Sequence

from ..errors import SLIMTargetSizeError
from .bitstream import RATE_STEPS

# Grid points measured above the bisection's boundary: a dip in bytes this close above it is found and used. The
# bundled model's bytes dip by up to four grid steps (plain_star: 47 bytes at rates 5/16 … 8/16, 43 at 9/16 … 11/16);
# benchmarks/rate_control.py measures what a window of 4 misses on the exhaustive grid.
RATE_SEARCH_WINDOW = 4


@dataclass
class RateSearch:
    """The outcome of :func:`highest_fitting_rate` for one image.

    Args:
        units: the chosen rate, in grid points (``rate = units / RATE_STEPS``).
        sizes: the bytes of every file measured, by grid point (the number of encodes is ``len(sizes)``).
    """

    units: int
    sizes: Dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.units / RATE_STEPS

    @property
    def size(self) -> int:
        return self.sizes[self.units]

    @property
    def encodes(self) -> int:
        return len(self.sizes)


class _Memo:
    """``size(u)`` measured once per grid point."""

    def __init__(self, size: Callable[[int], float]):
        self.size, self.values = size, {}

    def __call__(self, units: int) -> float:
        if units not in self.values:
            self.values[units] = self.size(units)
        return self.values[units]


def _highest_fitting(cost: _Memo, top: int, budget: float, window: int, exhaustive: bool):
    """The chosen grid point (module docstring) for ``cost(u) ≤ budget``, or ``None`` when no grid point fits."""
    if exhaustive:
        fitting = [u for u in range(top + 1) if cost(u) <= budget]
        return max(fitting) if fitting else None
    if cost(top) <= budget:
        return top
    if cost(0) > budget:
        for u in range(top - 1, 0, -1):  # bytes are not monotone: a higher rate may still fit
            if cost(u) <= budget:
                return u
        return None
    lo, hi = 0, top  # invariant: cost(lo) fits, cost(hi) does not
    while True:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost(mid) <= budget:
                lo = mid
            else:
                hi = mid
        above = [u for u in range(hi + 1, min(hi + window, top - 1) + 1) if cost(u) <= budget]
        if not above:
            return lo
        lo, hi = max(above), top


def highest_fitting_rate(size: Callable[[int], int], top: int, max_bytes: int,
                         window: int = RATE_SEARCH_WINDOW, exhaustive: bool = False) -> RateSearch:
    """The highest grid point whose file fits ``max_bytes`` (see the module docstring for the search and what it
    guarantees). ``size(u)``: the bytes of the file at grid point ``u`` in ``0 … top``.

    Raises :class:`~slim_diffusers.SLIMTargetSizeError` when no grid point fits, with the smallest size reachable."""
    if top < 0 or window < 0:
        raise ValueError(f"top and window must be ≥ 0, got {top} and {window}")
    memo = _Memo(size)
    units = _highest_fitting(memo, top, max_bytes, window, exhaustive)
    sizes = {u: int(b) for u, b in memo.values.items()}
    if units is None:
        smallest = min(sizes.values())
        raise SLIMTargetSizeError(
            f"no rate fits {max_bytes} bytes: the smallest file this model writes for the image is {smallest} bytes "
            f"(rate {min(sizes, key=lambda u: (sizes[u], -u)) / RATE_STEPS:g}); ask for at least that much",
            smallest=smallest,
        )
    return RateSearch(units, sizes)


def allocate_mean_rate(sizes: Sequence[Callable[[int], int]], pixels: Sequence[int], top: int, target_bpp: float,
                       window: int = RATE_SEARCH_WINDOW, exhaustive: bool = False) -> List[RateSearch]:
    """Grid points for a batch whose mean bits per pixel (over the images, from the files' bytes) is at most
    ``target_bpp``: the highest common rate whose mean fits, then single images raised one grid step, the cheapest
    first, while the budget lasts (module docstring). ``sizes[i](u)``: the bytes of image ``i``'s file at ``u``;
    ``pixels[i]``: its pixels.

    When even rate 0 for all does not fit, every image takes the grid point of its smallest file (each image's
    grid is measured), which fits whenever any choice does; otherwise
    :class:`~slim_diffusers.SLIMTargetSizeError` gives the smallest mean reachable."""
    if len(sizes) != len(pixels) or not sizes:
        raise ValueError(f"one size function per image: got {len(sizes)} for {len(pixels)} images")
    memos = [_Memo(s) for s in sizes]
    # exact arithmetic: the sum of the files' bpp against n × target, a mean without rounding
    weights = [Fraction(8, int(p)) for p in pixels]
    budget = len(sizes) * Fraction(target_bpp)

    def total(units: int) -> float:
        return sum(w * m(units) for w, m in zip(weights, memos))

    common = _highest_fitting(_Memo(total), top, budget, window, exhaustive)
    if common is None:
        chosen = [min(range(top + 1), key=lambda u, m=m: (m(u), -u)) for m in memos]
        spent = sum(w * m(u) for w, m, u in zip(weights, memos, chosen))
        if spent > budget:
            raise SLIMTargetSizeError(
                f"no rates give a mean of {target_bpp:g} bpp over these {len(sizes)} images: the smallest mean this "
                f"model reaches is {float(spent) / len(sizes):.6g} bpp; ask for at least that much",
                smallest=float(spent) / len(sizes),
            )
    else:
        chosen = [common] * len(sizes)
        spent = total(common)
        if common < top:
            steps = sorted(range(len(sizes)), key=lambda i: weights[i] * (memos[i](common + 1) - memos[i](common)))
            for i in steps:
                extra = weights[i] * (memos[i](common + 1) - memos[i](common))
                if spent + extra <= budget:
                    chosen[i], spent = common + 1, spent + extra
    return [RateSearch(u, {k: int(v) for k, v in m.values.items()}) for u, m in zip(chosen, memos)]
