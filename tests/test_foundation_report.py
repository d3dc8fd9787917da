"""benchmarks/toy/foundation_v3_report.py gathers the foundation's gates from the results the measuring scripts wrote:
it keeps a gate that was not reached as not reached, adds the CPU of runs that started from one another, and refuses
results that speak of other weights than the committed ones."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "toy"))


def interval(value, n=200):
    return {"value": value, "low": max(0.0, value - 5), "high": min(100.0, value + 5), "n": n}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_world(tmp_path: Path, variants=(14.5, 2.5, 82.5, 0.5), from_noise=-19.0, other_prior_from_noise=None):
    """A committed prior (three weight files of a few bytes) and the results that measured it."""
    model, results = tmp_path / "prior_v3", tmp_path / "results"
    files = {"unet/diffusion_pytorch_model.safetensors": b"unet", "text_encoder/model.safetensors": b"text",
             "vae/diffusion_pytorch_model.safetensors": b"vae"}
    for name, data in files.items():
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_bytes(data)
    (model / "provenance.json").write_text(json.dumps({"steps": 6000, "weights": "EMA"}))
    results.mkdir()
    foundation = {"validation_seed": 5,
                  "gates": {"classifier": {"top1": interval(99.0, 500), "passed": True},
                            "vae_ceiling": {"top1": interval(96.2, 500), "passed": True}},
                  "budget": {"classifier": {"cpu_seconds": 10.0}, "vae_ceiling": {"cpu_seconds": 20.0}},
                  "provenance": {"classifier": "assets/classifier", "weights_sha256": {
                      "assets/slim/vae/diffusion_pytorch_model.safetensors": sha(b"vae")}}}
    (results / "foundation_v3.json").write_text(json.dumps(foundation))
    shares = dict(zip(("plain", "striped", "spotted", "checked"), variants))
    gate = {"gates": {"prior": {"kind_accuracy": interval(92.5), "guidance_scale": 3.0, "steps": 20,
                                "variant_share": {v: interval(x) for v, x in shares.items()}}},
            "budget": {"prior": {"cpu_seconds": 90.0}},
            "provenance": {"weights_sha256": {f"outputs/x/{k}": sha(v) for k, v in files.items()}}}
    (results / "prior_v3_gates").mkdir()
    (results / "prior_v3_gates" / "foundation_v3.json").write_text(json.dumps(gate))

    def prior_curve(name, points, last_cpu):
        lines = [{"step": s, "cpu_seconds": c, "prior_gate_ema": {"drawings": 50, "kind_accuracy": k,
                                                                  "variant_share": shares}} for s, c, k in points]
        lines.append({"step": points[-1][0] + 50, "loss": 0.1, "cpu_seconds": last_cpu})
        (results / f"{name}_curve.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    prior_curve("prior_v3b", [(0, 0.0, 32.0), (2000, 2300.0, 42.0)], 2400.0)
    prior_curve("prior_v3c", [(0, 0.0, 44.0), (6000, 4800.0, 94.0)], 4850.0)
    prior_curve("prior_v3d", [(0, 0.0, 94.0), (1500, 1200.0, 98.0)], 1450.0)

    def ceiling(strength, noise, n):
        return {"vae": {"top1": interval(96.0, n)},
                "diffusion, strength 0.5, 2-step schedule": {
                    "top1": interval(96.0 + strength, n), "minus_vae": interval(strength, n), "passed": strength >= -5},
                "diffusion from noise, 20 steps": {"top1": interval(96.0 + noise, n), "minus_vae": interval(noise, n),
                                                   "passed": noise >= -5}}

    def control_run(name, from_noise, sd="benchmarks/toy/models/prior_v3", warmup=0):
        lines = [{"step": s, "train_cpu_seconds": c, "measure_cpu_seconds": 30.0, "images": 100,
                  "ceiling": ceiling(a, b, 100), "settings": {"sd": sd, "control_warmup_steps": warmup}}
                 for s, c, a, b in ((500, 400.0, -13.0, -39.0), (1000, 800.0, -3.0, from_noise))]
        (results / f"control_curve_{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        final = {"step": 1000, "cpu_seconds": 100.0, "result": {"images": 200, "passed": from_noise >= -5,
                                                               "controls": {"z": ceiling(-2.0, from_noise, 200)}}}
        (results / f"control_final_ceiling_{name}.json").write_text(json.dumps(final))

    control_run("v3c_s4250", from_noise)
    if other_prior_from_noise is not None:  # runs on another prior, or with the warm-up: beside the gate, not in it
        control_run("v2unet", other_prior_from_noise, sd="slim_diffusers/assets/toy/slim")
        control_run("v3c_s4250_warm1000", other_prior_from_noise, sd="outputs/prior_v3c_s4250", warmup=1000)
    return model, results


def test_report_keeps_each_gate_as_measured_and_adds_the_cpu_of_chained_runs(tmp_path, capsys):
    import foundation_v3_report

    model, results = make_world(tmp_path, other_prior_from_noise=-1.0)
    assert foundation_v3_report.main(["--results-dir", str(results), "--prior-model", str(model)]) == 0
    report = json.loads((results / "foundation_v3_final.json").read_text())
    passed = {name: g["passed"] for name, g in report["gates"].items()}
    # control runs that passed on another prior, or with the warm-up, do not pass this foundation's gate
    noise = report["gates"]["control_ceiling_from_noise"]
    assert noise["best_run"] == "v3c_s4250" and list(noise["runs"]) == ["v3c_s4250"]
    assert noise["runs_on_other_priors"]["v2unet"]["passed"] is True
    assert noise["runs_with_control_warmup"]["v3c_s4250_warm1000"]["passed"] is True
    assert passed == {"classifier": True, "vae_ceiling": True, "prior_kind": True, "prior_variants": False,
                      "control_ceiling_strength_0.5": True, "control_ceiling_from_noise": False}
    assert report["all_passed"] is False
    assert report["not_reached"] == ["prior_variants", "control_ceiling_from_noise"]
    assert report["gates"]["prior_variants"]["shares"]["spotted"]["value"] == 82.5
    # prior_v3c started from prior_v3b's step 2000: its points sit after that run's CPU and steps
    v3c = report["prior_curves"]["prior_v3c"]
    assert v3c["points"][-1]["cpu_seconds_total"] == 2300.0 + 4800.0 and v3c["points"][-1]["step"] == 8000
    # and prior_v3d from prior_v3c's own step 6000 (8000 from the start)
    v3d = report["prior_curves"]["prior_v3d"]
    assert v3d["points"][-1]["cpu_seconds_total"] == 2300.0 + 4800.0 + 1200.0 and v3d["points"][-1]["step"] == 9500
    budget = report["budget_cpu_seconds"]
    assert budget["prior_training"] == 2400.0 + 4850.0 + 1450.0 and budget["control_training"] == 3 * 800.0
    assert budget["measurements"] == 3 * (2 * 30.0 + 100.0) + 10.0 + 20.0 + 90.0
    assert report["models"]["prior"]["sha256"]["unet"] == sha(b"unet")
    assert (results / "foundation_v3_curves.png").stat().st_size > 0
    assert '"prior_variants": false' in capsys.readouterr().out


def test_report_says_passed_only_where_every_gate_is(tmp_path):
    import foundation_v3_report

    model, results = make_world(tmp_path, variants=(25.0, 25.0, 30.0, 20.0), from_noise=-4.0)
    assert foundation_v3_report.main(["--results-dir", str(results), "--prior-model", str(model)]) == 0
    report = json.loads((results / "foundation_v3_final.json").read_text())
    assert report["all_passed"] is True and report["not_reached"] == []


def test_report_refuses_results_of_other_weights(tmp_path):
    import foundation_v3_report

    model, results = make_world(tmp_path)
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"another unet")
    with pytest.raises(ValueError, match="other weights"):
        foundation_v3_report.main(["--results-dir", str(results), "--prior-model", str(model)])
    model, results = make_world(tmp_path / "b")
    (model / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"another vae")
    with pytest.raises(ValueError, match="VAE"):
        foundation_v3_report.main(["--results-dir", str(results), "--prior-model", str(model)])
