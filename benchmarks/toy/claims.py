"""The paper's claims measured on toy world v2, each with a 95 % interval and a verdict decided by a rule
written down before the run (below), and the results files.

Claims and their rules (ResNet, the classifier SLIM trained with, decides; a second ResNet of another shape that it never saw
is reported beside it):

1. **RoI-focused training** concentrates the bits on the target and lowers the rate at equal accuracy.
   Held when, at every rate point, the bits per coded position inside the target ÷ outside is larger with
   RoI training than without (95 % bootstrap interval of the difference above 0), and the BD-rate of SLIM
   against SLIM w/o RoI is negative with its 95 % interval below 0 (the paper: −18.87 %).
2. **Fewer bits than the baselines** at equal accuracy: per baseline (JPEG, WebP, AVIF, the learned MSE codec,
   the learned task codec), held when the BD-rate of SLIM against it (pchip on monotone envelopes) has its
   95 % interval below 0.
3. **Diffusion helps at low rates**: at each of the two lowest rate points, held when top-1 with diffusion
   minus top-1 without (same bitstreams, same images) has its 95 % paired-bootstrap interval above 0.
   Beside it, what the caption adds (SLIM minus SLIM with an empty caption, same rule) and what the caption
   alone buys (its accuracy against chance, 5 %, and against the kind alone, 20 %).

Intervals: Wilson for one accuracy; paired percentile bootstrap over images (1000 replicates, seed 0) for
differences and BD deltas; every number comes from ``rows.jsonl.gz``.
"""

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

from slim_diffusers import toy_world
from slim_diffusers.evaluation import statistics
from slim_diffusers.evaluation.harness import latest_rows
from slim_diffusers.utils.file_utils import write_atomically

BASELINES = ("JPEG", "WebP", "AVIF", "bmshj2018 MSE", "bmshj2018 task")
MAIN_CURVES = ("SLIM", "SLIM w/o diffusion", "SLIM empty caption", "SLIM w/o RoI", "caption only", *BASELINES)


# ------------------------------------------------------------------------------------------ per-image data
def _by_image(rows: Sequence[dict], codec: str, point: str, classifier: str) -> Dict[int, dict]:
    return {r["index"]: r for r in rows if r["codec"] == codec and r["rate_point"] == point and classifier in r["top5"]}


def _correct(rows_by_image: Dict[int, dict], classifier: str, images: List[int], kind: bool = False) -> np.ndarray:
    out = []
    for i in images:
        row = rows_by_image[i]
        predicted, label = row["top5"][classifier][0], row["label"]
        out.append(toy_world.kind_of(predicted) == toy_world.kind_of(label) if kind else predicted == label)
    return np.asarray(out, dtype=np.float64)


def _paired_difference(a: np.ndarray, b: np.ndarray, replicates: int, seed: int = 0) -> dict:
    """Mean of ``a − b`` in percentage points with its paired percentile bootstrap interval (same images)."""
    diff = 100.0 * (a - b)
    means = np.array([diff[idx].mean() for idx in statistics.resample_indices(len(diff), replicates, seed)])
    low, high = np.percentile(means, [2.5, 97.5])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high), "images": int(len(diff))}


def _accuracy(correct: np.ndarray) -> dict:
    low, high = statistics.accuracy_interval(int(correct.sum()), len(correct))
    return {"top1": 100.0 * float(correct.mean()), "low": low, "high": high, "images": int(len(correct))}


def paired_comparison(rows: Sequence[dict], a_codec: str, b_codec: str, point: str, classifier: str, replicates: int,
                      kind: bool = False) -> dict:
    """Top-1 (or kind) accuracy of two codecs at the same rate point on the images both have, with the paired
    bootstrap interval of their difference (a − b)."""
    a, b = _by_image(rows, a_codec, point, classifier), _by_image(rows, b_codec, point, classifier)
    images = sorted(set(a) & set(b))
    ca, cb = _correct(a, classifier, images, kind), _correct(b, classifier, images, kind)
    return {a_codec: _accuracy(ca), b_codec: _accuracy(cb), "difference": _paired_difference(ca, cb, replicates)}


def accuracy_of(rows: Sequence[dict], codec: str, point: str, classifier: str, kind: bool = False) -> dict:
    """Top-1 (or, with ``kind``, kind) accuracy of one codec at one rate point over every image it has a row for,
    with its 95 % Wilson interval."""
    by_image = _by_image(rows, codec, point, classifier)
    return _accuracy(_correct(by_image, classifier, sorted(by_image), kind))


def kind_accuracies(rows: Sequence[dict], classifiers: Sequence[str]) -> dict:
    """Per codec and rate point, how often the top prediction has the true kind (the caption's level of detail)."""
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["codec"], row["rate_point"]), []).append(row)
    out: dict = {}
    for (codec, point), items in groups.items():
        for clf in classifiers:
            hits = sum(toy_world.kind_of(r["top5"][clf][0]) == toy_world.kind_of(r["label"]) for r in items)
            low, high = statistics.accuracy_interval(hits, len(items))
            out.setdefault(codec, {}).setdefault(point, {})[clf] = {"kind_top1": 100.0 * hits / len(items),
                                                                     "low": low, "high": high}
    return out


# ------------------------------------------------------------------------------------------------ claim 1
@torch.no_grad()
def bits_inside_outside(pipe, test, limit: int, rate=None) -> Dict[str, np.ndarray]:
    """Per image: the entropy model's bits at coded positions inside the true target mask and outside it, and
    how many positions each (a position is inside when the target covers at least half of its pixels); ``rate``:
    a variable-rate model's level."""
    from slim_diffusers.coding.bit_allocation import bitstream_bit_allocation

    stats = {"bits_in": [], "n_in": [], "bits_out": [], "n_out": []}
    for i in range(min(limit, len(test))):
        row = test[i]
        (bs,) = pipe.compress(row["image"], captions=row["caption"], rate=rate)
        bits, stride = bitstream_bit_allocation(pipe, bs)
        bits = bits.numpy()
        mask = torch.tensor(np.asarray(row["object_mask"], np.float32))[None, None]
        cover = torch.nn.functional.avg_pool2d(mask, stride)[0, 0].numpy()[: bits.shape[0], : bits.shape[1]]
        bits = bits[: cover.shape[0], : cover.shape[1]]
        inside = cover >= 0.5
        stats["bits_in"].append(float(bits[inside].sum()))
        stats["n_in"].append(int(inside.sum()))
        stats["bits_out"].append(float(bits[~inside].sum()))
        stats["n_out"].append(int((~inside).sum()))
    return {k: np.asarray(v, dtype=np.float64) for k, v in stats.items()}


def _ratio(s: Dict[str, np.ndarray], idx=slice(None)) -> float:
    inside = s["bits_in"][idx].sum() / max(s["n_in"][idx].sum(), 1)
    outside = s["bits_out"][idx].sum() / max(s["n_out"][idx].sum(), 1)
    return float(inside / max(outside, 1e-9))


def ratio_comparison(with_roi, without_roi, replicates: int) -> dict:
    """Inside ÷ outside bits per position, with and without RoI training, and the paired bootstrap of their
    difference over the same images."""
    n = len(with_roi["bits_in"])
    diffs, a, b = [], [], []
    for idx in statistics.resample_indices(n, replicates, seed=1):
        a.append(_ratio(with_roi, idx))
        b.append(_ratio(without_roi, idx))
        diffs.append(a[-1] - b[-1])
    interval = lambda v: [float(x) for x in np.percentile(v, [2.5, 97.5])]  # noqa: E731
    return {
        "images": n,
        "with_roi": {"ratio": _ratio(with_roi), "ci": interval(a),
                     "bits_per_position_inside": float(with_roi["bits_in"].sum() / max(with_roi["n_in"].sum(), 1)),
                     "bits_per_position_outside": float(with_roi["bits_out"].sum() / max(with_roi["n_out"].sum(), 1))},
        "without_roi": {"ratio": _ratio(without_roi), "ci": interval(b),
                        "bits_per_position_inside": float(without_roi["bits_in"].sum() / max(without_roi["n_in"].sum(), 1)),
                        "bits_per_position_outside": float(without_roi["bits_out"].sum() / max(without_roi["n_out"].sum(), 1))},
        "difference": {"value": _ratio(with_roi) - _ratio(without_roi), "ci": interval(diffs)},
    }


# ------------------------------------------------------------------------------------------------ measure
def measure(work: Path, cfg, models: dict, report: dict, rate_label: Callable[[float], str],
            load_pipeline: Callable) -> dict:
    import datasets

    rows = latest_rows(work / "eval")
    classifiers = report["classifiers"]
    resnet, _never_seen = classifiers
    reps = cfg.bootstrap_replicates
    summary = statistics.summarize_with_intervals(rows, classifiers)
    codecs = list(summary)
    rates = [rate_label(r) for r in sorted(cfg.rate_points)]  # low λ = high rate first
    lowest_two = rates[-2:]
    out: dict = {}

    # 1. RoI: bits inside/outside at every rate point, and BD-rate of SLIM against SLIM w/o RoI
    test = datasets.load_from_disk(str(work / "data" / "test"))
    per_rate = {}
    for rate in sorted(cfg.rate_points):
        with_roi = bits_inside_outside(load_pipeline(models["roi"][rate]), test, cfg.num_bitmap_images)
        without = bits_inside_outside(load_pipeline(models["no_roi"][rate]), test, cfg.num_bitmap_images)
        per_rate[rate_label(rate)] = ratio_comparison(with_roi, without, reps)
    roi_bd = statistics.bootstrap_bd(rows, classifiers, anchor="SLIM w/o RoI", codecs=["SLIM"], replicates=reps)
    bits_held = all(c["difference"]["ci"][0] > 0 for c in per_rate.values())
    bd_cell = roi_bd["deltas"]["SLIM"][resnet]["pchip"]["bd_rate"]
    out["claim1_roi"] = {
        "rule": "bits ratio larger with RoI at every rate (CI of the difference > 0) and BD-rate vs w/o RoI < 0 (CI < 0)",
        "bits_inside_outside": per_rate,
        "bd_rate_vs_without_roi": roi_bd["deltas"]["SLIM"],
        "paper_bd_rate": -18.87,
        "held": bool(bits_held and bd_cell["high"] is not None and bd_cell["high"] < 0),
        "bits_part_held": bool(bits_held),
        "bd_part_held": bool(bd_cell["high"] is not None and bd_cell["high"] < 0),
    }

    # 2. SLIM against every baseline
    bd_baselines = {}
    for anchor in [b for b in BASELINES if b in codecs]:
        result = statistics.bootstrap_bd(rows, classifiers, anchor=anchor, codecs=["SLIM"], replicates=reps)
        cell = result["deltas"]["SLIM"][resnet]["pchip"]["bd_rate"]
        bd_baselines[anchor] = {"deltas": result["deltas"]["SLIM"],
                                "held": bool(cell["high"] is not None and cell["high"] < 0)}
    out["claim2_baselines"] = {
        "rule": "BD-rate of SLIM against the baseline (pchip, monotone envelopes, ResNet) with its 95% CI below 0",
        "per_baseline": bd_baselines,
        "byte_floor_96px": byte_floors(),
    }

    # 3. diffusion, caption and steps at the low rates
    def compare(a_codec, b_codec, point, clf):
        return paired_comparison(rows, a_codec, b_codec, point, clf, reps)

    diffusion = {p: {c: compare("SLIM", "SLIM w/o diffusion", p, c) for c in classifiers} for p in rates}
    caption = {p: {c: compare("SLIM", "SLIM empty caption", p, c) for c in classifiers} for p in rates}
    out["claim3_diffusion"] = {
        "rule": "top-1 with minus without diffusion at the two lowest rates: 95% paired-bootstrap CI above 0 (ResNet)",
        "per_rate": diffusion,
        "held_at": {p: bool(diffusion[p][resnet]["difference"]["low"] > 0) for p in lowest_two},
        "held": bool(all(diffusion[p][resnet]["difference"]["low"] > 0 for p in lowest_two)),
    }
    out["caption"] = {
        "what_the_caption_adds": caption,
        "caption_only": {c: {"top1": accuracy_of(rows, "caption only", "caption", c),
                             "kind": accuracy_of(rows, "caption only", "caption", c, kind=True)}
                         for c in classifiers} if "caption only" in codecs else None,
        "chance_top1": 100.0 / len(toy_world.CLASS_NAMES),
        "chance_kind": 100.0 / len(toy_world.KINDS),
    }
    steps = {}
    step_codecs = [c for c in codecs if c.startswith("SLIM ") and c.split()[1].isdigit()]
    for point in lowest_two:
        for codec in step_codecs:
            k = int(codec.split()[1])
            steps.setdefault(point, {})[k] = {c: accuracy_of(rows, codec, point, c) for c in classifiers}
        default = int(dict(cfg.decode)["num_inference_steps"] * dict(cfg.decode)["strength"])
        steps.setdefault(point, {})[default] = {c: accuracy_of(rows, "SLIM", point, c) for c in classifiers}
    out["decoding_steps"] = steps
    return {"claims": out, "summary": summary, "kind_accuracy": kind_accuracies(rows, classifiers),
            "bd_against_jpeg": statistics.bootstrap_bd(rows, classifiers, anchor="JPEG", replicates=reps,
                                                        codecs=[c for c in codecs if c != "JPEG" and c != "caption only"
                                                                and not (c.startswith("SLIM ") and c.split()[1].isdigit())])}


def byte_floors(size: int = 96) -> dict:
    """Bytes of a flat grey image at quality 1: what each format costs before it says anything."""
    import io

    from PIL import Image

    from slim_diffusers.evaluation.baselines import pillow_supports

    floors = {}
    for fmt, name, options in (("JPEG", "JPEG", {"optimize": True}), ("WEBP", "WebP", {"method": 6}), ("AVIF", "AVIF", {})):
        if fmt == "AVIF" and not pillow_supports("AVIF"):
            continue
        buffer = io.BytesIO()
        Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format=fmt, quality=1, **options)
        floors[name] = {"bytes": len(buffer.getvalue()), "bpp": 8 * len(buffer.getvalue()) / size**2}
    return floors


# ------------------------------------------------------------------------------------------------ results
def write_results(work: Path, res: Path, results: dict) -> None:
    """``results.json`` (claims with intervals), ``summary.json``, ``rows.jsonl.gz`` (every per-image row),
    ``rate_accuracy.png`` (bands, per classifier), ``bd_rate.md`` (with bootstrap intervals)."""
    res.mkdir(parents=True, exist_ok=True)
    rows = latest_rows(work / "eval")
    statistics.write_rows_gz(rows, res / "rows.jsonl.gz")
    summary = results.pop("summary")
    bd = results.pop("bd_against_jpeg")
    write_atomically(res / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    write_atomically(res / "results.json", (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    classifiers = bd["classifiers"]
    curves = [c for c in MAIN_CURVES if c in summary]
    statistics.plot_rate_accuracy_bands(summary, classifiers, res / "rate_accuracy.png", codecs=curves,
                                        titles=dict(zip(classifiers, ["ResNet (RoI masks, task loss, evaluation)",
                                                                      "ResNet-B (never seen in training)"])))
    write_atomically(res / "bd_rate.md", statistics.bd_table_with_intervals(bd).encode("utf-8"))
    shutil.copy(work / "eval" / "summary.json", res / "harness_summary.json")
    print(f"results in {res}", flush=True)
