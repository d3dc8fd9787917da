"""Toy world v3's foundation tools run end to end at smoke sizes: the gates (benchmarks/toy/foundation_v3.py) on the
bundled toy model, cached per stage, and the prior's resumable training (benchmarks/toy/train_prior.py)."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "toy"))


def test_foundation_gates_write_every_gate_with_intervals_budget_and_provenance(tmp_path, capsys):
    import foundation_v3

    assert foundation_v3.main(["--smoke", "--work-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results" / "foundation_v3.json").read_text())
    gates = results["gates"]
    assert set(gates) == {"classifier", "vae_ceiling", "prior", "control_ceiling"}
    assert results["all_passed"] == all(g["passed"] for g in gates.values())

    def interval(e):
        assert 0 <= e["low"] <= e["value"] <= e["high"] <= 100 and e["n"] > 0

    interval(gates["classifier"]["top1"]), interval(gates["vae_ceiling"]["top1"]), interval(gates["prior"]["kind_accuracy"])
    assert abs(sum(e["value"] for e in gates["prior"]["variant_share"].values()) - 100) < 1e-6
    controls = gates["control_ceiling"]["controls"]
    assert set(controls) == set(foundation_v3.DEGRADATIONS)
    for decoders in controls.values():
        for name, entry in decoders.items():
            interval(entry["top1"])
            if name != "vae":
                diff = entry["minus_vae"]
                assert diff["low"] <= diff["value"] <= diff["high"]
    assert set(results["budget"]) == set(gates) and all(b["cpu_seconds"] >= 0 for b in results["budget"].values())
    assert any(path.endswith("unet/diffusion_pytorch_model.safetensors") for path in results["provenance"]["weights_sha256"])
    # the stages are cached: a second call measures nothing again
    capsys.readouterr()
    foundation_v3.main(["--smoke", "--work-dir", str(tmp_path)])
    assert "[gates]" not in capsys.readouterr().out
    assert json.loads((tmp_path / "results" / "foundation_v3.json").read_text())["gates"] == gates


def test_degraded_controls_lose_detail():
    import torch

    import foundation_v3

    z = torch.randn(2, 4, 24, 24, generator=torch.Generator().manual_seed(0))
    for degrade in (foundation_v3.blur_latents, foundation_v3.quantize_latents):
        assert degrade(z).shape == z.shape and 0 < float((degrade(z) - z).pow(2).mean()) < float(z.pow(2).mean())
    assert set(foundation_v3.quantize_latents(z).unique().tolist()) <= set(range(-6, 7))


def test_prior_training_logs_its_curve_and_resumes(tmp_path, capsys):
    import train_prior

    out = tmp_path / "prior"
    assert train_prior.main(["--smoke", "--out", str(out)]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4
    assert train_prior.main(["--smoke", "--out", str(out), "--steps", "6"]) == 0
    assert "resumed at step 4" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6]
    gates = [r for r in lines if "prior_gate_ema" in r]
    assert [r["step"] for r in gates][0] == 0 and gates[-1]["step"] == 6
    assert json.loads((out / "sd" / "provenance.json").read_text())["steps"] == 6
    assert (out / "sd" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # the gates script measures the trained prior in place of the bundled model's
    import foundation_v3

    gates = tmp_path / "gates"
    assert foundation_v3.main(["--smoke", "--work-dir", str(gates), "--stages", "prior", "--prior-model", str(out / "sd")]) == 0
    results = json.loads((gates / "results" / "foundation_v3.json").read_text())
    assert set(results["gates"]) == {"prior"}
    assert any("unet" in path and str(out) in path for path in results["provenance"]["weights_sha256"])
