import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from slim_diffusers import SLIMPipeline
from slim_diffusers.training.losses import LossWeights, slim_losses
from slim_diffusers.testing import tiny_pipeline

REPO = Path(__file__).resolve().parents[2]
STAGE1 = str(REPO / "training" / "train_stage1.py")
STAGE2 = str(REPO / "training" / "train_stage2.py")


def make_dataset(n: int = 12, size: int = 64, seed: int = 0):
    """Images with a coloured square (the RoI) on noise; label = colour; mask = the square."""
    import datasets

    rng = np.random.default_rng(seed)
    rows = {"image": [], "label": [], "roi_mask": [], "caption": []}
    for i in range(n):
        label = i % 2
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        img[y : y + size // 2, x : x + size // 2] = (220, 30, 30) if label else (30, 30, 220)
        mask = np.zeros((size, size), np.float32)
        mask[y : y + size // 2, x : x + size // 2] = 1
        rows["image"].append(PIL.Image.fromarray(img))
        rows["label"].append(label)
        rows["roi_mask"].append(PIL.Image.fromarray(mask, mode="F"))
        rows["caption"].append("a red square" if label else "a blue square")
    return datasets.Dataset.from_dict(rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    make_dataset().save_to_disk(str(root / "data"))
    tiny_pipeline(seed=0).save_pretrained(root / "model")
    return root


def run(script, root, out, *extra, wait=True):
    cmd = [sys.executable, script, "--pretrained_model_name_or_path", str(root / "model"),
           "--train_data_dir", str(root / "data"), "--output_dir", str(out), "--resolution", "64",
           "--train_batch_size", "2", "--num_validation_images", "2", "--report_to", "none", "--seed", "3", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(path: Path, component: str):
    return load_file(str(path / component / "diffusion_pytorch_model.safetensors"))


def test_every_loss_term_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    pipe = tiny_pipeline(seed=0, control_scale=0.0)
    ds = make_dataset(n=4)
    pixels = torch.stack([torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1) for im in ds["image"]])
    masks = torch.stack([torch.from_numpy(np.array(m, np.float32))[None] for m in ds["roi_mask"]])
    embeds, _ = pipe.encode_prompt(list(ds["caption"]), "cpu", False)
    params = [*pipe.compressor.parameters(), *pipe.decompressor.parameters(), *pipe.controlnet.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    for m in (pipe.compressor, pipe.decompressor, pipe.controlnet):
        m.train()
    history = []
    for step in range(40):
        terms = slim_losses(pipe, pixels, masks, embeds, LossWeights(rate=0.1), stage=1,
                            generator=torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        (terms["loss"] + pipe.decompressor.aux_loss()).backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    for key in ("rate_bpp", "guide_loss", "diffusion_loss", "loss"):
        first = np.mean([h[key] for h in history[:4]])
        last = np.mean([h[key] for h in history[-4:]])
        assert last < first, (key, first, last)


def test_stage1_trains_only_the_trainable_parts_and_writes_a_loadable_pipeline(setup):
    out = setup / "stage1"
    run(STAGE1, setup, out, "--max_train_steps", "4", "--validation_steps", "2", "--checkpointing_steps", "100")
    for frozen in ("vae", "unet"):
        before, after = weights(setup / "model", frozen), weights(out, frozen)
        assert all(torch.equal(before[k], after[k]) for k in before)
    before_te = load_file(str(next((setup / "model" / "text_encoder").glob("*.safetensors"))))
    after_te = load_file(str(next((out / "text_encoder").glob("*.safetensors"))))
    assert all(torch.equal(before_te[k], after_te[k]) for k in before_te)
    for trained in ("compressor", "decompressor", "controlnet"):
        before, after = weights(setup / "model", trained), weights(out, trained)
        assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point()), trained

    pipe = SLIMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.new("RGB", (48, 40), (200, 40, 40))
    result = pipe(image, captions="a red square", num_inference_steps=2)
    assert result.images[0].size == (48, 40) and result.bits_per_pixel[0] > 0

    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers" and "slim-diffusers" in card.data.tags
    assert "λrate=1.0" in card.text and "val/bpp" in card.text


def test_stage2_with_lora_runs_and_reloads(setup, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    classifier = ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                                           depths=[1, 1], num_labels=2))
    classifier.save_pretrained(tmp_path / "classifier")
    out = tmp_path / "stage2"
    run(STAGE2, setup, out, "--max_train_steps", "2", "--validation_steps", "2", "--unet_lora_rank", "2",
        "--classifier_name_or_path", str(tmp_path / "classifier"), "--lpips_net", "alex", "--lpips_random_init")
    state = __import__("json").loads((out / "training_state.json").read_text())
    assert {"val/task_loss", "val/roi_lpips", "val/roi_mse", "val/bpp"} <= set(state["metrics"])
    # what trained these weights stays beside them (the Hub token never does)
    assert state["args"]["lpips_random_init"] is True and state["args"]["lpips_net"] == "alex"
    assert state["args"]["classifier_name_or_path"] == str(tmp_path / "classifier") and "hub_token" not in state["args"]
    pipe = SLIMPipeline.from_pretrained(out)
    assert not any("lora" in k for k in weights(out, "unet"))
    assert any(not torch.equal(weights(setup / "model", "unet")[k], v) for k, v in weights(out, "unet").items())


def test_two_process_launch(setup):
    # `accelerate launch --cpu` starts one process; two CPU workers come from a multi-process launch on a
    # machine without CUDA, which the script joins over gloo. The model is variable-rate: each process draws its
    # images' levels, and the gain vectors are synchronised like every other parameter
    out = setup / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           STAGE1, "--pretrained_model_name_or_path", str(setup / "model"), "--train_data_dir", str(setup / "data"),
           "--output_dir", str(out), "--resolution", "64", "--train_batch_size", "2", "--num_validation_images", "2",
           "--report_to", "none", "--max_train_steps", "2", "--validation_steps", "2", "--checkpointing_steps", "2",
           "--lambda_rate", "2", "0.5"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = __import__("json").loads((out / "training_state.json").read_text())
    assert state["num_processes"] == 2 and state["global_step"] == 2 and state["rate_levels"] == [2.0, 0.5]
    # both processes hold a shard of the data loader state and their own RNG state in the checkpoint
    assert {p.name for p in (out / "checkpoint-2").glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    pipe = SLIMPipeline.from_pretrained(out)
    assert pipe.decompressor.is_ready_to_code


def test_variable_rate_training_resumes_and_continues_into_stage_2(setup, tmp_path):
    import json

    levels = ("--lambda_rate", "0.5", "2")  # in any order: level 0 is the largest λr
    reference = tmp_path / "vr-reference"
    run(STAGE1, setup, reference, "--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "4",
        *levels)
    state = json.loads((reference / "training_state.json").read_text())
    assert state["rate_levels"] == [2.0, 0.5]
    assert {"val/bpp_rate0", "val/bpp_rate1", "val/bytes_rate0", "val/bytes_rate1"} <= set(state["metrics"])
    assert "variable rate, 2 trained levels (0: λr=2, 1: λr=0.5)" in (reference / "README.md").read_text()

    # an interrupted run (stopped after its checkpoint at step 2) resumes to the same weights, gains included
    resumed = tmp_path / "vr-resumed"
    run(STAGE1, setup, resumed, "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "0",
        *levels)
    run(STAGE1, setup, resumed, "--max_train_steps", "4", "--checkpointing_steps", "2", "--validation_steps", "0",
        "--resume_from_checkpoint", "latest", *levels)
    for component, gains in (("compressor", "rate_gains.log_gains"), ("decompressor", "rate_inverse_gains.log_gains")):
        a, b = weights(reference, component), weights(resumed, component)
        assert gains in a
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{component}.{key}")

    pipe = SLIMPipeline.from_pretrained(reference)
    pipe.set_progress_bar_config(disable=True)
    image = PIL.Image.new("RGB", (64, 64), (200, 40, 40))
    assert pipe.num_rate_levels == 2
    assert [bs.rate for bs in (pipe.compress(image, captions="x", rate=0)[0], pipe.compress(image, captions="x")[0])] == [0, 1]

    # stage 2 continues the variable-rate model; a single λr for it is refused with a sentence
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                              num_labels=2)).save_pretrained(tmp_path / "classifier")
    stage2 = ["--classifier_name_or_path", str(tmp_path / "classifier"), "--lpips_net", "alex", "--lpips_random_init",
              "--max_train_steps", "2", "--validation_steps", "0"]
    cmd = [sys.executable, STAGE2, "--pretrained_model_name_or_path", str(reference), "--train_data_dir",
           str(setup / "data"), "--resolution", "64", "--train_batch_size", "2", "--num_validation_images", "2",
           "--report_to", "none", *stage2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    refused = subprocess.run([*cmd, "--output_dir", str(tmp_path / "s2-one-rate")], env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "give one --lambda_rate value per level" in refused.stderr
    done = subprocess.run([*cmd, "--output_dir", str(tmp_path / "s2"), *levels], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert SLIMPipeline.from_pretrained(tmp_path / "s2").num_rate_levels == 2
    assert not torch.equal(weights(reference, "compressor")["rate_gains.log_gains"],
                           weights(tmp_path / "s2", "compressor")["rate_gains.log_gains"])


def test_model_card_names_hub_ids_in_its_metadata_and_local_paths_in_its_text(tmp_path):
    from types import SimpleNamespace

    from huggingface_hub import ModelCard

    from slim_diffusers.training import training_utils
    args = SimpleNamespace(pretrained_model_name_or_path="stabilityai/stable-diffusion-2-1-base", dataset_name=None,
                           train_data_dir=str(tmp_path / "data: local"), hub_model_id="me/slim", stage=1,
                           lambda_rate=0.5, lambda_guide=1.0, lambda_diffusion=1.0, lambda_roi=1.0, lambda_task=0.1,
                           no_roi=True, unet_lora_rank=0)
    (tmp_path / "data: local").mkdir()
    training_utils.write_model_card(args, tmp_path, {"val/bpp": 0.05}, 100)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "stabilityai/stable-diffusion-2-1-base" and card.data.datasets is None
    assert "data: local" in card.text and "w/o RoI" in card.text and "| val/bpp | 0.0500 |" in card.text
    args.pretrained_model_name_or_path, args.dataset_name = str(tmp_path), "me/slim-train"
    training_utils.write_model_card(args, tmp_path, {}, 100)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None and card.data.datasets == ["me/slim-train"]


def test_training_module_holds_only_what_trains():
    from slim_diffusers.training.training_utils import SLIMTrainingModule

    pipe = tiny_pipeline(seed=0)
    module = SLIMTrainingModule.from_pipeline(pipe)
    assert {key.split(".")[0] for key in module.state_dict()} == {"compressor", "decompressor", "controlnet"}
    main, aux = module.parameter_groups()
    assert {id(p) for p in main + aux} == {id(p) for p in module.parameters()}
    assert aux and all(p.shape[-1] == 3 for p in aux)  # the hyper-prior's quantiles
    # validation and saving build a pipeline of the very modules that train
    built = module.pipeline()
    assert built.compressor is pipe.compressor and built.controlnet is pipe.controlnet and built.unet is pipe.unet
    assert module.pipeline(copy_decompressor=True).decompressor is not pipe.decompressor


def test_resuming_a_checkpoint_of_the_earlier_layout_names_its_version(tmp_path):
    from slim_diffusers.training.training_utils import CheckpointVersionError, resolve_checkpoint

    old = tmp_path / "checkpoint-4"
    old.mkdir()
    for name in ("model.safetensors", "model_1.safetensors", "model_2.safetensors", "optimizer.bin"):
        (old / name).write_bytes(b"")
    with pytest.raises(CheckpointVersionError, match="slim-diffusers 0.1.0"):
        resolve_checkpoint(tmp_path, "latest")
    assert resolve_checkpoint(tmp_path / "empty", "latest") is None
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-9"))
