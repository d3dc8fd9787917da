"""Toy world v3's foundation, gathered: every gate with its interval, the CPU spent, the curves, the models' provenance.

    .venv/bin/python benchmarks/toy/foundation_v3_report.py

The gates were measured by other scripts, each result committed where it was made; this one reads them, checks that
they speak of the same weights, and writes ``results/foundation_v3_final.json`` and ``results/foundation_v3_curves.png``
(the prior gate against training CPU, the control ceiling against stage-1 steps):

- classifier and VAE ceiling: ``results/foundation_v3.json`` (``foundation_v3.py``; the toy ResNet and the bundled VAE,
  which the v3 prior keeps: the VAE's SHA-256 are compared);
- prior: ``foundation_v3.py --stages prior prior_detail --prior-model models/prior_v3 --results-dir
  results/prior_v3_gates`` on the committed prior (200 drawings; and the prior_detail diagnostic);
- control ceiling: every ``control_curve.py`` run's final measurement (200 images, with degraded controls) and curve;
  the gate is judged on the runs that trained on the committed prior without the control module's warm-up (the
  paper's training), the others are reported beside it;
- budget: the training CPU seconds of every prior run (``train_prior.py``'s curves: training steps only) and control
  run, and the measurements' own: a lower bound (the prior runs' own gate checks, checkpoint writes, the latent pool's
  encoding and work lost to kills between checkpoints are not in it).

A gate that was not reached stays not reached here: the thresholds are ``foundation_v3.GATES``, read, not restated.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from foundation_v3 import GATES  # noqa: E402
from convergence import read_lines  # noqa: E402

from slim_diffusers.utils.file_utils import write_atomically  # noqa: E402

# the prior's runs in the order they were made: (name, the run it started from, that run's step), or None for the
# bundled LDM; a run's CPU counter starts at 0, so a run's CPU from the bundled LDM adds its ancestors' up to the fork
PRIOR_RUNS = (("prior_v3", None), ("prior_v3b", None), ("prior_v3c", ("prior_v3b", 2000)),
              ("prior_v3d", ("prior_v3c", 6000)))
CONTROL_RUNS = ("v2unet", "v3c_s4250", "v3c_s4250_warm1000")
# where the control runs read the committed prior from (--sd): its folder, or the copy in outputs/ the first runs read
# (the same files: its SHA-256 are in results/prior_v3c_step4250_gate.json); runs on other priors are history
FOUNDATION_PRIOR_PATHS = ("benchmarks/toy/models/prior_v3", "outputs/prior_v3c_s4250")
DECODES = (("strength_0.5", "diffusion, strength 0.5, 2-step schedule"),
           ("from_noise", "diffusion from noise, 20 steps"))


def relative(path: Path) -> str:
    return str(path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prior_curves(results: Path) -> dict:
    """Each prior run's gate measurements with the training CPU seconds since the bundled LDM."""
    runs = {}
    for name, parent in PRIOR_RUNS:
        path = results / f"{name}_curve.jsonl"
        if not path.is_file():
            continue
        lines = read_lines(path)
        offset, steps_offset = 0.0, 0
        if parent is not None:
            parent_name, fork = parent
            if parent_name not in runs:
                raise FileNotFoundError(f"{name} starts from {parent_name}, whose curve is missing")
            at_fork = [p for p in runs[parent_name]["points"] if p["run_step"] == fork]
            if not at_fork:
                raise ValueError(f"{parent_name}'s curve has no gate measurement at step {fork}")
            offset, steps_offset = at_fork[0]["cpu_seconds_total"], at_fork[0]["step"]
        points = [{"step": steps_offset + ln["step"],
                   "run_step": ln["step"], "cpu_seconds_total": round(offset + ln["cpu_seconds"], 1),
                   "kind_accuracy": ln["prior_gate_ema"]["kind_accuracy"],
                   "variant_share": ln["prior_gate_ema"]["variant_share"], "drawings": ln["prior_gate_ema"]["drawings"]}
                  for ln in lines if "prior_gate_ema" in ln]
        last = max(ln["cpu_seconds"] for ln in lines)
        runs[name] = {"parent": None if parent is None else {"run": parent[0], "step": parent[1]},
                      "steps_offset": steps_offset,
                      "steps": max(ln["step"] for ln in lines), "cpu_seconds": round(last, 1), "points": points}
    return runs


def control_runs(results: Path) -> dict:
    runs = {}
    for name in CONTROL_RUNS:
        curve = results / f"control_curve_{name}.jsonl"
        if not curve.is_file():
            continue
        lines = read_lines(curve)
        final_path = results / f"control_final_ceiling_{name}.json"
        final = json.loads(final_path.read_text()) if final_path.is_file() else None
        # the first run's lines predate the settings field: it ran with control_curve.py's defaults
        settings = lines[-1].get("settings", {"sd": "slim_diffusers/assets/toy/slim", "control_warmup_steps": 0})
        runs[name] = {
            "prior": settings["sd"], "control_warmup_steps": settings["control_warmup_steps"],
            "steps": lines[-1]["step"], "train_cpu_seconds": lines[-1]["train_cpu_seconds"],
            "measure_cpu_seconds": round(sum(ln["measure_cpu_seconds"] for ln in lines)
                                         + (final["cpu_seconds"] if final else 0.0), 1),
            "points": [{"step": ln["step"], "train_cpu_seconds": ln["train_cpu_seconds"], "images": ln["images"],
                        **{key: ln["ceiling"][label]["minus_vae"]["value"] for key, label in DECODES},
                        **{f"{key}_top1": ln["ceiling"][label]["top1"]["value"] for key, label in DECODES},
                        "vae_top1": ln["ceiling"]["vae"]["top1"]["value"]} for ln in lines],
            "final": None if final is None else {"step": final["step"], **final["result"]},
        }
    return runs


def build(results: Path, prior_model: Path, prior_gate: Path) -> dict:
    foundation = json.loads((results / "foundation_v3.json").read_text())
    gate = json.loads(prior_gate.read_text())
    prov = json.loads((prior_model / "provenance.json").read_text())
    # the v3 prior keeps the bundled VAE: the VAE ceiling measured on the bundled model holds for it
    bundled_vae = [v for k, v in foundation["provenance"]["weights_sha256"].items()
                   if k.endswith("vae/diffusion_pytorch_model.safetensors")]
    prior_vae = sha256(prior_model / "vae" / "diffusion_pytorch_model.safetensors")
    if bundled_vae != [prior_vae]:
        raise ValueError(f"{prior_model}'s VAE is not the one whose ceiling foundation_v3.json measured")
    committed = {part: sha256(prior_model / part / f) for part, f in (("unet", "diffusion_pytorch_model.safetensors"),
                                                                      ("text_encoder", "model.safetensors"))}
    if not set(committed.values()) <= set(gate["provenance"]["weights_sha256"].values()):
        raise ValueError(f"{prior_gate} measured other weights than {prior_model}'s")
    prior = gate["gates"]["prior"]
    low, high = GATES["prior_variant_share"]
    priors = prior_curves(results)
    controls = control_runs(results)
    gates = {
        "classifier": {**foundation["gates"]["classifier"]["top1"], "threshold": GATES["classifier_top1"],
                       "passed": foundation["gates"]["classifier"]["passed"]},
        "vae_ceiling": {**foundation["gates"]["vae_ceiling"]["top1"], "threshold": GATES["vae_ceiling_top1"],
                        "passed": foundation["gates"]["vae_ceiling"]["passed"]},
        "prior_kind": {**prior["kind_accuracy"], "threshold": GATES["prior_kind_accuracy"],
                       "passed": prior["kind_accuracy"]["value"] >= GATES["prior_kind_accuracy"],
                       "guidance_scale": prior["guidance_scale"], "steps": prior["steps"]},
        "prior_variants": {"shares": prior["variant_share"], "threshold": [low, high],
                           "passed": all(low <= e["value"] <= high for e in prior["variant_share"].values())},
    }
    for key, label in DECODES:
        finals = {name: run["final"]["controls"]["z"][label] | {"step": run["final"]["step"], "prior": run["prior"],
                                                                 "control_warmup_steps": run["control_warmup_steps"]}
                  for name, run in controls.items() if run["final"] is not None}
        # the gate: the paper's training (no warm-up) on the committed prior; runs with the warm-up are reported beside
        on_prior = [n for n in finals if finals[n]["prior"].rstrip("/") in FOUNDATION_PRIOR_PATHS]
        ours = [n for n in on_prior if not finals[n]["control_warmup_steps"]]
        best = max(ours, key=lambda n: finals[n]["minus_vae"]["value"], default=None)
        gates[f"control_ceiling_{key}"] = {
            "threshold_points_below_vae": GATES["control_ceiling_max_drop"], "best_run": best,
            "passed": best is not None and finals[best]["passed"],
            "runs": {n: finals[n] for n in ours},
            "runs_with_control_warmup": {n: finals[n] for n in on_prior if n not in ours},
            "runs_on_other_priors": {n: finals[n] for n in finals if n not in on_prior}}
    prior_cpu = sum(r["cpu_seconds"] for r in priors.values())
    control_cpu = sum(r["train_cpu_seconds"] for r in controls.values())
    measure_cpu = (sum(r["measure_cpu_seconds"] for r in controls.values())
                   + sum(b["cpu_seconds"] for b in foundation["budget"].values())
                   + sum(b["cpu_seconds"] for b in gate["budget"].values()))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "validation_seed": foundation["validation_seed"],
        "gates": gates, "all_passed": all(g["passed"] for g in gates.values()),
        "not_reached": [name for name, g in gates.items() if not g["passed"]],
        "budget_cpu_seconds": {"prior_training": round(prior_cpu, 1), "control_training": round(control_cpu, 1),
                               "measurements": round(measure_cpu, 1),
                               "total_hours": round((prior_cpu + control_cpu + measure_cpu) / 3600, 2),
                               "per_prior_run": {n: r["cpu_seconds"] for n, r in priors.items()},
                               "per_control_run": {n: r["train_cpu_seconds"] for n, r in controls.items()}},
        "diagnostics": gate.get("diagnostics", {}), "prior_curves": priors, "control_runs": controls,
        "models": {"prior": {"path": relative(prior_model), "provenance": prov, "sha256": committed},
                   "vae": {"sha256": prior_vae, "same_as": "slim_diffusers/assets/toy/slim/vae"},
                   "classifier": foundation["provenance"]["classifier"]},
        "sources": {"foundation": relative(results / "foundation_v3.json"), "prior_gate": relative(prior_gate)},
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"plain": "tab:gray", "striped": "tab:orange", "spotted": "tab:purple", "checked": "tab:green"}
    for name, run in report["prior_curves"].items():
        hours = [p["cpu_seconds_total"] / 3600 for p in run["points"]]
        ax1.plot(hours, [p["kind_accuracy"] for p in run["points"]], "-o", ms=3, color="black",
                 alpha=1.0 if run["parent"] else 0.4, label="kind" if name == "prior_v3c" else None)
        for v, c in colours.items():
            ax1.plot(hours, [p["variant_share"][v] for p in run["points"]], "--", color=c, lw=1,
                     label=v if name == "prior_v3c" else None)
    ax1.axhline(GATES["prior_kind_accuracy"], color="black", lw=0.6, ls=":")
    ax1.axhspan(*GATES["prior_variant_share"], color="tab:blue", alpha=0.08, label="variant gate")
    ax1.set(xlabel="training CPU hours since the bundled LDM", ylabel="% of 50 drawings (EMA)",
            title="prior gate (kind ≥ 90; each variant 10–40)", ylim=(0, 100))
    ax1.legend(fontsize=7, loc="center right")
    for i, (name, run) in enumerate(report["control_runs"].items()):
        steps = [p["step"] for p in run["points"]]
        for (key, _), ls in zip(DECODES, ("-", "--")):
            ax2.plot(steps, [p[key] for p in run["points"]], ls, marker="o", ms=3, color=f"C{i}",
                     label=f"{name}: {key}")
    ax2.axhline(-GATES["control_ceiling_max_drop"], color="black", lw=0.6, ls=":")
    ax2.set(xlabel="stage-1 steps", ylabel="top-1 minus the VAE's (points, 100 images)",
            title="control ceiling from the uncompressed z (gate ≥ −5)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--prior-model", type=Path, default=HERE / "models" / "prior_v3")
    parser.add_argument("--prior-gate", type=Path, default=None,
                        help="foundation_v3.py's results on --prior-model; default: "
                        "RESULTS/prior_v3_gates/foundation_v3.json")
    args = parser.parse_args(argv)
    prior_gate = args.prior_gate or args.results_dir / "prior_v3_gates" / "foundation_v3.json"
    report = build(args.results_dir, args.prior_model, prior_gate)
    write_atomically(args.results_dir / "foundation_v3_final.json", (json.dumps(report, indent=2) + "\n").encode())
    plot(report, args.results_dir / "foundation_v3_curves.png")
    print(json.dumps({name: g["passed"] for name, g in report["gates"].items()}))
    print(f"training + measuring: {report['budget_cpu_seconds']['total_hours']} CPU hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
