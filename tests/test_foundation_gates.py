"""Toy world v3's foundation tools run end to end at smoke sizes: the gates (benchmarks/toy/foundation_v3.py) on the
bundled toy model, cached per stage, and the prior's resumable training (benchmarks/toy/train_prior.py)."""

import json
import shutil
import sys
from pathlib import Path

import pytest

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


def test_prior_detail_is_a_diagnostic_beside_the_gates(tmp_path):
    import foundation_v3

    assert foundation_v3.main(["--smoke", "--work-dir", str(tmp_path), "--stages", "prior_detail"]) == 0
    results = json.loads((tmp_path / "results" / "foundation_v3.json").read_text())
    assert results["gates"] == {} and results["all_passed"] is None  # nothing was gated
    detail = results["diagnostics"]["prior_detail"]
    assert list(detail["strengths"]) == [f"{s:g}" for s in foundation_v3.DETAIL_STRENGTHS]
    from slim_diffusers import toy_world

    labels = [s.label for s in foundation_v3.validation_items(detail["images"])]
    for entry in detail["strengths"].values():
        assert entry["top1"]["n"] == detail["images"]
        # every image counts once, under its own (true) variant
        assert {v: e["n"] for v, e in entry["variant_kept"].items()} == {
            v: sum(toy_world.variant_of(y) == i for y in labels) for i, v in enumerate(toy_world.VARIANTS)}
        assert entry["top1"]["value"] <= entry["kind_accuracy"]["value"]


def test_degraded_controls_lose_detail():
    import torch

    import foundation_v3

    z = torch.randn(2, 4, 24, 24, generator=torch.Generator().manual_seed(0))
    for degrade in (foundation_v3.blur_latents, foundation_v3.quantize_latents):
        assert degrade(z).shape == z.shape and 0 < float((degrade(z) - z).pow(2).mean()) < float(z.pow(2).mean())
    assert set(foundation_v3.quantize_latents(z).unique().tolist()) <= set(range(-6, 7))


def test_target_weights_raise_the_target_and_its_rim_only():
    import torch

    import train_prior

    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, 3:5, 3:5] = 1.0
    masks[0, 0, 2, 3] = 0.25  # a latent pixel the outline crosses
    w = train_prior.target_weights(masks, 9.0)
    assert w.shape == masks.shape and float(w.min()) == 1.0 and float(w[0, 0, 3, 3]) == 10.0
    assert float(w[0, 0, 2, 2]) == 10.0  # grown by one latent pixel around the target
    assert float(w[0, 0, 0, 0]) == 1.0 and float(w[0, 0, 7, 7]) == 1.0
    assert torch.equal(train_prior.target_weights(masks, 0.0), torch.ones_like(masks))  # the plain loss


def test_text_embedding_starts_where_the_unet_was_and_the_control_module_follows_it():
    import torch
    from diffusers import UNet2DConditionModel

    import train_prior
    from slim_diffusers import SLIMControlNet

    import foundation

    unet = UNet2DConditionModel.from_pretrained(str(foundation.v2_ldm() / "unet")).eval()  # toy world v2's UNet
    new = train_prior.with_text_embedding(unet).eval()
    assert new.config.addition_embed_type == "text" and unet.config.addition_embed_type is None
    x, t = torch.randn(2, 4, 24, 24), torch.tensor([10, 700])
    captions = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        assert torch.allclose(new(x, t, captions).sample, unet(x, t, captions).sample, atol=1e-6)
        new.add_embedding.proj.weight.normal_()  # once trained, the pooled caption changes the prediction
        assert not torch.allclose(new(x, t, captions).sample, unet(x, t, captions).sample, atol=1e-4)
        control = SLIMControlNet.from_unet(new)  # SLIM's control module copies the embedding with the rest
        assert control.config.addition_embed_type == "text"
        assert torch.equal(control.add_embedding.proj.weight, new.add_embedding.proj.weight)
        down, mid = control(x, t, captions, controlnet_cond=x, return_dict=False)
        assert mid.shape[0] == 2


@pytest.mark.filterwarnings("error:Detected call of:UserWarning")  # the resume replays the schedule quietly
def test_prior_training_logs_its_curve_and_resumes(tmp_path, capsys):
    import train_prior

    out = tmp_path / "prior"
    assert train_prior.main(["--smoke", "--out", str(out), "--target-weight", "9"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4
    # the pool holds each image's target mask at latent size, for the target-weighted loss
    from safetensors.torch import load_file

    from slim_diffusers import toy_world

    pool = load_file(str(out / "latent_pool.safetensors"))
    assert pool["masks"].shape == (8, 1, 24, 24) and pool["latents"].shape == (8, 4, 24, 24)
    first = toy_world.sample(0, seed=train_prior.POOL_SEED, size=96).object_mask
    assert abs(float(pool["masks"][0].mean()) - float(first.mean())) < 1e-6 and 0.03 < float(first.mean()) < 0.2
    assert train_prior.main(["--smoke", "--out", str(out), "--steps", "6"]) == 0
    assert "resumed at step 4" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6]
    gates = [r for r in lines if "prior_gate_ema" in r]
    assert [r["step"] for r in gates][0] == 0 and gates[-1]["step"] == 6
    assert json.loads((out / "sd" / "provenance.json").read_text())["steps"] == 6
    # a run goes on from another run's checkpoint (no VAE or tokenizer there: the bundled ones) with a new embedding
    on = tmp_path / "prior-on"
    assert train_prior.main(["--smoke", "--out", str(on), "--init", str(out / "checkpoint"), "--text-embedding",
                             "--steps", "2"]) == 0
    provenance = json.loads((on / "sd" / "provenance.json").read_text())
    assert provenance["init"]["path"] == str(out / "checkpoint")
    assert json.loads((on / "sd" / "unet" / "config.json").read_text())["addition_embed_type"] == "text"
    assert (out / "sd" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # the gates script measures the trained prior in place of the bundled model's
    import foundation_v3

    gates = tmp_path / "gates"
    assert foundation_v3.main(["--smoke", "--work-dir", str(gates), "--stages", "prior", "--prior-model", str(out / "sd")]) == 0
    results = json.loads((gates / "results" / "foundation_v3.json").read_text())
    assert set(results["gates"]) == {"prior"}
    assert any("unet" in path and str(out) in path for path in results["provenance"]["weights_sha256"])


def scripts_in_process(monkeypatch, *modules):
    """The training and dataset scripts that ``modules`` start with ``subprocess.run`` run in this process instead
    (``runpy``, the same files and arguments): the same code without an interpreter and its imports per segment."""
    import runpy
    import subprocess

    def run(cmd, check=False, **kwargs):
        script, argv = str(cmd[1]), [str(c) for c in cmd[1:]]
        saved = sys.argv
        sys.argv = argv
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code or 0
        finally:
            sys.argv = saved
        if check and code:
            raise subprocess.CalledProcessError(code, cmd)
        return subprocess.CompletedProcess(cmd, code)

    for module in modules:
        monkeypatch.setattr(module.subprocess, "run", run)


def test_control_curve_measures_the_ceiling_after_every_segment_and_resumes(tmp_path, capsys, monkeypatch):
    import control_curve
    import train_curve

    scripts_in_process(monkeypatch, control_curve)  # train_curve runs its segments with control_curve.run_segment

    work = tmp_path / "control"
    # --prepare-only: the training data and the untrained model, nothing trained or measured
    assert control_curve.main(["--smoke", "--work-dir", str(work), "--prepare-only"]) == 0
    assert (work / "init" / "model_index.json").is_file() and (work / "data" / "train" / "dataset_info.json").is_file()
    assert not (work / "curve.jsonl").exists() and not (work / "stage1").exists()
    assert control_curve.main(["--smoke", "--work-dir", str(work), "--control-warmup-steps", "1"]) == 0
    lines = [json.loads(line) for line in (work / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]  # stage 1 resumed from its checkpoint for the second segment
    assert lines[1]["train_wall_seconds"] > lines[0]["train_wall_seconds"] > 0
    for r in lines:
        assert set(r["ceiling"]) == {"vae", "diffusion, strength 0.5, 2-step schedule", "diffusion from noise, 2 steps"}
        assert r["passed"] == all(e["passed"] for name, e in r["ceiling"].items() if name != "vae")
        assert "val/diffusion_loss" in r["validation"]
    assert json.loads((work / "stage1" / "training_state.json").read_text())["global_step"] == 4
    final = json.loads((work / "final_ceiling.json").read_text())  # where it stopped, with the degraded controls
    assert final["step"] == 4 and set(final["result"]["controls"]) == {"z", "z blurred", "z quantised (step 1)"}
    # run again: the curve is there, nothing trains or measures again
    capsys.readouterr()
    assert control_curve.main(["--smoke", "--work-dir", str(work)]) == 0
    assert "[control] step" not in capsys.readouterr().out
    assert len((work / "curve.jsonl").read_text().splitlines()) == 2
    # part 2's segmented training on the same data: a variable-rate stage 1, measured at every level after its
    # segment, stopped by convergence.py's rule (here at max_steps, after one segment)
    out = tmp_path / "vr"
    args = ["--stage", "1", "--model", str(work / "init"), "--data", str(work / "data" / "train"), "--out", str(out),
            "--lambda-rate", "4", "1", "--segment", "2", "--min-steps", "2", "--max-steps", "2", "--batch", "4",
            "--images", "4"]
    assert train_curve.main(args) == 0
    lines = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2]
    assert set(lines[-1]["levels"]) == {"0", "1"}
    assert all(0 < e["bpp"] and 0 <= e["top1"]["value"] <= 100 for e in lines[-1]["levels"].values())
    assert lines[-1]["levels"]["0"]["bpp"] < lines[-1]["levels"]["1"]["bpp"]  # level 0: the fewest bits
    assert abs(lines[-1]["bpp"] - sum(e["bpp"] for e in lines[-1]["levels"].values()) / 2) < 1e-12
    assert lines[-1]["verdict"]["stop"] and "max_steps" in lines[-1]["verdict"]["reason"]
    import torch

    assert lines[-1]["measure_device"] == "cpu"
    assert lines[-1]["train_device"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    # a segment whose checkpoint was copied in trained before this process, wherever that was
    assert train_curve.train_device(out, 2).startswith("before this process: resumed from checkpoint-2")
    assert train_curve.train_device(out, 4) == lines[-1]["train_device"]
    capsys.readouterr()
    assert train_curve.main(args) == 0  # stopped: nothing trains again
    assert "[curve] step" not in capsys.readouterr().out
    # the whole chain of one variant (part2_slim.py): stage 1, λt from the stage-2 gradients at every level, stage 2
    import part2_slim

    part2 = ["--smoke", "--variant", "noroi", "--lambda-rate", "4", "1", "--work-dir", str(work),
             "--level-loss-scale", "inverse_lambda"]
    capsys.readouterr()
    for wrong, says in ((["--work-dir", str(tmp_path / "none")], "build it first with control_curve.py"),
                        (["--work-dir", str(work), "--prepared", str(tmp_path / "none")], "build it first"),
                        (part2[-4:], "is not the foundation's")):  # the last: this init is toy world v2's LDM
        with pytest.raises(SystemExit) as exit_:
            part2_slim.main(["--smoke", "--variant", "noroi", "--lambda-rate", "4", *wrong])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert not (work / "stage1-noroi").exists()
    part2 += ["--foundation", str(control_curve.foundation.v2_ldm())]
    assert part2_slim.main(part2) == 0
    chosen = json.loads((work / "stage1-noroi" / "lambda_task.json").read_text())
    assert set(chosen["z_hat_balance_per_level"]) == {"0", "1"} and chosen["lambda_task"] > 0
    state = json.loads((work / "stage2-noroi" / "training_state.json").read_text())
    assert state["args"]["no_roi"] is True and state["args"]["lambda_task"] == chosen["lambda_task"]
    assert state["args"]["stage2_timesteps"] == "decode" and state["args"]["decode_timestep_spacing"] == "trailing"
    assert state["args"]["pretrained_model_name_or_path"] == str(work / "stage1-noroi")
    first = json.loads((work / "stage1-noroi" / "training_state.json").read_text())
    assert first["args"]["level_loss_scale"] == state["args"]["level_loss_scale"] == "inverse_lambda"
    assert first["args"]["no_roi"] is True
    assert json.loads((work / "stage1-noroi" / "stage2_gradients" / "level0.json").read_text())["no_roi"] is True
    capsys.readouterr()
    assert part2_slim.main(part2) == 0  # both stages stopped, λt chosen: nothing runs again
    assert "[curve] step" not in capsys.readouterr().out
    # another work dir training from this one's data and init (--prepared): its own stages, the same data
    other = tmp_path / "other"
    assert part2_slim.main([*part2[:part2.index("--work-dir")], "--work-dir", str(other), "--prepared", str(work),
                            *part2[part2.index("--work-dir") + 2:]]) == 0
    state = json.loads((other / "stage1-noroi" / "training_state.json").read_text())
    assert state["args"]["pretrained_model_name_or_path"] == str(work / "init")
    assert state["args"]["train_data_dir"] == str(work / "data" / "train")
    assert (other / "stage2-noroi" / "model_index.json").is_file() and not (other / "init").exists()
    # the demo model bundled from part 2 (part2_export.py): SLIM after stage 2 only, into an assets folder
    import part2_export

    from slim_diffusers import toy_world

    test_images = tmp_path / "test-20"
    toy_world.as_dataset(20, seed=3, size=96).save_to_disk(str(test_images))
    assets = tmp_path / "assets"

    def as_roi(folder):  # the smoke chain trained w/o RoI: the same weights, labelled as the RoI variant
        shutil.copytree(work / "stage2-noroi", folder, ignore=shutil.ignore_patterns("checkpoint-*"))
        state = json.loads((folder / "training_state.json").read_text())
        state["args"]["no_roi"] = False
        (folder / "training_state.json").write_text(json.dumps(state))
        return folder

    running = as_roi(tmp_path / "stage2-running")  # a stage 2 its rule has not stopped yet
    last = json.loads((running / "curve.jsonl").read_text().splitlines()[-1])
    last["verdict"]["stop"] = False
    (running / "curve.jsonl").write_text(json.dumps(last) + "\n")
    for model, says in ((work / "stage1-noroi", "a stage-1 model"), (work / "stage2-noroi", "SLIM w/o RoI"),
                        (tmp_path / "none", "not a trained SLIM pipeline"), (running, "has not stopped")):
        with pytest.raises(SystemExit) as exit_:
            part2_export.main(["--model", str(model), "--test-images", str(test_images), "--assets", str(assets)])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    roi = as_roi(tmp_path / "stage2-roi")
    assert part2_export.main(["--model", str(roi), "--test-images", str(test_images), "--assets", str(assets)]) == 0
    demo = json.loads((assets / "toy" / "demo.json").read_text())
    assert demo["rate_levels"] == {"0": 4.0, "1": 1.0} and demo["default_rate"] == 1
    assert demo["decode"] == control_curve.DECODE
    readme = (assets / "toy" / "README.md").read_text()
    assert "prior_v3" in readme and "divided by max(1, λr of its level)" in readme  # the chain's inverse_lambda
    assert (assets / "toy" / "classifier" / "config.json").is_file()
    assert len(list((assets / "images").glob("*.png"))) == len(toy_world.CLASS_NAMES)
    from slim_diffusers import SLIMPipeline

    bundled = SLIMPipeline.from_pretrained(str(assets / "toy" / "slim"))
    assert bundled.num_rate_levels == 2 and bundled.scheduler.config.timestep_spacing == "trailing"
    # before the package's bundled model is replaced, toy world v2's LDM is kept (the part-1 tools' default)
    import foundation

    kept = tmp_path / "foundation_v2"
    part2_export.keep_v2_ldm(foundation.v2_ldm(), kept)
    for part in foundation.V2_LDM_PARTS:
        names = sorted(p.name for p in (foundation.v2_ldm() / part).iterdir())
        assert names and sorted(p.name for p in (kept / part).iterdir()) == names
    part2_export.keep_v2_ldm(REPO / "benchmarks" / "toy" / "models" / "prior_v3", kept)  # kept already: nothing to do
    with pytest.raises(ValueError, match="not toy world v2's LDM"):
        part2_export.keep_v2_ldm(REPO / "benchmarks" / "toy" / "models" / "prior_v3", tmp_path / "elsewhere")


def test_run_segment_counts_the_child_processes_cpu_and_checks_the_step(tmp_path):
    import control_curve

    script = ("import json, sys, time\n"
              "t = time.process_time()\n"
              "while time.process_time() - t < 0.3: pass\n"
              "open(sys.argv[1] + '/training_state.json', 'w').write(json.dumps({'global_step': int(sys.argv[2]),"
              " 'metrics': {}}))\n")
    seconds, cpu, state = control_curve.run_segment([sys.executable, "-c", script, str(tmp_path), "7"], tmp_path, 7)
    assert cpu >= 0.25 and seconds > 0 and state["global_step"] == 7
    with pytest.raises(RuntimeError, match="holds step 3, not 7"):
        control_curve.run_segment([sys.executable, "-c", script, str(tmp_path), "3"], tmp_path, 7)
