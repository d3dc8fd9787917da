"""Toy world v3, part 2, gathered: every training run's state by its stopping rule (with its end slopes), the CPU it
spent, and the validation curves — read from the curves the runs committed under ``results/v3/``.

    .venv/bin/python benchmarks/toy/part2_report.py

Writes ``results/v3/part2_runs.json`` and ``results/v3/part2_curves.png`` (SLIM's mean top-1 over its levels and the
MSE codec's PSNR against training steps). Every number comes from a curve line a run wrote after one of its
measurements (``train_curve.py``, ``baseline_curve.py``): training CPU seconds are the run's own counter at its last
measurement, measuring CPU seconds the sum over its measurements. The CPU is a lower bound: work lost to kills between
checkpoints, the data preparation, λt's measurement and the final evaluation are not in it. Runs not started yet are
listed as such, not left out.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from convergence import read_lines  # noqa: E402

from slim_diffusers.utils.file_utils import write_atomically  # noqa: E402

VARIANTS = ("roi", "noroi")
# the learned baselines' main λ (docs/toy.md, read off their pilot by rate_range.py --baseline)
MAIN_LAMBDAS = ("0.000316", "0.00061", "0.00118", "0.00227", "0.00439", "0.00848", "0.0164", "0.0316")
# and the λ the pilot's rule added where a task codec's curve missed an end (docs/toy.md, "The task codec's near-chance
# side")
BASELINE_LAMBDAS = ("4.4e-05", "8.49e-05", "0.000164") + MAIN_LAMBDAS
# (group, what it is, its curves under results/v3); a run halted by a rule other than its stopping rule is in HALTED
GROUPS = (
    ("slim_pilot", "SLIM pilots: the λr range (2000 steps each)", ["pilot_{v}_curve.jsonl", "pilot2_{v}_curve.jsonl"]),
    ("slim_paper_loss", "SLIM main runs with the paper's loss, stopped at step 2000 by the check",
     ["stage1_{v}_curve.jsonl"]),
    ("slim_stage1", "SLIM stage 1 (main runs, with the remedy)", ["remedy_stage1_{v}_curve.jsonl"]),
    ("slim_stage2", "SLIM stage 2 (main runs, with the remedy)", ["remedy_stage2_{v}_curve.jsonl"]),
    ("baseline_pilot", "the learned baselines' pilot: the λ range (2000 steps each)", ["bpilot-mse/*/curve.jsonl"]),
    ("mse_clipbug", "the MSE codec's first main runs, stopped by the clipping bug found in their training",
     [f"mse-clipbug/lambda={lam}/curve.jsonl" for lam in MAIN_LAMBDAS[:2]]),
    ("mse", "the MSE codec, one model per λ", [f"mse/lambda={lam}/curve.jsonl" for lam in BASELINE_LAMBDAS]),
    ("task", "the task codec, one model per λ (from the MSE model of its λ)",
     [f"task/lambda={lam}/curve.jsonl" for lam in BASELINE_LAMBDAS]),
    ("lost", "baseline runs whose state was lost with the outputs/ folder between sessions, trained again",
     ["lost/mse/lambda=*/curve.jsonl", "lost/task/lambda=*/curve.jsonl"]),
)
METRICS = ("top1", "top1_vae", "bpp", "psnr")
HALTED = {"slim_paper_loss": "by the step-2000 check (docs/toy.md), not by its stopping rule",
          "mse_clipbug": "by the bug found in the baselines' training (docs/toy.md); trained again from scratch",
          "lost": "by the loss of its state with outputs/ (docs/toy.md, \"When outputs/ is lost\"); trained again"}


def run_summary(lines: List[dict]) -> dict:
    """One run's state at its last measurement."""
    last = lines[-1]
    verdict = last.get("verdict", {})
    return {
        "step": last["step"], "measurements": len(lines),
        "stopped": bool(verdict.get("stop", False)), "reason": verdict.get("reason"),
        "end_slopes": verdict.get("end_slopes"),
        "last": {m: last[m] for m in METRICS if m in last},
        "train_cpu_seconds": float(last.get("train_cpu_seconds", 0.0)),
        "measure_cpu_seconds": round(sum(float(x.get("measure_cpu_seconds", 0.0)) for x in lines), 1),
        "train_devices": sorted({x.get("train_device", "cpu") for x in lines}),
        "date": last.get("date"),
        "points": [{"step": x["step"], **{m: x[m] for m in METRICS if m in x}} for x in lines],
    }


def build(results: Path) -> dict:
    groups: Dict[str, dict] = {}
    seconds = 0.0
    for key, what, patterns in GROUPS:
        runs = {}
        for pattern in patterns:
            names = [pattern.format(v=v) for v in VARIANTS] if "{v}" in pattern else [pattern]
            for name in names:
                files = sorted(results.glob(name)) if "*" in name else [results / name]
                for file in files:
                    lines = read_lines(file)
                    label = str(file.relative_to(results))
                    runs[label] = run_summary(lines) if lines else None  # None: not started
                    if lines and key in HALTED:
                        runs[label].update(stopped=True, reason=HALTED[key])
        started = [r for r in runs.values() if r]
        train = sum(r["train_cpu_seconds"] for r in started)
        measure = sum(r["measure_cpu_seconds"] for r in started)
        seconds += train + measure
        groups[key] = {"what": what, "runs": runs, "train_cpu_hours": round(train / 3600, 2),
                       "measure_cpu_hours": round(measure / 3600, 2),
                       "all_stopped": len(started) == len(runs) > 0 and all(r["stopped"] for r in started)}
    lambda_task = {v: json.loads((results / f"remedy_lambda_task_{v}.json").read_text())
                   for v in VARIANTS if (results / f"remedy_lambda_task_{v}.json").is_file()}
    # no date of its own: the report is a function of the curves (each run's last measurement has its date), so
    # running it again on the same curves leaves the committed files as they are
    return {"groups": groups, "lambda_task": lambda_task,
            "total_cpu_hours": round(seconds / 3600, 2)}


def table(report: dict) -> str:
    """The report as a Markdown table: one row per run."""
    rows = ["| run | steps | state | end slopes (change over the rule's horizon) | last measurement | "
            "CPU h (train + measure) |",
            "| --- | ---: | --- | --- | --- | ---: |"]
    for group in report["groups"].values():
        for name, run in group["runs"].items():
            if run is None:
                rows.append(f"| {name} | 0 | not started | | | |")
                continue
            state = "stopped" if run["stopped"] else "running"
            slopes = ", ".join(f"{k} {'n/a' if v is None else f'{v:+.3g}'}"  # n/a: too few measurements yet
                               for k, v in (run["end_slopes"] or {}).items())
            last = ", ".join(f"{k} {v:.3g}" for k, v in run["last"].items())
            cpu = (run["train_cpu_seconds"] + run["measure_cpu_seconds"]) / 3600
            rows.append(f"| {name} | {run['step']} | {state}: {run['reason']} | {slopes} | {last} | {cpu:.2f} |")
    return "\n".join(rows) + f"\n\ntotal: {report['total_cpu_hours']} CPU hours\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    # the main runs' levels only (the pilots' means are over other λr and not comparable)
    styles = {"slim_paper_loss": "--", "slim_stage1": "-", "slim_stage2": "-"}
    offset = {}  # stage 2 continues stage 1's steps on the plot
    for key, ls in styles.items():
        for name, run in report["groups"][key]["runs"].items():
            if run is None:
                continue
            variant = "noroi" if "noroi" in name else "roi"
            start = offset.get(variant, 0) if key == "slim_stage2" else 0
            steps = [start + p["step"] for p in run["points"]]
            ax1.plot(steps, [p["top1"] for p in run["points"]], ls, marker="o", ms=3,
                     color="C0" if variant == "roi" else "C1", alpha=1.0 if ls == "-" else 0.5,
                     label=name.replace("_curve.jsonl", ""))
            if key == "slim_stage1":
                offset[variant] = run["step"]
    ax1.set(xlabel="training steps (stage 2 after stage 1)", ylabel="top-1 with diffusion, mean over levels (%)",
            title="SLIM main runs (dashed: the paper's loss, stopped at step 2000)")
    ax1.legend(fontsize=7)
    colour = {lam: f"C{i}" for i, lam in enumerate(BASELINE_LAMBDAS)}
    for key, ls in (("mse_clipbug", "--"), ("mse", "-")):
        for name, run in report["groups"][key]["runs"].items():
            if run is not None:
                lam = name.split("/")[1].split("=")[1]
                ax2.plot([p["step"] for p in run["points"]], [p["psnr"] for p in run["points"]], ls, marker="o", ms=3,
                         color=colour[lam], alpha=1.0 if ls == "-" else 0.5, label=f"{key}: λ {lam}")
    ax2.set(xlabel="training steps", ylabel="PSNR (dB)",
            title="the MSE codec, one model per λ (dashed: before the clipping fix)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", type=Path, default=HERE / "results" / "v3")
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        parser.error(f"{args.results_dir}: no such folder (the curves part 2's runs committed)")
    report = build(args.results_dir)
    write_atomically(args.results_dir / "part2_runs.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    plot(report, args.results_dir / "part2_curves.png")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
