"""Statistics a reviewer accepts: 95 % intervals on every accuracy, bootstrap intervals on Bjøntegaard deltas, and
the per-image rows committed so that anyone can recompute both.

- :func:`accuracy_interval` — Wilson score interval of one accuracy (percent)
- :func:`summarize_with_intervals` — :func:`.report.summarize` plus ``top1_ci``/``top5_ci`` and ``bpp_ci``
- :func:`bootstrap_bd` — paired bootstrap over images of BD-rate and BD-accuracy, both interpolations
- :func:`bd_table_with_intervals` — that bootstrap as a markdown table
- :func:`plot_rate_accuracy_bands` — rate–accuracy curves with 95 % bands, one panel per classifier
- :func:`write_rows_gz` / :func:`read_rows_gz` — the harness rows as deterministic gzipped JSON lines

Every interval assumes that the images are independent draws from the test distribution; the rate points of one
image are not independent of each other (same image), which is why the bootstrap resamples images, not rows.
"""

import gzip
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .bd_rate import METHODS
from .errors import RowsFileError
from .harness import DEFAULT_SEED
from .report import METRICS, Summary, _correct, _short, bd_rates, summarize

DELTAS = ("bd_rate", "bd_accuracy")


class UnpairedRowsError(ValueError):
    """The rows do not hold the same images for every (codec, rate point), so a paired bootstrap cannot pair them."""


# --------------------------------------------------------------------------------------------------------------
# Intervals of one rate point
# --------------------------------------------------------------------------------------------------------------


def _normal_quantile(confidence: float) -> float:
    from statistics import NormalDist  # the standard library's, not this module

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def accuracy_interval(correct: int, n: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval (percent) of an accuracy of ``correct`` out of ``n`` images.

    Wilson, not the textbook normal ("Wald") interval ``p ± z·sqrt(p(1-p)/n)``: toy-world accuracies sit near 0 % and
    100 %, where Wald collapses to a zero-width interval at 0/n and n/n and undercovers next to them. Wilson inverts
    the score test instead, so it stays inside [0, 100], is never empty, and keeps close to its nominal coverage for
    every accuracy and ``n`` (Brown, Cai & DasGupta 2001; Newcombe 1998). Clopper–Pearson would overcover.
    """
    correct, n = int(correct), int(n)
    if n <= 0:
        raise ValueError(f"an accuracy interval needs at least one image, got n={n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be between 0 and n={n}, got {correct}")
    z = _normal_quantile(confidence)
    p, z2 = correct / n, z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    # at 0/n and n/n one end is exactly 0 or 1; say so instead of leaving a rounding error there
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return 100.0 * low, 100.0 * high


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Optional[Tuple[float, float]]:
    """Student-t interval of the mean of ``values``; ``None`` with fewer than two values.

    Used for the mean bits per pixel: per-image bpp is skewed, but the mean of hundreds of images is close to normal,
    and the t-interval is deterministic (no seed) and exact to compute, unlike a bootstrap of each rate point.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2.0, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    mean = float(x.mean())
    return mean - half, mean + half


def summarize_with_intervals(rows: Sequence[dict], classifiers: Sequence[str], confidence: float = 0.95) -> Summary:
    """:func:`.report.summarize` with intervals: per entry, ``top1_ci`` and ``top5_ci`` (``{classifier: [low, high]}``,
    Wilson, percent; with several decoding seeds per image, :func:`.report.seed_interval` instead), ``bpp_ci`` (``[low, high]``, Student-t interval of the mean bpp; ``None`` for one image) and
    ``confidence``. The point values are :func:`.report.summarize`'s, unchanged."""
    summary = summarize(rows, classifiers, confidence)
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for row in rows:
        groups.setdefault((row["codec"], str(row["rate_point"])), []).append(row)
    for (codec, point), items in groups.items():
        entry = summary[codec][point]
        if "seeds" in entry:  # several decodes per image: the bootstrap over images of their seed means
            entry["top1_ci"], entry["top5_ci"] = dict(entry["top1_seed_ci"]), dict(entry["top5_seed_ci"])
            first = {int(r["index"]): r["bpp"] for r in items}
            bpp_ci = mean_interval(list(first.values()), confidence)
            entry["bpp_ci"] = list(bpp_ci) if bpp_ci is not None else None
            entry["confidence"] = confidence
            continue
        n = len(items)
        entry["top1_ci"], entry["top5_ci"] = {}, {}
        for clf in classifiers:
            top1 = sum(r["top5"][clf][0] == r["label"] for r in items)
            top5 = sum(r["label"] in r["top5"][clf] for r in items)
            entry["top1_ci"][clf] = list(accuracy_interval(top1, n, confidence))
            entry["top5_ci"][clf] = list(accuracy_interval(top5, n, confidence))
        bpp_ci = mean_interval([r["bpp"] for r in items], confidence)
        entry["bpp_ci"] = list(bpp_ci) if bpp_ci is not None else None
        entry["confidence"] = confidence
    return summary


# --------------------------------------------------------------------------------------------------------------
# Batched Bjøntegaard integrals: the arithmetic of .bd_rate on many curves at once
# --------------------------------------------------------------------------------------------------------------
# bd_rate.py is the definition; these repeat its two interpolations on arrays of curves (one row per bootstrap
# replicate) because a loop of scalar calls costs ~1.4 ms per (replicate, codec, classifier), half a minute for a
# typical table. tests/evaluation/test_statistics.py checks that they agree with bd_rate.py replicate by replicate.


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots of the monotone piecewise cubic Hermite interpolant (Fritsch–Carlson, with the
    one-sided three-point end slopes of Moler's pchiptx), as scipy's ``PchipInterpolator``; rows are curves."""
    h = np.diff(x, axis=1)
    m = np.diff(y, axis=1) / h
    if x.shape[1] == 2:
        return np.concatenate([m, m], axis=1)  # two points: a straight line
    flat = (np.sign(m[:, 1:]) != np.sign(m[:, :-1])) | (m[:, 1:] == 0) | (m[:, :-1] == 0)
    w1, w2 = 2 * h[:, 1:] + h[:, :-1], h[:, 1:] + 2 * h[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = np.where(flat, 0.0, (w1 + w2) / (w1 / m[:, :-1] + w2 / m[:, 1:]))

    def end(h0, h1, m0, m1):
        d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        wrong_sign = np.sign(d) != np.sign(m0)
        overshoot = ~wrong_sign & (np.sign(m0) != np.sign(m1)) & (np.abs(d) > 3 * np.abs(m0))
        return np.where(wrong_sign, 0.0, np.where(overshoot, 3 * m0, d))

    first = end(h[:, 0], h[:, 1], m[:, 0], m[:, 1])
    last = end(h[:, -1], h[:, -2], m[:, -1], m[:, -2])
    return np.concatenate([first[:, None], inner, last[:, None]], axis=1)


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """∫ pchip(x, y) over [lo, hi] per row; x strictly increasing, [lo, hi] inside [x₀, x₋₁]."""
    h = np.diff(x, axis=1)
    d = _pchip_slopes(x, y)
    # a whole segment of the Hermite cubic integrates to h·((y₀ + y₁)/2 + h·(d₀ − d₁)/12)
    segment = h * ((y[:, :-1] + y[:, 1:]) / 2 + h * (d[:, :-1] - d[:, 1:]) / 12)
    before = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(segment, axis=1)], axis=1)
    rows = np.arange(x.shape[0])

    def primitive(v):
        j = np.clip((x <= v[:, None]).sum(axis=1) - 1, 0, x.shape[1] - 2)
        hj = h[rows, j]
        s = (v - x[rows, j]) / hj
        s2, s3, s4 = s * s, s * s * s, s * s * s * s
        part = (y[rows, j] * (s - s3 + s4 / 2) + hj * d[rows, j] * (s2 / 2 - 2 * s3 / 3 + s4 / 4)
                + y[rows, j + 1] * (s3 - s4 / 2) + hj * d[rows, j + 1] * (s4 / 4 - s3 / 3))
        return before[rows, j] + hj * part

    return primitive(hi) - primitive(lo)


def _cubic_integral(x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """∫ over [lo, hi] of the least-squares polynomial of degree min(3, k − 1) through the k points of each row,
    fitted on x mapped to [−1, 1] as ``numpy.polynomial.Polynomial.fit`` does (VCEG-M33)."""
    degree = min(3, x.shape[1] - 1)
    x_min, x_max = x[:, :1], x[:, -1:]
    scale = 2.0 / (x_max - x_min)
    u = (x - x_min) * scale - 1.0
    vandermonde = u[:, :, None] ** np.arange(degree + 1)
    coef = np.einsum("rij,rj->ri", np.linalg.pinv(vandermonde), y)  # least squares, exact with k ≤ 4 points
    powers = np.arange(1, degree + 2)

    def primitive(v):
        uv = (v[:, None] - x_min) * scale - 1.0
        return (coef * uv**powers / powers).sum(axis=1)

    return (primitive(hi) - primitive(lo)) / scale[:, 0]


_INTEGRALS = {"pchip": _pchip_integral, "cubic": _cubic_integral}


def _integral(x: np.ndarray, y: np.ndarray, n: np.ndarray, lo: np.ndarray, hi: np.ndarray, method: str) -> np.ndarray:
    """Integrals of curves stored left-aligned in padded rows, ``n[i]`` (≥ 2) points in row ``i``."""
    out = np.empty(x.shape[0])
    for k in np.unique(n):
        sel = n == k
        out[sel] = _INTEGRALS[method](x[sel, :k], y[sel, :k], lo[sel], hi[sel])
    return out


def _curves(bpp: np.ndarray, accuracy: np.ndarray, envelope: bool) -> dict:
    """Each row's rate–accuracy points sorted by rate (ties by accuracy, as :func:`.report.monotone_envelope`),
    reduced to the monotone envelope if asked and left-aligned; what :func:`.bd_rate._curve` would accept."""
    order = np.lexsort((accuracy, bpp), axis=-1)
    bpp, accuracy = np.take_along_axis(bpp, order, 1), np.take_along_axis(accuracy, order, 1)
    if envelope:
        best_before = np.concatenate([np.full((bpp.shape[0], 1), -np.inf),
                                      np.maximum.accumulate(accuracy, axis=1)[:, :-1]], axis=1)
        keep = accuracy > best_before
        first_kept = np.argsort(~keep, axis=1, kind="stable")
        bpp, accuracy = np.take_along_axis(bpp, first_kept, 1), np.take_along_axis(accuracy, first_kept, 1)
        n = keep.sum(axis=1)
    else:
        n = np.full(bpp.shape[0], bpp.shape[1])
    inside = np.arange(bpp.shape[1]) < n[:, None]
    pairs = inside[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_rate = np.where(inside, np.log10(np.where(bpp > 0, bpp, np.nan)), np.nan)
    accuracy = np.where(inside, accuracy, np.nan)
    finite = np.all(~inside | (np.isfinite(log_rate) & np.isfinite(accuracy)), axis=1)
    distinct_rates = np.all(~pairs | (np.diff(log_rate, axis=1) > 0), axis=1)
    rising = np.all(~pairs | (np.diff(accuracy, axis=1) > 0), axis=1)
    last = np.maximum(n - 1, 0)[:, None]
    return {
        "log_rate": log_rate, "accuracy": accuracy, "n": n,
        "valid": (n >= 2) & finite & distinct_rates,  # BD-accuracy's conditions
        "rising": rising,  # and BD-rate's
        "rate_range": (log_rate[:, 0], np.take_along_axis(log_rate, last, 1)[:, 0]),
        "accuracy_range": (accuracy[:, 0], np.take_along_axis(accuracy, last, 1)[:, 0]),
    }


def _bd_batch(anchor: dict, test: dict, method: str) -> Dict[str, np.ndarray]:
    """BD-rate (%) and BD-accuracy (points) of ``test`` against ``anchor`` for every row; NaN where
    :func:`.bd_rate.bd_rate` / :func:`.bd_rate.bd_accuracy` would raise :class:`.bd_rate.BDRateError`."""
    out = {}
    both = anchor["valid"] & test["valid"]
    for delta in DELTAS:
        if delta == "bd_rate":  # log-rate as a function of accuracy, over the accuracies both curves reach
            x_key, y_key, range_key = "accuracy", "log_rate", "accuracy_range"
            ok = both & anchor["rising"] & test["rising"]
        else:  # accuracy as a function of log-rate, over the rates both curves span
            x_key, y_key, range_key = "log_rate", "accuracy", "rate_range"
            ok = both
        lo = np.maximum(anchor[range_key][0], test[range_key][0])
        hi = np.minimum(anchor[range_key][1], test[range_key][1])
        with np.errstate(invalid="ignore"):
            ok = ok & (lo < hi)
        value = np.full(ok.shape, np.nan)
        if ok.any():
            gap = [_integral(c[x_key][ok], c[y_key][ok], c["n"][ok], lo[ok], hi[ok], method) for c in (test, anchor)]
            mean_gap = (gap[0] - gap[1]) / (hi[ok] - lo[ok])
            value[ok] = (10.0**mean_gap - 1.0) * 100.0 if delta == "bd_rate" else mean_gap
        out[delta] = value
    return out


# --------------------------------------------------------------------------------------------------------------
# Paired bootstrap over images
# --------------------------------------------------------------------------------------------------------------


def _paired_arrays(rows: Sequence[dict], codecs: Sequence[str], classifiers: Sequence[str], metric: str):
    """``images`` (sorted indices), ``cells`` ([(codec, rate point)]), ``bpp`` (images × cells) and ``correct``
    (classifier → images × cells, 0/1) for the given codecs; every cell must hold the same images once."""
    by_cell: Dict[Tuple[str, str], Dict[int, dict]] = {}
    wanted = set(codecs)
    for row in rows:
        if row["codec"] not in wanted:
            continue
        cell = by_cell.setdefault((row["codec"], str(row["rate_point"])), {})
        index = int(row["index"])
        decodes = cell.setdefault(index, {})
        seed = int(row.get("seed", DEFAULT_SEED))
        if seed in decodes:
            raise UnpairedRowsError(
                f"{row['codec']} at {row['rate_point']} has two rows for image {index} (seed {seed}); keep one per "
                "image and seed (harness.latest_rows does)"
            )
        decodes[seed] = row
    missing = [c for c in codecs if not any(key[0] == c for key in by_cell)]
    if missing:
        raise UnpairedRowsError(f"no rows for codec(s) {missing}; evaluated: {sorted({k[0] for k in by_cell})}")
    cells = sorted(by_cell, key=lambda key: list(codecs).index(key[0]))  # codecs in the order given
    images = sorted(by_cell[cells[0]])
    for key in cells[1:]:
        if set(by_cell[key]) != set(images):
            lacking = sorted(set(images) ^ set(by_cell[key]))
            raise UnpairedRowsError(
                f"{key[0]} at {key[1]} and {cells[0][0]} at {cells[0][1]} differ in images {lacking[:10]}"
                f"{' …' if len(lacking) > 10 else ''}; finish the run (it resumes) or leave the codec out with "
                "codecs=[...]"
            )
    # an image decoded under several seeds counts once, with its accuracy averaged over them
    table = [[list(by_cell[key][i].values()) for key in cells] for i in images]
    bpp = np.array([[decodes[0]["bpp"] for decodes in line] for line in table], dtype=np.float64)
    correct = {}
    for clf in classifiers:
        try:
            correct[clf] = np.array([[np.mean([_correct(r, clf, metric) for r in decodes]) for decodes in line]
                                     for line in table], np.float64)
        except KeyError:
            raise UnpairedRowsError(f"some rows have no predictions of classifier {clf!r}") from None
    return images, cells, bpp, correct


def resample_indices(n_images: int, replicates: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The bootstrap's draws: per replicate, ``n_images`` positions drawn with replacement (positions into the sorted
    image indices). Replicate ``r`` is the ``r``-th draw of ``numpy.random.default_rng(seed)``, however the
    replicates are batched."""
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        yield rng.integers(0, n_images, size=n_images)


def _percentile_interval(values: np.ndarray, confidence: float) -> Tuple[Optional[float], Optional[float]]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None, None
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_bd(
    rows: Sequence[dict],
    classifiers: Sequence[str],
    anchor: str,
    codecs: Optional[Sequence[str]] = None,
    replicates: int = 1000,
    seed: int = 0,
    envelope: bool = True,
    metric: str = "top1",
    confidence: float = 0.95,
    return_replicates: bool = False,
) -> dict:
    """Paired percentile bootstrap over images of BD-rate and BD-accuracy against ``anchor``, both interpolations.

    Each replicate draws the images with replacement **once** and uses that draw for every codec and rate point, so
    the curves stay paired: an image that is hard for the anchor is hard for the test codec in the same replicate,
    and the interval measures the uncertainty of the *difference*, not of two independent curves. In each replicate
    every curve's (mean bpp, accuracy) points are recomputed, reduced to their :func:`.report.monotone_envelope` when
    ``envelope``, and compared as :func:`.report.bd_rates` would.

    Args:
        rows: harness rows, one per (codec, rate point, image); every compared (codec, rate point) must hold the
            same images (else :class:`UnpairedRowsError`).
        classifiers: classifier names, keys of each row's ``top5``.
        anchor: the reference codec.
        codecs: the codecs to compare with ``anchor`` (default: every other codec, in row order).
        replicates, seed: bootstrap size and the seed of ``numpy.random.default_rng``.
        envelope: compare monotone envelopes (as the report does) instead of every point.
        metric: ``"top1"`` or ``"top5"`` accuracy as the quality axis.
        confidence: of the percentile intervals.
        return_replicates: also return every replicate's values (``"replicate_values"``, arrays, NaN = not computable).

    Returns:
        ``{"anchor", "codecs", "classifiers", "metric", "envelope", "replicates", "seed", "confidence", "images",
        "deltas": {codec: {classifier: {method: {"bd_rate" | "bd_accuracy": cell}}}}}`` where a cell is
        ``{"estimate", "low", "high", "not_computable"}``: the estimate from all images (``None`` with the reason under
        ``"error"`` when the curves cannot be compared), the percentile interval over the replicates where the value
        exists, and the fraction of replicates where it does not (a resample made a curve non-monotonic or the curves
        stop overlapping). A large fraction means the interval describes only the lucky resamples.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if replicates < 1:
        raise ValueError(f"replicates must be ≥ 1, got {replicates}")
    order: List[str] = []
    for row in rows:
        if row["codec"] not in order:
            order.append(row["codec"])
    if anchor not in order:
        raise UnpairedRowsError(f"anchor codec {anchor!r} has no rows; evaluated: {order}")
    tests = [c for c in (order if codecs is None else codecs) if c != anchor]
    compared = [anchor, *tests]
    images, cells, bpp, correct = _paired_arrays(rows, compared, classifiers, metric)
    n_images = len(images)

    # the point estimate is the report's own, from all images
    summary = summarize([r for r in rows if r["codec"] in set(compared)], classifiers)
    estimate = bd_rates(summary, classifiers, anchor, metric, envelope) if tests else {}

    columns = {codec: [i for i, key in enumerate(cells) if key[0] == codec] for codec in compared}
    stacked = np.concatenate([bpp, *(100.0 * correct[clf] for clf in classifiers)], axis=1)  # images × (1 + K)·cells
    values = {c: {k: {m: {d: np.full(replicates, np.nan) for d in DELTAS} for m in METHODS} for k in classifiers}
              for c in tests}
    chunk = max(1, min(replicates, 4_000_000 // max(n_images, 1)))  # bounds the counts matrix to ~32 MB
    draws = resample_indices(n_images, replicates, seed)
    for start in range(0, replicates, chunk):
        stop = min(start + chunk, replicates)
        counts = np.zeros((stop - start, n_images))
        for r in range(stop - start):
            counts[r] = np.bincount(next(draws), minlength=n_images)
        means = counts @ stacked / n_images  # every (replicate, column) mean in one product
        rate, accuracy = means[:, : len(cells)], {}
        for j, clf in enumerate(classifiers):
            accuracy[clf] = means[:, (j + 1) * len(cells): (j + 2) * len(cells)]
        for clf in classifiers:
            curves = {c: _curves(rate[:, columns[c]], accuracy[clf][:, columns[c]], envelope) for c in compared}
            for codec in tests:
                for method in METHODS:
                    for delta, value in _bd_batch(curves[anchor], curves[codec], method).items():
                        values[codec][clf][method][delta][start:stop] = value

    deltas: dict = {}
    for codec in tests:
        for clf in classifiers:
            for method in METHODS:
                point = estimate[method][codec][clf]
                for delta in DELTAS:
                    v = values[codec][clf][method][delta]
                    low, high = _percentile_interval(v, confidence)
                    cell = {"estimate": point[delta], "low": low, "high": high,
                            "not_computable": float(np.mean(~np.isfinite(v)))}
                    if point[delta] is None:
                        cell["error"] = point[f"{delta}_error"]
                    deltas.setdefault(codec, {}).setdefault(clf, {}).setdefault(method, {})[delta] = cell
    result = {
        "anchor": anchor, "codecs": tests, "classifiers": list(classifiers), "metric": metric, "envelope": envelope,
        "replicates": replicates, "seed": seed, "confidence": confidence, "images": n_images, "deltas": deltas,
    }
    if return_replicates:
        result["replicate_values"] = values
    return result


def interval_text(cell: dict, digits: int = 1) -> str:
    """A :func:`bootstrap_bd` cell with an estimate as ``"+e [+low, +high]"`` (the interval left out where no replicate
    gave one)."""
    text = f"{cell['estimate']:+.{digits}f}"
    if cell["low"] is not None:
        text += f" [{cell['low']:+.{digits}f}, {cell['high']:+.{digits}f}]"
    return text


def bd_table_with_intervals(result: dict, codecs: Optional[Sequence[str]] = None,
                            classifiers: Optional[Sequence[str]] = None, digits: int = 1) -> str:
    """Markdown table of :func:`bootstrap_bd`: per codec and classifier, BD-rate with pchip and with the cubic
    polynomial, BD-accuracy (pchip), each with its bootstrap interval, and the fraction of replicates where each
    could not be computed. A value the full sample does not allow is "n/a" with a footnote."""
    codecs = list(result["codecs"] if codecs is None else codecs)
    classifiers = list(result["classifiers"] if classifiers is None else classifiers)
    level = f"{100 * result['confidence']:g} %"
    label = "top-1" if result["metric"] == "top1" else "top-5"
    notes: Dict[str, int] = {}

    def show(cell: dict) -> str:
        if cell["estimate"] is None:
            return f"n/a[^{notes.setdefault(cell['error'], len(notes) + 1)}]"
        return interval_text(cell, digits)

    lines = [
        f"# BD-rate against {result['anchor']}, with {level} bootstrap intervals",
        "",
        f"Quality axis: {label} accuracy (%). {result['images']} images; paired percentile bootstrap over images, "
        f"{result['replicates']} replicates (seed {result['seed']}): each replicate resamples the images once for "
        "every codec and rate point. BD-rate < 0: fewer bits than the anchor for the same accuracy; BD-accuracy > 0: "
        "more accuracy (percentage points) at the same rate."
        + (" Curves are compared on their monotone envelopes." if result["envelope"] else ""),
        "'not computable': the fraction of replicates where BD-rate (pchip / cubic) or BD-accuracy (pchip) does not "
        "exist (a resampled curve is not monotonic, or the curves do not overlap); the interval is over the others.",
        "",
        "| codec | classifier | BD-rate pchip (%) | BD-rate cubic (%) | BD-accuracy pchip (pt) | not computable |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for codec in codecs:
        for clf in classifiers:
            cell = result["deltas"][codec][clf]
            missing = " / ".join(f"{cell[m][d]['not_computable']:.1%}"
                                 for m, d in (("pchip", "bd_rate"), ("cubic", "bd_rate"), ("pchip", "bd_accuracy")))
            shown = [show(cell["pchip"]["bd_rate"]), show(cell["cubic"]["bd_rate"]), show(cell["pchip"]["bd_accuracy"])]
            lines.append(f"| {codec} | {_short(clf)} | " + " | ".join(shown) + f" | {missing} |")
    if notes:
        lines.append("")
        lines += [f"[^{number}]: {note}" for note, number in notes.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------------------


def plot_rate_accuracy_bands(
    summary_with_ci: Summary,
    classifiers: Sequence[str],
    path: os.PathLike,
    codecs: Optional[Sequence[str]] = None,
    styles: Optional[Dict[str, Dict[str, Any]]] = None,
    titles: Optional[Dict[str, str]] = None,
    metric: str = "top1",
) -> None:
    """One panel per classifier: each codec's rate–accuracy curve (log-scale bpp) with its interval band (Wilson,
    shaded) and the interval of the mean bpp (horizontal bars), from :func:`summarize_with_intervals`.

    ``styles`` maps a codec to matplotlib keyword arguments (``color``, ``marker``, ``linestyle``, ``label``) and
    ``titles`` a classifier to its panel title (say which classifier never saw the training data).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codecs = list(summary_with_ci if codecs is None else codecs)
    styles, titles = styles or {}, titles or {}
    palette = plt.get_cmap("tab10" if len(codecs) <= 10 else "tab20").colors
    markers = "osD^vP*Xhp<>"
    fig, axes = plt.subplots(1, len(classifiers), figsize=(5.5 * len(classifiers), 4.2), squeeze=False, sharey=True)
    for ax, clf in zip(axes[0], classifiers):
        for i, codec in enumerate(codecs):
            points = sorted(summary_with_ci[codec].values(), key=lambda p: p["mean_bpp"])
            bpp = np.array([p["mean_bpp"] for p in points])
            acc = np.array([p[metric][clf] for p in points])
            band = np.array([p[f"{metric}_ci"][clf] for p in points])
            style = {"color": palette[i % len(palette)], "marker": markers[i % len(markers)], "label": codec,
                     "linewidth": 1.4, "markersize": 4, **styles.get(codec, {})}
            (line,) = ax.plot(bpp, acc, **style)
            ax.fill_between(bpp, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.18, linewidth=0)
            if all(p.get("bpp_ci") for p in points):
                bpp_ci = np.array([p["bpp_ci"] for p in points])
                ax.errorbar(bpp, acc, xerr=np.stack([bpp - bpp_ci[:, 0], bpp_ci[:, 1] - bpp]), fmt="none",
                            ecolor=line.get_color(), elinewidth=0.8, capsize=0)
        ax.set_xscale("log")  # the Bjøntegaard deltas' axis
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_title(titles.get(clf, _short(clf)))
        ax.grid(alpha=0.3, which="both")
    level = next((p.get("confidence") for pts in summary_with_ci.values() for p in pts.values()), 0.95)
    axes[0][0].set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy (%), {100 * level:g} % bands")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize="small", frameon=False)
    rows_of_legend = math.ceil(len(labels) / 6)
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Committed rows
# --------------------------------------------------------------------------------------------------------------


def _row_order(row: dict) -> Tuple[str, str, int]:
    return str(row["codec"]), str(row["rate_point"]), int(row["index"])


def write_rows_gz(rows: Sequence[dict], path: os.PathLike) -> None:
    """Write rows as gzipped JSON lines that are the same bytes whenever the rows are the same.

    Rows are sorted by (codec, rate point, image index), keys sorted within a row, and the gzip header carries no
    time stamp and no file name, so rewriting from the same rows (in any order, from any number of shards) leaves a
    committed file unchanged. The file is written atomically.
    """
    from ..utils.file_utils import write_atomically

    text = "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in sorted(rows, key=_row_order))
    buffer = io.BytesIO()
    # GzipFile, not gzip.compress: with mtime=0 the latter hands over to zlib, whose header names the OS
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))
    write_atomically(path, buffer.getvalue())


def read_rows_gz(path: os.PathLike) -> List[dict]:
    """The rows of a file written by :func:`write_rows_gz` (any gzipped JSON lines), in file order."""
    try:
        with gzip.open(Path(path), "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise RowsFileError(f"{path}: not a complete gzip file ({err}); rewrite it with write_rows_gz") from None
    rows = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise RowsFileError(f"{path}, line {number}: not a JSON row ({err})") from None
    return rows
