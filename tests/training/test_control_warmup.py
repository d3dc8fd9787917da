"""The control module's warm-up (``--control_warmup_steps``, our addition to the paper's training): for its first steps
the denoising term's control is the uncompressed latent z instead of ẑ, and the codec learns from its own terms."""

import torch

from slim_diffusers.testing import tiny_pipeline
from slim_diffusers.training import losses, training_utils
from slim_diffusers.training.losses import LossWeights, slim_losses

from .test_train import make_dataset


def test_the_denoising_term_is_controlled_by_z_and_leaves_the_codec_alone(monkeypatch):
    pipe = tiny_pipeline(seed=0)
    for m in (pipe.compressor, pipe.decompressor, pipe.controlnet):
        m.train()
    controls = []
    original = losses.controlled_noise_prediction

    def record(unet, controlnet, noisy, timesteps, embeds, control):
        controls.append(control)
        return original(unet, controlnet, noisy, timesteps, embeds, control)

    monkeypatch.setattr(losses, "controlled_noise_prediction", record)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    batch = dict(pixels=pixels, roi_mask=torch.ones(2, 1, 32, 32), prompt_embeds=pipe.encode_prompt(["a"] * 2, "cpu", False)[0],
                 weights=LossWeights())
    with torch.no_grad():
        z = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    grads = {}
    for warm in (True, False):
        terms = slim_losses(pipe, **batch, generator=torch.Generator().manual_seed(0), control_from_latents=warm)
        pipe.compressor.zero_grad()
        terms["diffusion_loss"].backward()
        grads[warm] = sum(float(p.grad.abs().sum()) for p in pipe.compressor.parameters() if p.grad is not None)
    assert torch.equal(controls[0], z)  # warm-up: the control is z itself
    assert not torch.equal(controls[1], z)  # the paper's training: ẑ
    assert grads[True] == 0 and grads[False] > 0  # only ẑ carries the denoising term back into the codec


def test_training_warms_up_for_the_steps_asked_then_trains_as_the_paper(tmp_path, monkeypatch):
    make_dataset(n=6).save_to_disk(str(tmp_path / "data"))
    tiny_pipeline(seed=0).save_pretrained(tmp_path / "model")
    seen = []
    original = training_utils.slim_losses

    def record(*args, control_from_latents=False, **kwargs):
        seen.append(control_from_latents)
        return original(*args, control_from_latents=control_from_latents, **kwargs)

    monkeypatch.setattr(training_utils, "slim_losses", record)
    from slim_diffusers.training.train import main

    main(1, ["--pretrained_model_name_or_path", str(tmp_path / "model"), "--train_data_dir", str(tmp_path / "data"),
             "--output_dir", str(tmp_path / "out"), "--resolution", "64", "--train_batch_size", "2",
             "--num_validation_images", "0", "--report_to", "none", "--max_train_steps", "3",
             "--validation_steps", "0", "--checkpointing_steps", "100", "--control_warmup_steps", "2"])
    assert seen == [True, True, False]
    assert (tmp_path / "out" / "model_index.json").is_file()
