"""Bjøntegaard deltas between two rate–quality curves (VCEG-M33), here rate–accuracy curves.

The "quality" axis is whatever the curves measure. For SLIM it is classification accuracy **in percent**
(top-1 or top-5 of a classifier on the decoded images), so :func:`bd_accuracy` returns percentage
points; with PSNR in dB it is the classic BD-PSNR. The rate axis is bits per pixel (any positive unit
works: only ratios of rates enter).

Two interpolations are offered, because they disagree on awkward curves and both are in use:

- ``"cubic"``: the original VCEG-M33 method, a least-squares cubic polynomial of log-rate against
  quality (exact interpolation with four points; degree ``n − 1`` with fewer), integrated over the
  interval where the two curves overlap.
- ``"pchip"``: piecewise cubic Hermite interpolation (``scipy.interpolate.PchipInterpolator``), as in the
  JCT-VC/JVET common-test-conditions spreadsheets. It never overshoots between points, so it is the
  default.

BD-rate is the average horizontal gap between the curves in log-rate, as a percentage:
``-50`` means the test codec needs half the bits of the anchor for the same accuracy.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

METHODS = ("pchip", "cubic")


class BDRateError(ValueError):
    """Two curves cannot be compared: too few points, non-monotonic, or no overlapping range.

    ``curve`` is ``"anchor"`` or ``"test"`` when one curve is at fault (``None`` when it is the pair), and
    ``reason`` the message without the curve's name, for reports that name curves their own way.
    """

    def __init__(self, reason: str, curve: Optional[str] = None):
        super().__init__(f"the {curve} curve {reason}" if curve else reason)
        self.reason, self.curve = reason, curve


def _curve(rate: Sequence[float], quality: Sequence[float], which: str) -> Tuple[np.ndarray, np.ndarray]:
    """Points sorted by rate, as (log10 rate, quality)."""
    r = np.asarray(rate, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if r.ndim != 1 or r.shape != q.shape:
        raise BDRateError(f"needs one quality per rate, got shapes {r.shape} and {q.shape}", which)
    if r.size < 2:
        raise BDRateError(f"has {r.size} point(s); a Bjøntegaard delta needs at least 2 per curve", which)
    if not (np.isfinite(r).all() and np.isfinite(q).all()) or (r <= 0).any():
        raise BDRateError("has a non-finite value or a rate ≤ 0", which)
    order = np.argsort(r, kind="stable")
    r, q = r[order], q[order]
    if (np.diff(r) <= 0).any():
        raise BDRateError("has two points at the same rate; merge them first", which)
    return np.log10(r), q


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str) -> float:
    """∫ y(x) dx over [lo, hi] for the curve through (x, y), x strictly increasing."""
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator

        return float(PchipInterpolator(x, y).integrate(lo, hi))
    if method == "cubic":
        # Polynomial.fit works on a scaled domain, which keeps the fit well conditioned for any units
        fit = np.polynomial.Polynomial.fit(x, y, deg=min(3, x.size - 1))
        primitive = fit.integ()
        return float(primitive(hi) - primitive(lo))
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _overlap(a: np.ndarray, b: np.ndarray, axis: str) -> Tuple[float, float]:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    if lo >= hi:
        raise BDRateError(f"the two curves do not overlap in {axis}, so they cannot be compared")
    return float(lo), float(hi)


def bd_rate(
    rate_anchor: Sequence[float],
    quality_anchor: Sequence[float],
    rate_test: Sequence[float],
    quality_test: Sequence[float],
    method: str = "pchip",
) -> float:
    """Average rate difference (%) of ``test`` against ``anchor`` at equal quality; negative = fewer bits.

    Each curve must gain quality strictly with rate (its points are sorted by rate first): log-rate is
    interpolated as a function of quality, which is only defined on a monotonic curve.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    curves = []
    for which, (r, q) in (("anchor", (rate_anchor, quality_anchor)), ("test", (rate_test, quality_test))):
        log_rate, quality = _curve(r, q, which)
        if (np.diff(quality) <= 0).any():
            raise BDRateError(
                f"does not gain quality strictly with rate ({np.round(quality, 3).tolist()} at increasing rates); "
                "BD-rate needs monotonic curves, BD-accuracy does not",
                which,
            )
        curves.append((quality, log_rate))
    (qa, la), (qt, lt) = curves
    lo, hi = _overlap(qa, qt, "quality")
    mean_gap = (_integral(qt, lt, lo, hi, method) - _integral(qa, la, lo, hi, method)) / (hi - lo)
    return float((10.0**mean_gap - 1.0) * 100.0)


def bd_accuracy(
    rate_anchor: Sequence[float],
    quality_anchor: Sequence[float],
    rate_test: Sequence[float],
    quality_test: Sequence[float],
    method: str = "pchip",
) -> float:
    """Average quality difference of ``test`` over ``anchor`` at equal rate (percentage points for accuracy
    in percent, dB for PSNR); positive = the test codec is better.

    Quality is interpolated as a function of log-rate, so the curves need distinct rates but not monotonic
    quality: noisy accuracy curves still have a BD-accuracy when they have no BD-rate.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    la, qa = _curve(rate_anchor, quality_anchor, "anchor")
    lt, qt = _curve(rate_test, quality_test, "test")
    lo, hi = _overlap(la, lt, "rate")
    return float((_integral(lt, qt, lo, hi, method) - _integral(la, qa, lo, hi, method)) / (hi - lo))
