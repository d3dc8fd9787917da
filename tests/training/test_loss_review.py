"""The five findings of the toy world v2 review of SLIM's loss code, one test each: mask weighting, the warm start and
learning rates of the toy recipe, x̂'s timestep in stage 2, a perceptual distance that is a distance, and start noise
kept apart from step count."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slim_diffusers.testing import tiny_classifier, tiny_pipeline
from slim_diffusers.training import losses
from slim_diffusers.training.losses import LossWeights, decode_timesteps, guide_loss, perceptual_distance, slim_losses

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks" / "toy"))


def test_mass_normalisation_gives_a_mask_of_any_size_the_same_distortion_weight():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 12, 12)
    z_hat = z + 0.3 * torch.randn(2, 4, 12, 12)
    ones = torch.ones(2, 1, 12, 12)
    plain = torch.nn.functional.mse_loss(z_hat, z)
    # without RoI masks both forms are the plain MSE: the w/o-RoI variant trains as before
    assert torch.allclose(guide_loss(z, z_hat, ones, "mass"), plain)
    assert torch.allclose(guide_loss(z, z_hat, ones, "literal"), plain)
    # an error of the same size inside a small and a large target: the mean over the mask's mass weighs both the same;
    # the literal form scales with the mask's mass (E[M²]), which made λg mean less for the RoI model
    err = torch.full_like(z, 0.5)
    small, large = torch.zeros_like(ones), torch.zeros_like(ones)
    small[..., 4:7, 4:7], large[..., 1:11, 1:11] = 1.0, 1.0
    assert torch.allclose(guide_loss(z, z + err, small, "mass"), guide_loss(z, z + err, large, "mass"))
    assert torch.allclose(guide_loss(z, z + err, small, "mass"), torch.tensor(0.25))
    literal_small, literal_large = guide_loss(z, z + err, small, "literal"), guide_loss(z, z + err, large, "literal")
    assert torch.allclose(literal_large / literal_small, torch.tensor(100 / 9))
    # soft masks: M² weights, the errors outside the mask count for nothing
    soft = 0.5 * large
    outside = torch.where(large.bool().expand_as(z), torch.zeros_like(z), torch.ones_like(z))
    assert guide_loss(z, z + outside, soft, "mass") == 0
    with pytest.raises(ValueError, match="mask normalization"):
        guide_loss(z, z_hat, ones, "mean")


def test_toy_recipes_v2_pins_its_loss_options_and_v3_warms_up_from_the_highest_rate():
    import run_toy

    from slim_diffusers.training.train import parse_args

    def commands(cfg):
        return [run_toy._train_job("j", "train_stage2.py", Path("m"), Path("d"), Path("o"), 1.0, False, stage, cfg)
                for stage in (cfg.slim_stage1_base, cfg.slim_stage2)]

    v2, v3 = run_toy.recipe_config("v2"), run_toy.recipe_config("v3")
    for job in commands(v2):  # the committed v2 results' behaviour, named explicitly
        args = parse_args(2, [str(c) for c in job.cmd[2:]], check_inputs=False)  # the flags only
        assert (args.mask_normalization, args.stage2_timesteps, args.lpips_signed_heads) == ("literal", "uniform", True)
        assert (args.lr_scheduler, args.lr_warmup_steps) == ("constant", 0)
    assert (v2.warm_start_rate, v2.slim_stage1_base[2]) == (1.0, 1e-3)
    for job, (steps, _, lr) in zip(commands(v3), (v3.slim_stage1_base, v3.slim_stage2)):
        args = parse_args(2, [str(c) for c in job.cmd[2:]], check_inputs=False)  # the flags only
        assert (args.mask_normalization, args.stage2_timesteps, args.lpips_signed_heads) == ("mass", "decode", False)
        assert args.lr_scheduler == "constant_with_warmup" and args.lr_warmup_steps == int(0.05 * steps) > 0
        assert args.learning_rate == lr <= 2e-4
    # v3 warm-starts every rate from the lowest λr (the most bits), where no model collapsed
    assert v3.warm_start_rate == min(v3.rate_points)
    assert run_toy.recipe_config("v3", smoke=True).train_options == v3.train_options
    with pytest.raises(ValueError, match="recipe"):
        run_toy.recipe_config("v4")


@pytest.mark.filterwarnings("error::UserWarning")  # the replay does not warn of a broken schedule
def test_lr_warm_up_rises_linearly_and_resumes_by_step_count():
    from diffusers.optimization import get_scheduler

    from slim_diffusers.training.train import replay_schedule

    def lrs(steps, resume_at=None):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
        sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=4, num_training_steps=10)
        out = []
        for step in range(steps):
            if resume_at is not None and step == 0:  # what train.py does after loading a checkpoint
                replay_schedule(sched, resume_at)
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    full = lrs(8)
    assert np.allclose(full[:5], [0, 2.5e-5, 5e-5, 7.5e-5, 1e-4]) and np.allclose(full[5:], 1e-4)
    assert np.allclose(lrs(3, resume_at=2), full[2:5])


def test_stage2_draws_xhat_at_the_decoders_timesteps(monkeypatch):
    pipe = tiny_pipeline(seed=0)
    for steps, strength, spacing, expected in [
        (2, 0.5, "trailing", [499]),  # the bundled model's decode: one step at t = 499
        (20, 1.0, "leading", list(range(951, 0, -50))),  # the pipeline's default decode
        (8, 0.5, "leading", [376, 251, 126, 1]),  # toy world v2's decode
    ]:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, timestep_spacing=spacing, steps_offset=1)
        choices = decode_timesteps(pipe.scheduler, steps, strength)
        assert choices.tolist() == expected == pipe.get_timesteps(steps, strength, "cpu").tolist()
    # slim_losses draws x̂'s timestep (the second controlled prediction of a stage-2 step) from them
    seen = []
    original = losses.controlled_noise_prediction

    def record(unet, controlnet, noisy, timesteps, *rest):
        seen.append(timesteps.tolist())
        return original(unet, controlnet, noisy, timesteps, *rest)

    monkeypatch.setattr(losses, "controlled_noise_prediction", record)
    for m in (pipe.compressor, pipe.decompressor, pipe.controlnet):
        m.train()
    classifier, _ = tiny_classifier(num_labels=2, image_size=32)
    batch = dict(pixels=torch.rand(8, 3, 32, 32) * 2 - 1, roi_mask=torch.ones(8, 1, 32, 32),
                 prompt_embeds=pipe.encode_prompt(["a"] * 8, "cpu", False)[0], weights=LossWeights(), stage=2,
                 labels=torch.arange(8) % 2, classifier=classifier, classifier_preprocess=lambda x: x,
                 lpips_model=perceptual_distance("alex", random_init=True))
    slim_losses(pipe, **batch, generator=torch.Generator().manual_seed(0), stage2_timesteps=choices)
    assert set(seen[-1]) <= set(expected) and len(set(seen[-1])) > 1
    slim_losses(pipe, **batch, generator=torch.Generator().manual_seed(0))
    assert not set(seen[-1]) <= set(expected)  # without them: uniform on [0, 1000)


def test_random_init_lpips_is_a_distance():
    lpips_model = perceptual_distance("alex", random_init=True)
    assert all(float(w.min()) >= 0 for head in lpips_model.lins for w in head.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(lpips_model(x, x), torch.zeros(4, 1, 1, 1), atol=1e-6)
        noise = torch.randn(x.shape, generator=gen)
        d = [lpips_model(x, (x + s * noise).clamp(-1, 1)).flatten() for s in (0.05, 0.2, 0.8)]
        assert all(bool((v >= 0).all()) for v in d)
        assert bool((d[0] < d[1]).all()) and bool((d[1] < d[2]).all())
        y = torch.rand(x.shape, generator=gen) * 2 - 1
        assert torch.allclose(lpips_model(x, y), lpips_model(y, x), atol=1e-6)
    # the v2 behaviour (random signs) stays reachable, and its heads do have negative weights
    signed = perceptual_distance("alex", random_init=True, signed_heads=True)
    assert any(float(w.min()) < 0 for head in signed.lins for w in head.parameters())


def test_step_count_study_separates_start_noise_from_steps():
    import few_step

    pipe = tiny_pipeline(seed=0)
    leading = type(pipe.scheduler).from_config(pipe.scheduler.config, timestep_spacing="leading", steps_offset=1)
    trailing = type(pipe.scheduler).from_config(pipe.scheduler.config, timestep_spacing="trailing")
    # the v2 study: on the leading schedule each step count starts from another noise level (1 step: none at all)
    assert [few_step.decode_plan(leading, k, 0.5)["start_timestep"] for k in (1, 2, 4, 10)] == [1, 251, 376, 451]
    # trailing spacing: every step count at strength 0.5 starts from t = 499, so only the number of steps differs
    for k in (1, 2, 4, 10):
        plan = few_step.decode_plan(trailing, k, 0.5)
        assert plan["start_timestep"] == 499 and len(plan["timesteps"]) == k and plan["schedule"] == 2 * k
    assert few_step.decode_plan(trailing, 1, 1.0)["start_timestep"] == 999
    with pytest.raises(ValueError, match="strength"):
        decode_timesteps(trailing, 4, 0.0)


def _stage2_batch(pipe, n=4, levels=None):
    classifier, _ = tiny_classifier(num_labels=2, image_size=32)
    generator = torch.Generator().manual_seed(3)
    return dict(pixels=torch.rand(n, 3, 32, 32, generator=generator) * 2 - 1,
                roi_mask=(torch.rand(n, 1, 32, 32, generator=generator) > 0.5).float(),
                prompt_embeds=pipe.encode_prompt(["a"] * n, "cpu", False)[0], stage=2, labels=torch.arange(n) % 2,
                classifier=classifier, classifier_preprocess=lambda x: x,
                lpips_model=perceptual_distance("alex", random_init=True), rate=levels)


@pytest.mark.parametrize("normalization", ["mass", "literal"])
def test_level_loss_scale_divides_each_images_loss_by_its_lambda_above_one(normalization, monkeypatch):
    pipe = tiny_pipeline(seed=0, num_rate_levels=2)
    for m in (pipe.compressor, pipe.decompressor, pipe.controlnet):
        m.eval()  # no training noise: the same batch gives the same terms under both scales
    run_codec = losses.run_codec

    def quantised(*args, **kwargs):  # the codec as it decodes (its eval pass runs without gradients)
        with torch.no_grad():
            return run_codec(*args, **kwargs)

    monkeypatch.setattr(losses, "run_codec", quantised)
    levels = (4.0, 0.5)  # level 0: λr 4 (scaled by 1/4); level 1: λr 0.5 (not scaled)

    def terms(scale, rate):
        weights = LossWeights(rate_levels=levels, level_scale=scale)
        return slim_losses(pipe, **_stage2_batch(pipe, levels=rate), weights=weights, mask_normalization=normalization,
                           generator=torch.Generator().manual_seed(0))

    names = ("guide_loss", "diffusion_loss", "roi_mse", "roi_lpips", "task_loss", "loss")
    # every image at λr 4: each term, and the loss, is a quarter of the unscaled one
    plain, scaled = terms("none", torch.zeros(4, dtype=torch.long)), terms("inverse_lambda", torch.zeros(4, dtype=torch.long))
    for name in names:
        assert torch.allclose(scaled[name], plain[name] / 4, rtol=1e-5), name
    # every image at λr 0.5 (≤ 1): nothing changes
    plain, scaled = terms("none", torch.ones(4, dtype=torch.long)), terms("inverse_lambda", torch.ones(4, dtype=torch.long))
    for name in names:
        assert torch.allclose(scaled[name], plain[name], rtol=1e-6), name
    # a mixed batch: each image weighs by its own level (the guide term by hand)
    rate = torch.tensor([0, 1, 0, 1])
    mixed = terms("inverse_lambda", rate)
    z = pipe.vae.encode(_stage2_batch(pipe)["pixels"]).latent_dist.mode() * pipe.vae.config.scaling_factor
    z_hat = quantised(pipe.compressor, pipe.decompressor, z, rate).latents
    mask = losses.resize_mask(_stage2_batch(pipe)["roi_mask"], z.shape[-2:])
    w = torch.tensor([0.25, 1.0, 0.25, 1.0]).view(-1, 1, 1, 1)
    if normalization == "mass":
        expected = (w * mask**2 * (z_hat - z) ** 2).sum() / (mask**2).expand_as(z).sum()
    else:
        expected = (w * (mask * z_hat - mask * z) ** 2).mean()
    assert torch.allclose(mixed["guide_loss"], expected, rtol=1e-5)


def test_level_loss_scale_needs_a_variable_rate_objective():
    with pytest.raises(ValueError, match="unknown level_scale"):
        LossWeights(rate_levels=(2.0, 1.0), level_scale="sqrt")
    with pytest.raises(ValueError, match="give rate_levels"):
        LossWeights(level_scale="inverse_lambda")
    assert "level_scale" not in LossWeights(rate_levels=(2.0, 1.0)).as_dict()  # the default leaves cards as they were
    assert LossWeights(rate_levels=(2.0, 1.0), level_scale="inverse_lambda").as_dict()["level_scale"] == "inverse_lambda"
    from slim_diffusers.training.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(1, ["--pretrained_model_name_or_path", "x", "--train_data_dir", "y", "--output_dir", "z",
                       "--level_loss_scale", "inverse_lambda"], check_inputs=False)
    args = parse_args(1, ["--pretrained_model_name_or_path", "x", "--train_data_dir", "y", "--output_dir", "z",
                          "--lambda_rate", "4", "0.5", "--level_loss_scale", "inverse_lambda"], check_inputs=False)
    from slim_diffusers.training.training_utils import loss_weights

    assert loss_weights(args).level_scale == "inverse_lambda"
