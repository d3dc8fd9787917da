"""From rows to results: the summary JSON, rate–accuracy plots (paper Fig. 3) and the BD-rate table (Table 1).

Accuracy is in percent throughout, and it is the quality axis of the Bjøntegaard deltas.

Rows decoded under several seeds (``slim evaluate --seeds``) give each rate point its accuracy as the mean over
images of each image's mean over the seeds, and an interval over seeds and images (:func:`seed_interval`).
"""

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.file_utils import write_atomically
from .bd_rate import METHODS, BDRateError, bd_accuracy, bd_rate

METRICS = ("top1", "top5")
Summary = Dict[str, Dict[str, dict]]  # codec -> rate point -> entry
SEED_INTERVAL_REPLICATES = 2000


def _correct(row: dict, classifier: str, metric: str) -> bool:
    ranks = row["top5"][classifier]
    return ranks[0] == row["label"] if metric == "top1" else row["label"] in ranks


def seed_interval(per_image: np.ndarray, confidence: float = 0.95, replicates: int = SEED_INTERVAL_REPLICATES,
                  seed: int = 0) -> List[float]:
    """Percentile bootstrap interval (percent) of the mean accuracy, over images, of ``per_image``: each image's
    accuracy averaged over its decoding seeds (a fraction in [0, 1]).

    The images are the independent draws; the decodes of one image share its bytes and are not independent of each
    other, so resampling rows would count one image's seeds as more evidence than they are. Averaging the seeds per
    image first and resampling images keeps both sources of variation in the interval: which images were drawn,
    and, inside each image's mean, the decoding noise. A difference between two rate points or codecs smaller than
    this interval is not one the evaluation can tell from the seed. Deterministic (``seed`` seeds the resampling).
    """
    values = np.asarray(per_image, dtype=np.float64)
    if values.size == 0:
        raise ValueError("an interval needs at least one image")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(replicates, values.size))].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return [100.0 * float(low), 100.0 * float(high)]


def summarize(rows: Sequence[dict], classifiers: Sequence[str], confidence: float = 0.95) -> Summary:
    """``{codec: {rate point: entry}}`` with, per entry, the images, mean bytes and bits per pixel, top-1 and
    top-5 accuracy (%) per classifier, and the seconds spent encoding and decoding. Codecs and rate points
    keep the order of the rows; ``rows`` should hold one row per (codec, rate point, image, decoding seed).

    An entry whose rows hold several decoding seeds also has ``seeds``, ``top1_per_seed``/``top5_per_seed``
    (``{classifier: {seed: %}}``, the spread of the decoding noise) and ``top1_seed_ci``/``top5_seed_ci``
    (``{classifier: [low, high]}``, :func:`seed_interval` at ``confidence``); its accuracy is the mean over images
    of each image's mean over the seeds, and ``images`` counts images, not decodes."""
    groups: Dict[Tuple[str, str], List[dict]] = {}
    for row in rows:
        groups.setdefault((row["codec"], str(row["rate_point"])), []).append(row)
    summary: Summary = {}
    for (codec, point), items in groups.items():
        # a row weighs 1 / (its image's number of seeds): an image counts once however often it was decoded, and
        # rows repeated by a resampling (the same image and seed twice) count as often as they appear
        seeds_of: Dict[int, set] = {}
        for r in items:
            seeds_of.setdefault(int(r["index"]), set()).add(r.get("seed"))
        weights = np.array([1.0 / len(seeds_of[int(r["index"])]) for r in items])
        if (weights == 1.0).all():  # one decode per image: the plain mean, as before seeds were recorded
            mean = lambda values: float(np.mean(values))  # noqa: E731
        else:
            mean = lambda values: float(np.dot(weights, np.asarray(values, dtype=np.float64)) / weights.sum())  # noqa: E731
        entry = {
            "images": int(round(weights.sum())),
            "mean_bpp": mean([r["bpp"] for r in items]),
            "mean_bytes": mean([r["bytes"] for r in items]),
            "top1": {},
            "top5": {},
            "encode_seconds": float(np.sum([r["encode_seconds"] for r in items])),
            "decode_seconds": float(np.sum([r["decode_seconds"] for r in items])),
        }
        seeds = sorted({int(r["seed"]) for r in items if "seed" in r})
        several = len(seeds) > 1
        if several:
            entry["seeds"] = seeds
        for metric in METRICS:
            for clf in classifiers:
                correct = [_correct(r, clf, metric) for r in items]
                entry[metric][clf] = 100.0 * mean(correct)
                if several:
                    per_image: Dict[int, List[bool]] = {}
                    for r, ok in zip(items, correct):
                        per_image.setdefault(int(r["index"]), []).append(ok)
                    entry.setdefault(f"{metric}_seed_ci", {})[clf] = seed_interval(
                        np.array([np.mean(v) for v in per_image.values()]), confidence)
                    entry.setdefault(f"{metric}_per_seed", {})[clf] = {
                        str(s): 100.0 * float(np.mean([ok for r, ok in zip(items, correct) if r.get("seed") == s]))
                        for s in seeds
                    }
        summary.setdefault(codec, {})[point] = entry
    return summary


def curve(points: Dict[str, dict], classifier: str, metric: str = "top1") -> Tuple[np.ndarray, np.ndarray]:
    """(mean bpp, accuracy %) of one codec's rate points, sorted by rate."""
    pts = sorted((p["mean_bpp"], p[metric][classifier]) for p in points.values())
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def monotone_envelope(bpp: np.ndarray, accuracy: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The points that gain accuracy over every cheaper point of the curve.

    Accuracy saturates and is noisy (100 % at two rates, or 99.7 % after 100 %), and BD-rate needs curves
    that gain quality strictly with rate. A point that buys no accuracy with more bits is not on the
    codec's rate–accuracy front: a user would pick the cheaper point, so dropping it is what the curve
    means for that user.
    """
    keep, best = [], -np.inf
    for b, a in sorted(zip(bpp, accuracy)):
        if a > best:
            keep.append((b, a))
            best = a
    return np.array([k[0] for k in keep]), np.array([k[1] for k in keep])


def _short(name: str) -> str:
    return os.path.basename(str(name).rstrip("/")) or str(name)


def plot_rate_accuracy(summary: Summary, classifiers: Sequence[str], path: os.PathLike) -> None:
    """One panel per classifier (columns) and metric (rows: top-1, top-5), one curve per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(METRICS), len(classifiers), figsize=(5 * len(classifiers), 3.8 * len(METRICS)),
                             squeeze=False)
    for col, clf in enumerate(classifiers):
        for row, metric in enumerate(METRICS):
            ax = axes[row][col]
            for codec, points in summary.items():
                bpp, acc = curve(points, clf, metric)
                ax.plot(bpp, acc, marker="o", label=codec)
            ax.set_xscale("log")  # the Bjøntegaard deltas' axis; codecs' rates differ by orders of magnitude
            ax.set_xlabel("bits per pixel (from the bytes written, log scale)")
            ax.set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy (%)")
            ax.set_title(_short(clf))
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def bd_rates(summary: Summary, classifiers: Sequence[str], anchor: str, metric: str = "top1",
             envelope: bool = False) -> dict:
    """``{method: {codec: {classifier: {"bd_rate": %, "bd_accuracy": points}}}}`` against ``anchor``; a value the
    curves do not allow is ``None``, with the reason under ``"bd_rate_error"`` / ``"bd_accuracy_error"``.
    ``envelope`` compares the curves' :func:`monotone_envelope` instead of every point."""
    out: dict = {}

    def points(codec, clf):
        c = curve(summary[codec], clf, metric)
        return monotone_envelope(*c) if envelope else c

    for method in METHODS:
        for codec in summary:
            if codec == anchor:
                continue
            for clf in classifiers:
                a, t = points(anchor, clf), points(codec, clf)
                cell: dict = {}
                for key, fn in (("bd_rate", bd_rate), ("bd_accuracy", bd_accuracy)):
                    try:
                        cell[key] = fn(*a, *t, method=method)
                    except BDRateError as err:
                        who = {"anchor": anchor, "test": codec}.get(err.curve)
                        cell[key], cell[f"{key}_error"] = None, f"{who} curve {err.reason}" if who else err.reason
                out.setdefault(method, {}).setdefault(codec, {})[clf] = cell
    return out


def bd_rate_table(summary: Summary, classifiers: Sequence[str], anchor: str, metric: str = "top1",
                  envelope: bool = False) -> str:
    """Markdown: BD-rate (%) and BD-accuracy (points) of every codec against ``anchor``, per classifier, for both
    interpolations; a cell is "n/a" with a footnote when the curves cannot be compared."""
    deltas = bd_rates(summary, classifiers, anchor, metric, envelope)
    label = "top-1" if metric == "top1" else "top-5"
    lines = [
        f"# BD-rate against {anchor}",
        "",
        f"Quality axis: {label} accuracy (%). BD-rate < 0: fewer bits than {anchor} for the same accuracy; "
        "BD-accuracy > 0: more accuracy (percentage points) at the same rate.",
    ]
    if envelope:
        lines.append("Curves are compared on their monotone envelopes: a point that gains no accuracy over a "
                     "cheaper point of the same codec is left out.")
    notes: Dict[str, int] = {}  # reason -> footnote number: one curve's fault is told once
    for method in METHODS:
        if method == "pchip":
            title = "piecewise cubic (pchip), as the JCT-VC/JVET CTC sheets"
        else:
            title = "cubic polynomial (VCEG-M33)"
        lines += ["", f"## {title}", ""]
        columns = " | ".join(f"{_short(c)} BD-rate (%) | {_short(c)} BD-acc. (pt)" for c in classifiers)
        lines += [f"| codec | {columns} |", "| --- |" + " ---: | ---: |" * len(classifiers)]
        for codec, per_clf in deltas.get(method, {}).items():
            cells = []
            for clf in classifiers:
                cell = per_clf[clf]
                for key in ("bd_rate", "bd_accuracy"):
                    if cell[key] is None:
                        number = notes.setdefault(cell[key + "_error"], len(notes) + 1)
                        cells.append(f"n/a[^{number}]")
                    else:
                        cells.append(f"{cell[key]:+.2f}")
            lines.append(f"| {codec} | " + " | ".join(cells) + " |")
    if len(summary) < 2:
        lines += ["", f"Only {anchor} was evaluated: nothing to compare."]
    if notes:
        lines.append("")
        lines += [f"[^{number}]: {note}" for note, number in notes.items()]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: os.PathLike,
    rows: Sequence[dict],
    classifiers: Sequence[str],
    anchor: str,
    images: int,
    seconds: float,
    expected_rows: Optional[int] = None,
    extra: Optional[dict] = None,
    envelope: bool = False,
) -> dict:
    """Write ``summary.json``, ``rate_accuracy.png`` and ``bd_rate.md`` into ``out_dir``; return the summary.

    ``images`` and ``seconds`` describe this call (the images asked for, its wall-clock time); the
    per-rate-point ``encode_seconds``/``decode_seconds`` add up the rows, whichever call wrote them.
    ``complete`` is false when fewer than ``expected_rows`` rows exist (an unfinished shard).
    """
    out_dir = Path(out_dir)
    summary = summarize(rows, classifiers)
    if anchor not in summary:
        raise ValueError(f"anchor codec {anchor!r} has no rows; evaluated: {list(summary)}")
    report = {
        "images": images,
        "seconds": seconds,
        "rows": len(rows),
        "complete": expected_rows is None or len(rows) == expected_rows,
        "classifiers": list(classifiers),
        "anchor": anchor,
        "codecs": summary,
        "bd": bd_rates(summary, classifiers, anchor, envelope=envelope),
        "bd_on_monotone_envelopes": envelope,
        **(extra or {}),
    }
    write_atomically(out_dir / "summary.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    plot_rate_accuracy(summary, classifiers, out_dir / "rate_accuracy.png")
    write_atomically(out_dir / "bd_rate.md", bd_rate_table(summary, classifiers, anchor, envelope=envelope).encode("utf-8"))
    return report
