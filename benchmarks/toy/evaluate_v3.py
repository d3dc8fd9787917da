"""Toy world v3, part 2: SLIM's two variable-rate models, their ablations and the baselines through the harness of
``slim evaluate`` (real bytes), and the claims decided by the rules of docs/toy.md, written before the test set is
looked at.

    .venv/bin/python benchmarks/toy/evaluate_v3.py --split validation --images 200 \
        --roi ROI_MODEL --noroi NOROI_MODEL --mse MSE_OUT --task TASK_OUT --work-dir outputs/v3_part2/eval-validation
    .venv/bin/python benchmarks/toy/evaluate_v3.py --split test \
        --roi ROI_MODEL --noroi NOROI_MODEL --mse MSE_OUT --task TASK_OUT --work-dir outputs/v3_part2/eval-test \
        --results benchmarks/toy/results/v3
    .venv/bin/python benchmarks/toy/evaluate_v3.py --smoke --work-dir /tmp/eval-v3   # the same code in seconds (CI)

``--roi`` / ``--noroi``: SLIM and SLIM w/o RoI, each one variable-rate pipeline (every level is a rate point);
``--mse`` / ``--task``: ``baseline_curve.py``'s ``--out`` folders (``lambda=<λ>/model`` where each λ stopped). Stages,
cached under ``--work-dir`` (an interrupted run resumes: finished rows are not evaluated again):

1. the second classifier (ResNet-B, "never seen in training": ``foundation.py resnet_b``, v2's 1000 steps), unless
   ``--classifier-b`` names one;
2. the images: the validation split (seed 5) or the test split (seed 3, 1000 images), with captions and target masks;
3. every codec through the harness, both classifiers: SLIM decoded as toy v3 decodes (one DDIM step on trailing
   spacing from t = 499) and by the VAE alone from the same bytes, with an empty caption and with a wrong kind's
   caption, with 2 and 4 steps from the same t = 499; SLIM w/o RoI with and without diffusion; the caption alone
   (the prior from noise, 20 trailing steps, CFG 3: part 1's prior gate); JPEG, WebP, AVIF; the two learned codecs;
4. the bits SLIM and SLIM w/o RoI spend inside and outside the target, per level;
5. the claims (``decide``), written to ``--results`` (default ``WORK/results``): ``results.json``, ``summary.json``,
   ``rows.jsonl.gz``, ``rate_accuracy.png`` and ``bd_rate.md``.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import claims  # noqa: E402
import learned_baselines as lb  # noqa: E402
import part2_carry  # noqa: E402
from control_curve import DECODE  # noqa: E402
from foundation import IMAGE_SIZE, TEST_SEED, VALIDATION_SEED  # noqa: E402
from run_toy import CaptionOnlyCodec, EncodeOnce  # noqa: E402

from slim_diffusers import toy_world  # noqa: E402
from slim_diffusers.evaluation import statistics  # noqa: E402
from slim_diffusers.evaluation.harness import latest_rows  # noqa: E402
from slim_diffusers.evaluation.report import monotone_envelope  # noqa: E402
from slim_diffusers.utils.file_utils import staged_directory, write_atomically  # noqa: E402

BUNDLED = REPO / "slim_diffusers" / "assets" / "toy"
CLASSIFIERS = ("resnet", "resnet_b")
BASELINES = ("JPEG", "WebP", "AVIF", "bmshj2018 MSE", "bmshj2018 task")
PILLOW_QUALITIES = (1, 5, 10, 20, 40, 70, 90)  # v2's
STEPS = (1, 2, 4)  # decode steps from t = 499 (strength 0.5 on a trailing schedule of twice as many steps)
CAPTION_ONLY = {"steps": 20, "guidance_scale": 3.0}  # part 1's prior gate decode
MIN_OVERLAP = 20.0  # points of top-1 two curves must share for a BD-rate to be reported
CURVES = ("SLIM", "SLIM w/o diffusion", "SLIM w/o RoI", "SLIM empty caption", "SLIM wrong caption", "caption only",
          *BASELINES)


def log(msg: str) -> None:
    print(f"[evaluate_v3 {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------ codecs
def wrong_caption(caption: str) -> str:
    """The caption of the next kind ("a circle" → "a square", …, "a cross" → "a circle"): a caption that is
    wrong about the one thing it says."""
    for k, kind in enumerate(toy_world.KINDS):
        if caption == f"a {kind}":
            return f"a {toy_world.KINDS[(k + 1) % len(toy_world.KINDS)]}"
    raise ValueError(f"{caption!r} is not a toy world caption")


def _trailing(pipe):
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(path: Path):
    from slim_diffusers import SLIMPipeline

    pipe = _trailing(SLIMPipeline.from_pretrained(str(path)))
    if not pipe.num_rate_levels:
        raise ValueError(f"{path} is a fixed-rate model; part 2 evaluates one variable-rate model per variant")
    return pipe


def slim_codecs(roi, noroi, levels: Optional[Sequence[int]] = None) -> list:
    """SLIM's curves: every level of each variable-rate model is a rate point (``rate=<level>``, level 0 the fewest
    bits; ``levels``: only these, for a smoke run). Codecs that decode SLIM's own files another way reuse its bytes
    (:class:`run_toy.EncodeOnce`)."""
    from slim_diffusers.evaluation.codecs import SLIMCodec, slim_rate_points

    decode = {"num_inference_steps": DECODE["num_inference_steps"], "strength": DECODE["strength"],
              "seed": DECODE["seed"]}
    points, rates = slim_rate_points({"roi": roi}, levels)
    no_points, no_rates = slim_rate_points({"noroi": noroi}, levels)
    once = EncodeOnce()

    class WrongCaption(SLIMCodec):
        def encode_batch(self, images, rate_point, captions):
            return SLIMCodec.encode_batch(self, images, rate_point, [wrong_caption(c) for c in captions])

    codecs = [once.share(c) for c in (
        SLIMCodec(points, name="SLIM", rates=rates, **decode),
        SLIMCodec(points, name="SLIM w/o diffusion", rates=rates, use_diffusion=False),
        SLIMCodec(points, name="SLIM empty caption", rates=rates, caption="", **decode),
        SLIMCodec(no_points, name="SLIM w/o RoI", rates=no_rates, **decode),
        SLIMCodec(no_points, name="SLIM w/o RoI w/o diffusion", rates=no_rates, use_diffusion=False),
    )]
    codecs.append(WrongCaption(points, name="SLIM wrong caption", rates=rates, **decode))  # its own bytes
    one_step = int(DECODE["num_inference_steps"] * DECODE["strength"])
    for k in STEPS:
        if k != one_step:  # SLIM itself is the default's row
            codecs.append(once.share(SLIMCodec(points, name=f"SLIM {k} steps", rates=rates,
                                               **{**decode, "num_inference_steps": int(k / DECODE["strength"])})))
    # decoded as part 1's prior gate decodes: from noise on the trailing schedule with guidance, the control module off
    codecs.append(CaptionOnlyCodec(roi, steps=CAPTION_ONLY["steps"], seed=int(DECODE["seed"]),
                                   guidance_scale=CAPTION_ONLY["guidance_scale"]))
    return codecs


def learned_codecs(mse: Path, task: Path) -> list:
    """The two learned codecs: every λ of each ``baseline_curve.py`` run that its rule stopped."""
    models = {}
    for name, folder in (("bmshj2018 MSE", mse), ("bmshj2018 task", task)):
        found = {}
        for run in sorted(Path(folder).glob("lambda=*")):
            if not (run / "model").is_dir():
                raise FileNotFoundError(f"{run}: no finished model (its training has not stopped by its rule)")
            found[float(run.name.split("=", 1)[1])] = lb.load_model(run / "model")
        if not found:
            raise FileNotFoundError(f"{folder}: no lambda=<λ> folders")
        models[name] = found
    return lb.LearnedBaselines(models).codecs()


def pillow_codecs() -> list:
    from slim_diffusers.evaluation.baselines import PillowCodec, pillow_supports

    return [PillowCodec(fmt, qualities=PILLOW_QUALITIES) for fmt in ("JPEG", "WEBP", "AVIF")
            if fmt != "AVIF" or pillow_supports("AVIF")]


# ------------------------------------------------------------------------------------------------------ stages
def ensure_classifier_b(work: Path, steps: int) -> Path:
    import subprocess

    out = work / part2_carry.CLASSIFIER_B
    if not (out / "toy_done.json").is_file():
        log(f"training the second classifier (ResNet-B, {steps} steps)")
        subprocess.run([sys.executable, str(HERE / "foundation.py"), "resnet_b", str(out), "--steps", str(steps)],
                       check=True)
    return out


def ensure_data(work: Path, split: str, n: int) -> Path:
    """The split's images, drawn from its seed once; their files' digest is written beside them, and images drawn
    again (a new machine: ``part2_carry.py restore`` brings the digest, not the images) must match it."""
    folder = work / "data" / f"{split}-{n}"
    if not (folder / "dataset_info.json").is_file():
        seed = TEST_SEED if split == "test" else VALIDATION_SEED
        with staged_directory(folder) as stage:  # a kill while it is written leaves no folder that looks done
            toy_world.as_dataset(n, seed=seed, size=IMAGE_SIZE).save_to_disk(str(stage))
    if folder.with_name(folder.name + part2_carry.DIGEST).is_file():
        part2_carry.check_digest(folder)
    else:
        part2_carry.write_digest(folder)
    return folder


def bits_per_level(pipe, dataset, limit: int) -> List[Dict[str, np.ndarray]]:
    """``claims.bits_inside_outside`` at every level of a variable-rate model."""
    return [claims.bits_inside_outside(pipe, dataset, limit, rate=level) for level in range(pipe.num_rate_levels)]


# ------------------------------------------------------------------------------------------------------ claims
def overlap(summary: dict, a: str, b: str, classifier: str) -> Optional[List[float]]:
    """The top-1 range (points) two curves' monotone envelopes share: where a BD-rate between them is measured."""
    ranges = []
    for codec in (a, b):
        points = summary[codec].values()
        _, accuracy = monotone_envelope(np.array([p["mean_bpp"] for p in points]),
                                        np.array([p["top1"][classifier] for p in points]))
        ranges.append((float(accuracy.min()), float(accuracy.max())))
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    return [lo, hi] if hi > lo else None


def bd_with_overlap(rows, summary, classifiers, anchor: str, codec: str, replicates: int) -> dict:
    """BD-rate of ``codec`` against ``anchor`` (pchip on monotone envelopes and cubic, paired bootstrap intervals)
    with the top-1 range it covers per classifier; **refused** (no value) where that range is under
    ``MIN_OVERLAP`` points. ``"bootstrap"``: the whole :func:`statistics.bootstrap_bd` result (for the tables)."""
    result = statistics.bootstrap_bd(rows, classifiers, anchor=anchor, codecs=[codec], replicates=replicates)
    out = {"bootstrap": result}
    for clf in classifiers:
        shared = overlap(summary, anchor, codec, clf)
        width = 0.0 if shared is None else shared[1] - shared[0]
        cell = {"overlap_top1": shared, "overlap_points": width}
        if width < MIN_OVERLAP:
            cell["refused"] = f"the curves share {width:.1f} points of top-1, under {MIN_OVERLAP:g}"
        else:
            cell.update(result["deltas"][codec][clf])
        out[clf] = cell
    return out


def _bd_held(cell: dict) -> Optional[bool]:
    """Held when the pchip BD-rate's interval lies below 0; None where the BD-rate was refused or not computable."""
    if "refused" in cell:
        return None
    bd = cell["pchip"]["bd_rate"]
    if bd["high"] is None:
        return None
    return bool(bd["high"] < 0)


def decide(rows: Sequence[dict], bits: Dict[str, List[Dict[str, np.ndarray]]], replicates: int,
           classifiers: Sequence[str] = CLASSIFIERS) -> dict:
    """The claims by docs/toy.md's part 2 rules (the ResNet decides; ResNet-B beside it):

    1. RoI: at every level, the bits per position inside the target ÷ outside is larger with RoI training than
       without (level i of each model: the levels span each variant's own range, near chance to accurate; paired
       bootstrap interval of the difference above 0), and the BD-rate of SLIM against SLIM w/o RoI below 0.
    2. Per baseline: the BD-rate of SLIM against it below 0.
    3. Diffusion: top-1 with diffusion minus by the VAE alone, same bitstreams, paired, above 0 at SLIM's two lowest
       levels; reported at every level of both variants.
    A BD-rate over less than ``MIN_OVERLAP`` points of shared top-1 is refused; a claim that rests on a refused
    BD-rate is not decided (``held`` None) and says so."""
    resnet = classifiers[0]
    summary = statistics.summarize_with_intervals(rows, classifiers)
    codecs = list(summary)
    levels = sorted(summary["SLIM"], key=lambda p: float(p.split("=")[1]))  # level 0 (fewest bits) first
    no_levels = sorted(summary["SLIM w/o RoI"], key=lambda p: float(p.split("=")[1]))

    def compare(a_codec, b_codec, point, clf):
        return claims.paired_comparison(rows, a_codec, b_codec, point, clf, replicates)

    out: dict = {"min_overlap_points": MIN_OVERLAP, "levels": levels}
    # 1.
    per_level = {f"level {i}": claims.ratio_comparison(with_roi, without, replicates)
                 for i, (with_roi, without) in enumerate(zip(bits["roi"], bits["noroi"]))}
    bits_held = all(c["difference"]["ci"][0] > 0 for c in per_level.values())
    roi_bd = bd_with_overlap(rows, summary, classifiers, "SLIM w/o RoI", "SLIM", replicates)
    bootstraps = {"SLIM w/o RoI": roi_bd.pop("bootstrap")}
    bd_held = _bd_held(roi_bd[resnet])
    out["claim1_roi"] = {
        "rule": "bits inside/outside larger with RoI at every level (CI of the difference > 0) and BD-rate vs w/o "
                "RoI < 0 (pchip, CI < 0, at least 20 points of shared top-1)",
        "bits_inside_outside": per_level, "bd_rate_vs_without_roi": roi_bd, "paper_bd_rate": -18.87,
        "bits_part_held": bool(bits_held), "bd_part_held": bd_held,
        "held": None if bd_held is None and bits_held else bool(bits_held and bd_held),
    }
    # 2.
    per_baseline = {}
    for anchor in [b for b in BASELINES if b in codecs]:
        cells = bd_with_overlap(rows, summary, classifiers, anchor, "SLIM", replicates)
        bootstraps[anchor] = cells.pop("bootstrap")
        per_baseline[anchor] = {"bd": cells, "held": _bd_held(cells[resnet])}
    out["claim2_baselines"] = {"rule": "BD-rate of SLIM against the baseline (pchip, monotone envelopes, ResNet), CI "
                                       "below 0, over at least 20 points of shared top-1",
                               "per_baseline": per_baseline, "byte_floor_96px": claims.byte_floors()}
    # 3.
    diffusion = {p: {c: compare("SLIM", "SLIM w/o diffusion", p, c) for c in classifiers} for p in levels}
    diffusion_noroi = {p: {c: compare("SLIM w/o RoI", "SLIM w/o RoI w/o diffusion", p, c) for c in classifiers}
                       for p in no_levels}
    lowest_two = levels[:2]
    out["claim3_diffusion"] = {
        "rule": "top-1 with minus without diffusion (same bitstreams) at SLIM's two lowest levels: 95% paired-bootstrap "
                "CI above 0 (ResNet); every level of both variants reported",
        "per_level": diffusion, "per_level_without_roi": diffusion_noroi,
        "held_at": {p: bool(diffusion[p][resnet]["difference"]["low"] > 0) for p in lowest_two},
        "held": bool(all(diffusion[p][resnet]["difference"]["low"] > 0 for p in lowest_two)),
    }
    # the caption, and the decode steps
    out["caption"] = {
        "true_vs_empty": {p: {c: compare("SLIM", "SLIM empty caption", p, c) for c in classifiers} for p in levels},
        "true_vs_wrong_kind": {p: {c: compare("SLIM", "SLIM wrong caption", p, c) for c in classifiers}
                               for p in levels},
        "caption_only": {c: {"top1": claims.accuracy_of(rows, "caption only", "caption", c),
                             "kind": claims.accuracy_of(rows, "caption only", "caption", c, kind=True)}
                         for c in classifiers},
        "chance_top1": 100.0 / len(toy_world.CLASS_NAMES), "chance_kind": 100.0 / len(toy_world.KINDS),
    }
    one_step = int(DECODE["num_inference_steps"] * DECODE["strength"])
    out["decoding_steps"] = {
        p: {k: {c: claims.accuracy_of(rows, "SLIM" if k == one_step else f"SLIM {k} steps", p, c)
                for c in classifiers} for k in STEPS} for p in levels}
    return {"claims": out, "summary": summary, "kind_accuracy": claims.kind_accuracies(rows, classifiers),
            "bootstraps": bootstraps}


def _verdict(held: Optional[bool]) -> str:
    return {True: "**held**", False: "**did not hold**", None: "**not decided**"}[held]


def _bd_cell(cell: dict) -> str:
    """A BD-rate cell of :func:`bd_with_overlap`: pchip (with its interval) and cubic, or why it was refused."""
    if "refused" in cell:
        return f"refused ({cell['refused']})"

    def one(method):
        bd = cell[method]["bd_rate"]
        if bd["estimate"] is None:
            return f"{method} not computable ({bd['error']})"
        return f"{method} {statistics.interval_text(bd)} %"

    lo, hi = cell["overlap_top1"]
    return f"{one('pchip')}; {one('cubic')}; over top-1 {lo:.1f}–{hi:.1f} %"


def _difference(cell: dict) -> str:
    d = cell["difference"]
    return f"{d['difference']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]"


def claims_markdown(claims: dict, classifiers: Sequence[str] = CLASSIFIERS) -> str:
    """``results.json``'s claims as the tables a reader reads: every verdict with the numbers and intervals it rests
    on (the ResNet decides; ResNet-B beside it). Nothing here decides anything."""
    resnet, second = classifiers[0], classifiers[1]
    out = ["# Toy world v3, part 2: the claims\n",
           f"The ResNet decides, ResNet-B (never seen in training) is reported beside it; 95 % intervals from paired "
           f"bootstrap over images; a BD-rate over less than {claims['min_overlap_points']:g} points of shared top-1 is "
           f"refused. BD-rates: SLIM against the other curve, negative = SLIM needs fewer bits.\n"]
    c1 = claims["claim1_roi"]
    out += [f"## Claim 1, RoI: {_verdict(c1['held'])}\n", f"Rule: {c1['rule']}.\n",
            "| level | inside ÷ outside bits, with RoI | without RoI | difference [95 %] |", "|---|---|---|---|"]
    for level, cell in c1["bits_inside_outside"].items():
        d = cell["difference"]
        out.append(f"| {level} | {cell['with_roi']['ratio']:.2f} | {cell['without_roi']['ratio']:.2f} | "
                   f"{d['value']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] |")
    bits_said = {True: "held", False: "did not hold"}[c1["bits_part_held"]]
    bd_said = {True: "held", False: "did not hold", None: "not decided"}[c1["bd_part_held"]]
    out += ["", f"Bits part: {bits_said}. BD-rate part: {bd_said} "
                f"(paper: {c1['paper_bd_rate']:+.2f} %).\n",
            f"- SLIM against SLIM w/o RoI, {resnet}: {_bd_cell(c1['bd_rate_vs_without_roi'][resnet])}",
            f"- {second}: {_bd_cell(c1['bd_rate_vs_without_roi'][second])}", ""]
    c2 = claims["claim2_baselines"]
    out += ["## Claim 2, against the baselines\n", f"Rule: {c2['rule']}.\n",
            f"| baseline | verdict | {resnet} | {second} |", "|---|---|---|---|"]
    for name, cell in c2["per_baseline"].items():
        out.append(f"| {name} | {_verdict(cell['held'])} | {_bd_cell(cell['bd'][resnet])} | "
                   f"{_bd_cell(cell['bd'][second])} |")
    c3 = claims["claim3_diffusion"]
    lowest = ", ".join(c3["held_at"])
    out += ["", f"## Claim 3, diffusion: {_verdict(c3['held'])}\n",
            f"Rule: {c3['rule']} (decided at {lowest}).\n",
            f"| variant | level | top-1 with diffusion ({resnet}) | difference with − without, {resnet} [95 %] | "
            f"{second} |", "|---|---|---|---|---|"]
    for variant, key, codec in (("SLIM", "per_level", "SLIM"), ("SLIM w/o RoI", "per_level_without_roi", "SLIM w/o RoI")):
        for level, cell in c3[key].items():
            out.append(f"| {variant} | {level} | {cell[resnet][codec]['top1']:.1f} | {_difference(cell[resnet])} | "
                       f"{_difference(cell[second])} |")
    cap = claims["caption"]
    out += ["", "## The caption\n",
            f"Top-1 of SLIM with the true caption minus with an empty one and with the next kind's ({resnet}, points "
            f"[95 %]); the caption decoded alone by the prior: {resnet} top-1 "
            f"{cap['caption_only'][resnet]['top1']['top1']:.1f} %, kind {cap['caption_only'][resnet]['kind']['top1']:.1f} % "
            f"(chance {cap['chance_top1']:.1f} % and {cap['chance_kind']:.1f} %).\n",
            "| level | true − empty | true − wrong kind |", "|---|---|---|"]
    for level in claims["levels"]:
        out.append(f"| {level} | {_difference(cap['true_vs_empty'][level][resnet])} | "
                   f"{_difference(cap['true_vs_wrong_kind'][level][resnet])} |")
    steps = sorted({int(k) for level in claims["decoding_steps"].values() for k in level})
    out += ["", f"## Decode steps from t = 499 (top-1, {resnet})\n",
            "| level | " + " | ".join(f"{k} step{'s' * (k > 1)}" for k in steps) + " |",
            "|---" * (len(steps) + 1) + "|"]
    for level, by_steps in claims["decoding_steps"].items():
        cells = {int(k): v for k, v in by_steps.items()}
        out.append(f"| {level} | " + " | ".join(f"{cells[k][resnet]['top1']:.1f}" for k in steps) + " |")
    return "\n".join(out) + "\n"


def write_results(res: Path, rows: Sequence[dict], decided: dict, meta: dict) -> None:
    res.mkdir(parents=True, exist_ok=True)
    summary = decided["summary"]
    classifiers = list(CLASSIFIERS)
    statistics.write_rows_gz(rows, res / "rows.jsonl.gz")
    write_atomically(res / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    results = {"meta": meta, "claims": decided["claims"], "kind_accuracy": decided["kind_accuracy"]}
    write_atomically(res / "results.json", (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    curves = [c for c in CURVES if c in summary]
    statistics.plot_rate_accuracy_bands(summary, classifiers, res / "rate_accuracy.png", codecs=curves,
                                        titles=dict(zip(classifiers, ["ResNet (RoI masks, task loss, evaluation)",
                                                                      "ResNet-B (never seen in training)"])))
    tables = []
    # decide's bootstrap of each BD-rate, not a second one; the baselines first, then w/o RoI
    for anchor, bd in sorted(decided["bootstraps"].items(), key=lambda item: item[0] == "SLIM w/o RoI"):
        shared = {c: overlap(summary, anchor, "SLIM", c) for c in classifiers}
        tables.append(f"### SLIM against {anchor}\n\nshared top-1 (points): "
                      + ", ".join(f"{c} {'none' if s is None else f'{s[0]:.1f}–{s[1]:.1f}'}" for c, s in shared.items())
                      + f" (a BD-rate over less than {MIN_OVERLAP:g} points is refused in results.json)\n\n"
                      + statistics.bd_table_with_intervals(bd))
    write_atomically(res / "bd_rate.md", ("\n\n".join(tables) + "\n").encode("utf-8"))
    write_atomically(res / "claims.md", claims_markdown(decided["claims"], classifiers).encode("utf-8"))
    log(f"results in {res}")


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument("--images", type=int, default=None, help="default: 1000 (test), 200 (validation)")
    parser.add_argument("--roi", type=Path, help="SLIM: a variable-rate pipeline")
    parser.add_argument("--noroi", type=Path, help="SLIM w/o RoI: a variable-rate pipeline")
    parser.add_argument("--mse", type=Path, help="baseline_curve.py --kind mse's --out")
    parser.add_argument("--task", type=Path, help="baseline_curve.py --kind task's --out")
    parser.add_argument("--classifier", type=Path, default=BUNDLED / "classifier")
    parser.add_argument("--classifier-b", type=Path, default=None,
                        help="the second classifier (default: trained into WORK/foundation/resnet_b)")
    parser.add_argument("--bits-images", type=int, default=200, help="images for the bits inside/outside the target")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--results", type=Path, default=None, help="default: WORK/results")
    parser.add_argument("--smoke", action="store_true",
                        help="the bundled model as both variants, tiny learned codecs, 3 images: the numbers mean nothing")
    parser.add_argument("--slim-only", action="store_true",
                        help="stages 1-4 for SLIM's codecs only, then stop without deciding anything (no --mse/--task "
                             "needed): the cached rows let the full call later evaluate just the rest")
    args = parser.parse_args(argv)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    classifier_steps = 1000
    if args.smoke:
        args.roi = args.noroi = args.roi or BUNDLED / "slim"
        args.images, args.bits_images, args.replicates, args.batch, classifier_steps = 3, 2, 20, 4, 2
        if args.mse is None:
            for kind in ("mse", "task"):
                import baseline_curve

                baseline_curve.main(["--kind", kind, "--smoke", "--out", str(work / f"smoke-{kind}"),
                                     "--lambdas", "0.001", "0.1", *(["--init", str(work / "smoke-mse")]
                                                                    if kind == "task" else [])])
            args.mse, args.task = work / "smoke-mse", work / "smoke-task"
    missing = [name for name in ("roi", "noroi") + (() if args.slim_only else ("mse", "task"))
               if getattr(args, name) is None]
    if missing:
        parser.error(f"give {', '.join('--' + m for m in missing)} (or --smoke)")
    if args.results is not None and args.results.resolve() == (HERE / "results" / "v3").resolve() and (
            args.smoke or args.split != "test"):
        parser.error("benchmarks/toy/results/v3 holds the test set's results: a smoke or validation run writes "
                     "elsewhere (leave --results out: WORK/results)")
    n = args.images or (1000 if args.split == "test" else 200)

    import datasets

    from slim_diffusers.evaluation.harness import Classifier
    from slim_diffusers.evaluation.run import run_evaluation

    classifier_b = args.classifier_b or ensure_classifier_b(work, classifier_steps)
    data = datasets.load_from_disk(str(ensure_data(work, args.split, n)))
    roi, noroi = load_pipeline(args.roi), load_pipeline(args.noroi)
    levels = [0, roi.num_rate_levels - 1] if args.smoke else None  # the smoke run: the two ends
    codecs = slim_codecs(roi, noroi, levels)
    if not args.slim_only:
        codecs += pillow_codecs() + learned_codecs(args.mse, args.task)
    classifiers = [Classifier.from_pretrained(str(args.classifier), name="resnet"),
                   Classifier.from_pretrained(str(classifier_b), name="resnet_b")]
    t0, cpu0 = time.perf_counter(), time.process_time()
    log(f"{len(codecs)} codecs on {n} {args.split} images")
    run_evaluation(work / "eval", data, codecs, classifiers, caption_column="caption",
                   anchor="SLIM" if args.slim_only else "JPEG", envelope=True,
                   batch_size=args.batch)
    bits_file = work / f"bits-{args.split}-{n}.json"
    if not bits_file.is_file():
        bits = {name: [{k: v.tolist() for k, v in level.items()} for level in bits_per_level(pipe, data, args.bits_images)]
                for name, pipe in (("roi", roi), ("noroi", noroi))}
        write_atomically(bits_file, json.dumps(bits).encode("utf-8"))
    bits = {name: [{k: np.asarray(v) for k, v in level.items()} for level in levels]
            for name, levels in json.loads(bits_file.read_text()).items()}
    if args.slim_only:
        log(f"SLIM's rows and bits cached under {work}; nothing decided (--slim-only)")
        return 0
    rows = latest_rows(work / "eval")
    decided = decide(rows, bits, args.replicates)
    meta = {"split": args.split, "images": n, "replicates": args.replicates, "decode": DECODE,
            "caption_only_decode": CAPTION_ONLY, "models": {k: str(getattr(args, k)) for k in
                                                            ("roi", "noroi", "mse", "task")},
            "classifier_b": str(classifier_b), "smoke": bool(args.smoke),
            "this_call_wall_seconds": round(time.perf_counter() - t0, 1),
            "this_call_cpu_seconds": round(time.process_time() - cpu0, 1), "date": time.strftime("%Y-%m-%d %H:%M"),
            "device": "cpu"}
    write_results(args.results or work / "results", rows, decided, meta)
    shutil.copy(work / "eval" / "summary.json", (args.results or work / "results") / "harness_summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
