"""Toy world v2: one variable-rate SLIM model against one SLIM model per rate weight λr.

    .venv/bin/python benchmarks/toy/variable_rate.py --work-dir outputs/toy-v2       # finished stages are reused
    .venv/bin/python benchmarks/toy/variable_rate.py --smoke --work-dir /tmp/vr      # the same code at tiny sizes (CI)
    .venv/bin/python benchmarks/toy/variable_rate.py --export --decode 1 0.5 --timestep-spacing trailing   # bundle it

Stages, cached under ``--work-dir`` (the work directory of ``run_toy.py``: a finished run's foundation models, data
and per-λ models are reused, and an interrupted study resumes):

1. the foundation models and the data of ``run_toy.py`` (the learned baselines are not needed here);
2. side by side, one thread each: the per-λ SLIM models with RoI masks (``run_toy.py``'s chain: stage 1 at λr = 1
   from the untrained model, fine-tuned to the other λr, stage 2 at each λr), and one variable-rate model
   (``--lambda_rate`` with one λr per level, every training image at a level drawn at random): stage 1 from the
   same untrained model, then stage 2, with as many optimizer steps in each stage as the per-λ chain takes in all;
3. evaluation through the harness of ``slim evaluate`` (real bytes) on the test set: the per-λ curve, the
   variable-rate model at each trained level and at rates between levels, and both decoded without diffusion;
4. results (``benchmarks/toy/results/variable_rate/``): the BD-rate of the variable-rate curve against the per-λ
   curve (paired bootstrap over images), accuracy and bits per pixel per level with intervals, the paired accuracy
   difference at each λr both have, what diffusion adds in each, and the training time of the one run against the
   per-λ runs.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import claims  # noqa: E402
import run_toy  # noqa: E402
from run_toy import log, rate_label  # noqa: E402

PER_LAMBDA, VARIABLE = "SLIM per λ", "SLIM variable rate"
BETWEEN = "SLIM variable rate, between levels"
CURVES = (PER_LAMBDA, VARIABLE, f"{PER_LAMBDA} w/o diffusion", f"{VARIABLE} w/o diffusion", BETWEEN)


@dataclass(frozen=True)
class VariableRateConfig:
    """The variable-rate model's settings, fixed before any of its results was seen."""

    # λr of the levels, level 0 (the fewest bits) first: the per-λ points (16, 4, 1, 0.25) and one between each pair
    levels: Tuple[float, ...] = (16.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.25)
    # steps, batch, learning rate: as many steps as the per-λ chain's stage 1 (500 + 3 × 150) and stage 2 (4 × 80)
    stage1: Tuple[int, int, float] = (950, 16, 1e-3)
    stage2: Tuple[int, int, float] = (320, 16, 3e-4)
    between: Tuple[float, ...] = (0.5, 2.5, 4.5)  # rates between trained levels


SMOKE = VariableRateConfig(levels=(4.0, 1.0), stage1=(2, 4, 1e-3), stage2=(2, 4, 3e-4), between=(0.5,))


def level_of(cfg: VariableRateConfig, lambda_r: float) -> int:
    return list(cfg.levels).index(lambda_r)


# ---------------------------------------------------------------------------------------------- training
def variable_rate_chain(work: Path, toy: run_toy.ToyConfig, cfg: VariableRateConfig):
    init = run_toy.stage_init(work)
    data = work / "data" / "train"
    s1, s2 = work / "slim" / "vr-stage1", work / "slim" / "vr-stage2"
    stage2_extra = ["--classifier_name_or_path", work / "foundation" / "resnet", "--lpips_net", "alex",
                    "--lpips_random_init"]
    jobs = [
        run_toy._train_job("slim/vr-stage1", "train_stage1.py", init, data, s1, list(cfg.levels), False, cfg.stage1, toy),
        run_toy._train_job("slim/vr-stage2", "train_stage2.py", s1, data, s2, list(cfg.levels), False, cfg.stage2, toy,
                           stage2_extra),
    ]
    return jobs, s2


def train(work: Path, toy: run_toy.ToyConfig, cfg: VariableRateConfig) -> Tuple[dict, Path, dict]:
    chains, models = run_toy.slim_chains(work, toy, variants=("roi",))
    vr_jobs, vr_model = variable_rate_chain(work, toy, cfg)
    record = work / "variable_rate_seconds.json"
    run_toy.run_chains({"per-λ": chains["roi"], "variable rate": vr_jobs}, work, {}, record=record)
    # jobs' wall times from the runs that did the work: run_toy.py's record for per-λ models it trained, then this
    # study's
    toy_record = work / "stage_seconds.json"
    seconds = json.loads(toy_record.read_text()).get("jobs", {}) if toy_record.is_file() else {}
    seconds.update(json.loads(record.read_text()) if record.is_file() else {})
    return models["roi"], vr_model, seconds


# -------------------------------------------------------------------------------------------- evaluation
def evaluation_codecs(toy: run_toy.ToyConfig, cfg: VariableRateConfig, per_lambda: Dict[float, Path], vr_model: Path):
    from slim_diffusers.evaluation.codecs import SLIMCodec, slim_rate_points

    decode = dict(toy.decode)
    fixed = {rate_label(r): run_toy.load_pipeline(p) for r, p in sorted(per_lambda.items())}
    vr = run_toy.load_pipeline(vr_model)
    levels, level_rates = slim_rate_points({"vr": vr})
    between, between_rates = slim_rate_points({"vr": vr}, cfg.between)
    once = run_toy.EncodeOnce()
    return [once.share(c) for c in (
        SLIMCodec(fixed, name=PER_LAMBDA, **decode),
        SLIMCodec(fixed, name=f"{PER_LAMBDA} w/o diffusion", use_diffusion=False),
        SLIMCodec(levels, rates=level_rates, name=VARIABLE, **decode),
        SLIMCodec(levels, rates=level_rates, name=f"{VARIABLE} w/o diffusion", use_diffusion=False),
        SLIMCodec(between, rates=between_rates, name=BETWEEN, **decode),
    )]


def evaluate(work: Path, toy: run_toy.ToyConfig, cfg: VariableRateConfig, per_lambda, vr_model) -> Tuple[list, float]:
    import datasets

    from slim_diffusers.evaluation.harness import Classifier
    from slim_diffusers.evaluation.run import run_evaluation

    torch.set_num_threads(2)
    codecs = evaluation_codecs(toy, cfg, per_lambda, vr_model)
    classifiers = [Classifier.from_pretrained(str(work / "foundation" / n), name=n) for n in run_toy.CLASSIFIERS]
    ds = datasets.load_from_disk(str(work / "data" / "test"))
    t0 = time.perf_counter()
    run = run_evaluation(work / "vr-eval", ds, codecs, classifiers, caption_column="caption", anchor=PER_LAMBDA,
                         envelope=True, batch_size=toy.eval_batch)
    return codecs, (time.perf_counter() - t0) if run.rows_written else None


# ---------------------------------------------------------------------------------------------- results
def measure(work: Path, toy: run_toy.ToyConfig, cfg: VariableRateConfig, seconds: dict) -> dict:
    from slim_diffusers.evaluation import statistics
    from slim_diffusers.evaluation.harness import latest_rows

    rows = latest_rows(work / "vr-eval")
    classifiers = list(run_toy.CLASSIFIERS)
    reps = toy.bootstrap_replicates
    summary = statistics.summarize_with_intervals(rows, classifiers)
    bd = statistics.bootstrap_bd(rows, classifiers, anchor=PER_LAMBDA, codecs=[VARIABLE], replicates=reps)
    bd_no_diffusion = statistics.bootstrap_bd(rows, classifiers, anchor=f"{PER_LAMBDA} w/o diffusion",
                                              codecs=[f"{VARIABLE} w/o diffusion"], replicates=reps)

    def paired(codec_a, point_a, codec_b, point_b, clf):
        a = claims._by_image(rows, codec_a, point_a, clf)
        b = claims._by_image(rows, codec_b, point_b, clf)
        images = sorted(set(a) & set(b))
        ca, cb = claims._correct(a, clf, images), claims._correct(b, clf, images)
        bytes_a = np.mean([a[i]["bytes"] for i in images])
        bytes_b = np.mean([b[i]["bytes"] for i in images])
        return {"a": claims._accuracy(ca), "b": claims._accuracy(cb),
                "difference": claims._paired_difference(ca, cb, reps),
                "mean_bytes": {"a": float(bytes_a), "b": float(bytes_b)}}

    levels = {}
    for level, lam in enumerate(cfg.levels):
        point = f"rate={level}"
        entry = summary[VARIABLE][point]
        levels[point] = {"lambda_r": lam, "mean_bpp": entry["mean_bpp"], "mean_bytes": entry["mean_bytes"],
                         "top1": {c: claims.accuracy_of(rows, VARIABLE, point, c) for c in classifiers},
                         "top1_without_diffusion": {c: claims.accuracy_of(rows, f"{VARIABLE} w/o diffusion", point, c)
                                                    for c in classifiers}}
    bpps = [levels[f"rate={i}"]["mean_bpp"] for i in range(len(cfg.levels))]
    between = {}
    for rate in cfg.between:
        point = f"rate={rate:g}"
        low, high = levels[f"rate={int(np.floor(rate))}"], levels[f"rate={int(np.floor(rate)) + 1}"]
        between[point] = {"mean_bpp": summary[BETWEEN][point]["mean_bpp"],
                          "between_neighbours": bool(low["mean_bpp"] <= summary[BETWEEN][point]["mean_bpp"] <= high["mean_bpp"]),
                          "top1": {c: claims.accuracy_of(rows, BETWEEN, point, c) for c in classifiers}}
    matched, diffusion = {}, {}
    for lam in sorted({*cfg.levels} & {*toy.rate_points}, reverse=True):
        point_vr, point_fixed = f"rate={level_of(cfg, lam)}", rate_label(lam)
        matched[point_fixed] = {c: paired(VARIABLE, point_vr, PER_LAMBDA, point_fixed, c) for c in classifiers}
        diffusion[point_fixed] = {
            "per_lambda": {c: paired(PER_LAMBDA, point_fixed, f"{PER_LAMBDA} w/o diffusion", point_fixed, c)["difference"]
                           for c in classifiers},
            "variable_rate": {c: paired(VARIABLE, point_vr, f"{VARIABLE} w/o diffusion", point_vr, c)["difference"]
                              for c in classifiers}}
    per_lambda_jobs = {k: v for k, v in seconds.items() if k.startswith("slim/") and not k.startswith("slim/vr-")
                       and "noroi" not in k}
    vr_jobs = {k: v for k, v in seconds.items() if k.startswith("slim/vr-")}
    cell = bd["deltas"][VARIABLE][classifiers[0]]["pchip"]["bd_rate"]
    return {
        "target": "BD-rate of the variable-rate curve against the per-λ curve no worse than +5 % (ResNet, pchip, "
                  "monotone envelopes), with a 95 % paired-bootstrap interval",
        "bd_rate_vs_per_lambda": bd["deltas"][VARIABLE],
        "bd_rate_vs_per_lambda_without_diffusion": bd_no_diffusion["deltas"][f"{VARIABLE} w/o diffusion"],
        "target_met": None if cell["estimate"] is None else bool(cell["estimate"] <= 5.0),
        "target_met_with_interval": None if cell["high"] is None else bool(cell["high"] <= 5.0),
        "levels": levels,
        "bpp_rises_with_rate": bool(all(a < b for a, b in zip(bpps, bpps[1:]))),
        "between_levels": between,
        "same_lambda_variable_minus_per_lambda": matched,
        "what_diffusion_adds": diffusion,
        "training_seconds": {"variable_rate_jobs": vr_jobs, "per_lambda_jobs": per_lambda_jobs,
                             "variable_rate": round(sum(vr_jobs.values()), 1),
                             "per_lambda": round(sum(per_lambda_jobs.values()), 1),
                             "ratio": (round(sum(vr_jobs.values()) / sum(per_lambda_jobs.values()), 3)
                                       if vr_jobs and per_lambda_jobs else None)},
        "summary": summary,
        "bd_table": bd,
    }


def write_results(work: Path, res: Path, results: dict) -> None:
    from slim_diffusers.evaluation import statistics
    from slim_diffusers.utils.file_utils import write_atomically
    from slim_diffusers.evaluation.harness import latest_rows

    res.mkdir(parents=True, exist_ok=True)
    statistics.write_rows_gz(latest_rows(work / "vr-eval"), res / "rows.jsonl.gz")
    summary, bd = results.pop("summary"), results.pop("bd_table")
    write_atomically(res / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    write_atomically(res / "results.json", (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    classifiers = bd["classifiers"]
    statistics.plot_rate_accuracy_bands(summary, classifiers, res / "rate_accuracy.png",
                                        codecs=[c for c in CURVES if c in summary],
                                        titles=dict(zip(classifiers, ["ResNet (RoI masks, task loss, evaluation)",
                                                                      "ResNet-B (never seen in training)"])))
    write_atomically(res / "bd_rate.md", statistics.bd_table_with_intervals(bd).encode("utf-8"))
    print(f"results in {res}", flush=True)


def export(work: Path, toy: run_toy.ToyConfig, cfg: VariableRateConfig, vr_model: Path, decode=None,
           timestep_spacing=None) -> None:
    """Bundle the variable-rate model as the demo model (``run_toy.export_default``), with its levels in ``demo.json``;
    ``decode``: (denoising steps run, strength) and ``timestep_spacing`` of its scheduler, as the few-step study
    (``few_step.py``) chose them."""
    settings = dict(toy.decode)
    if decode is not None:
        steps, strength = int(decode[0]), float(decode[1])
        # k steps at strength s run on a schedule of round(k / s) steps (benchmarks/toy/few_step.py)
        settings.update(num_inference_steps=max(round(steps / strength), steps), strength=strength)
    levels = {str(level): lam for level, lam in enumerate(cfg.levels)}
    run_toy.export_default(work, toy, {}, model=vr_model, decode=settings,
                           demo={"rate_levels": levels, "default_rate": len(cfg.levels) - 1},
                           trained_as=f"as one variable-rate model with {len(cfg.levels)} rate levels (λr "
                           + ", ".join(f"{lam:g}" for lam in cfg.levels) + " for levels 0 … "
                           + f"{len(cfg.levels) - 1}; `slim demo --rate R`)",
                           command="benchmarks/toy/variable_rate.py --export" + (
                               f" --decode {int(decode[0])} {float(decode[1]):g}" if decode is not None else "") + (
                               f" --timestep-spacing {timestep_spacing}" if timestep_spacing else ""))
    if timestep_spacing:
        from diffusers import DDIMScheduler

        folder = run_toy.REPO / "slim_diffusers" / "assets" / "toy" / "slim" / "scheduler"
        scheduler = DDIMScheduler.from_pretrained(str(folder))
        DDIMScheduler.from_config(scheduler.config, timestep_spacing=timestep_spacing).save_pretrained(str(folder))


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=run_toy.REPO / "outputs" / "toy-v2",
                        help="the work directory of run_toy.py (its stages are reused)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default: benchmarks/toy/results/variable_rate; with --smoke, WORK_DIR/results-variable-rate")
    parser.add_argument("--smoke", action="store_true", help="tiny step counts: checks the code path in minutes")
    parser.add_argument("--export", action="store_true",
                        help="bundle the variable-rate model into slim_diffusers/assets as the demo model")
    parser.add_argument("--decode", nargs=2, type=float, metavar=("STEPS", "STRENGTH"), default=None,
                        help="with --export: the bundled model's decoding settings, denoising steps run and strength "
                        "(default: the toy run's, 4 steps at strength 0.5)")
    parser.add_argument("--timestep-spacing", choices=["leading", "trailing"], default=None,
                        help="with --export: the bundled model's DDIM timestep spacing (default: the model's own)")
    args = parser.parse_args(argv)
    if args.smoke and args.export:
        parser.error("--export bundles a real run's model; not with --smoke")
    toy, cfg = (run_toy.SMOKE, SMOKE) if args.smoke else (run_toy.ToyConfig(), VariableRateConfig())
    if not set(toy.rate_points) <= set(cfg.levels):
        raise SystemExit(f"the levels {cfg.levels} must include the per-λ rate points {toy.rate_points}")
    torch.set_num_threads(2)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    results_dir = args.results_dir or (work / "results-variable-rate" if args.smoke else HERE / "results" / "variable_rate")
    t0 = time.perf_counter()
    run_toy.stage_foundation(work, toy, {}, learned_baselines=False)
    run_toy.stage_data(work, toy, {})
    per_lambda, vr_model, seconds = train(work, toy, cfg)
    log("evaluation")
    _, eval_seconds = evaluate(work, toy, cfg, per_lambda, vr_model)
    earlier = results_dir / "results.json"
    if eval_seconds is None and earlier.is_file():  # every row was there: the time is that of the run that made them
        eval_seconds = json.loads(earlier.read_text()).get("evaluation_seconds_when_run")
    results = measure(work, toy, cfg, seconds)
    results.update({
        "config": {**asdict(cfg), "per_lambda_rate_points": list(toy.rate_points), "decode": dict(toy.decode),
                   "test_images": toy.num_test, "per_lambda_steps": {"stage1_base": toy.slim_stage1_base,
                   "stage1_finetune": toy.slim_stage1_finetune, "stage2": toy.slim_stage2}},
        "evaluation_seconds_when_run": eval_seconds,
        "seconds_this_call": round(time.perf_counter() - t0, 1),
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    })
    write_results(work, results_dir, results)
    if args.export:
        export(work, toy, cfg, vr_model, args.decode, args.timestep_spacing)
    brief = {k: results[k] for k in ("target_met", "target_met_with_interval", "bpp_rises_with_rate", "training_seconds")}
    brief["bd_rate"] = {c: results["bd_rate_vs_per_lambda"][c]["pchip"]["bd_rate"] for c in run_toy.CLASSIFIERS}
    print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
