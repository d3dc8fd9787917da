import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from slim_diffusers import SLIMBitstream, SLIMModelMismatchError, SLIMPipeline
from slim_diffusers.testing import tiny_pipeline

STEPS = 2


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    a = PIL.Image.fromarray(base).resize((40, 32), PIL.Image.BICUBIC)
    b = PIL.Image.fromarray(base[::-1].copy()).resize((40, 32), PIL.Image.BICUBIC)
    return [a, b]


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    pipe.save_pretrained(path)
    return path


def decode(pipe, bitstreams, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe.decompress(bitstreams, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images


def test_compress_writes_real_bytes(pipe, images):
    bitstreams = pipe.compress(images, captions=["a cat", "a dog"])
    assert [bs.caption for bs in bitstreams] == ["a cat", "a dog"]
    for bs in bitstreams:
        data = bs.to_bytes()
        assert SLIMBitstream.from_bytes(data) == bs
        assert (bs.height, bs.width) == (32, 40)
        assert bs.bits_per_pixel == pytest.approx(8 * len(data) / (32 * 40))
        assert bs.fingerprint == pipe.decompressor.fingerprint()


def test_call_returns_images_bitstreams_and_rate(pipe, images):
    out = pipe(images, captions="a cat", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (40, 32) for im in out.images)
    assert out.bits_per_pixel == [bs.bits_per_pixel for bs in out.bitstreams]


def test_seeded_generator_is_deterministic(pipe, images):
    bitstreams = pipe.compress(images, captions="x")
    assert pipe.compress(images, captions="x") == bitstreams
    np.testing.assert_array_equal(decode(pipe, bitstreams, seed=3), decode(pipe, bitstreams, seed=3))
    assert np.abs(decode(pipe, bitstreams, seed=3) - decode(pipe, bitstreams, seed=4)).max() > 1e-4


def test_batch_of_one_equals_first_item_of_a_batch(pipe, images):
    bitstreams = pipe.compress(images, captions=["a cat", "a dog"])
    assert pipe.compress(images[:1], captions="a cat") == bitstreams[:1]
    batch = decode(pipe, bitstreams, seed=1)
    single = decode(pipe, bitstreams[:1], seed=1)
    np.testing.assert_allclose(batch[:1], single, atol=1e-4)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types(pipe, images, output_type):
    bitstreams = pipe.compress(images, captions="x")
    out = pipe.decompress(bitstreams, num_inference_steps=STEPS, output_type=output_type).images
    if output_type == "pil":
        assert [im.size for im in out] == [(40, 32)] * 2
    elif output_type == "np":
        assert out.shape == (2, 32, 40, 3) and 0 <= out.min() and out.max() <= 1
    elif output_type == "pt":
        assert out.shape == (2, 3, 32, 40)
    else:
        assert out.shape == (2, 4, 4, 5)


def test_any_size_and_mode_round_trips(pipe):
    rng = np.random.default_rng(1)
    inputs = [
        PIL.Image.fromarray(rng.integers(0, 256, (13, 21), dtype=np.uint8), mode="L"),
        PIL.Image.fromarray(rng.integers(0, 256, (9, 30, 4), dtype=np.uint8), mode="RGBA"),
        rng.random((17, 11, 3)).astype(np.float32),
        torch.rand(3, 24, 8),
    ]
    bitstreams = pipe.compress(inputs, captions="")
    sizes = [(bs.width, bs.height) for bs in bitstreams]
    assert sizes == [(21, 13), (30, 9), (11, 17), (8, 24)]
    out = pipe.decompress(bitstreams, use_diffusion=False, output_type="pil").images
    assert [im.size for im in out] == sizes


def test_bad_inputs_fail_early_with_clear_messages(pipe):
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        pipe.compress(np.full((8, 8, 3), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match="C in \\(1, 3, 4\\)"):
        pipe.compress(torch.rand(5, 8, 8))
    with pytest.raises(ValueError, match="captions"):
        pipe.compress([torch.rand(3, 8, 8)] * 2, captions=["a"])
    with pytest.raises(ValueError, match="output_type"):
        pipe.decompress(pipe.compress(torch.rand(3, 8, 8), captions=""), output_type="jpeg")


def test_missing_caption_warns_once_through_the_logger(images, caplog):
    p = tiny_pipeline(seed=0)
    p.compress(images[:1])
    assert "empty caption" in caplog.text
    caplog.clear()
    p.compress(images[:1])
    assert not caplog.records


def test_few_steps_from_noise_on_a_leading_schedule_warn_and_trailing_spacing_starts_at_high_noise(images, caplog):
    from diffusers import DDIMScheduler

    p = tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    assert p.scheduler.config.timestep_spacing == "leading"
    bitstreams = p.compress(images[:1], captions="x")
    caplog.clear()
    p.decompress(bitstreams, num_inference_steps=1)  # the leading schedule of one step: timestep 1
    assert re.search(r"starts at timestep [01] of 1000", caplog.text) and "trailing" in caplog.text
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config, timestep_spacing="trailing")
    assert p.get_timesteps(1, 1.0, "cpu").tolist() == [999] and p.get_timesteps(2, 0.5, "cpu").tolist() == [499]
    caplog.clear()
    p.decompress(bitstreams, num_inference_steps=1)
    p.decompress(bitstreams, num_inference_steps=2, strength=0.5)
    assert "starts at timestep" not in caplog.text


def test_callback_on_step_end_sees_and_can_replace_latents(pipe, images):
    bitstreams = pipe.compress(images[:1], captions="x")
    seen = []

    def callback(p, step, t, tensors):
        seen.append((step, int(t), tensors["latents"].shape))
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = pipe.decompress(bitstreams, num_inference_steps=3, callback_on_step_end=callback, output_type="latent")
    assert [s for s, _, _ in seen] == [0, 1, 2]
    assert torch.equal(out.images, torch.zeros_like(out.images))


def test_strength_below_one_starts_from_the_noised_latent(pipe, images):
    bitstreams = pipe.compress(images[:1], captions="x")
    calls = []
    pipe.decompress(bitstreams, num_inference_steps=10, strength=0.3, output_type="latent",
                    callback_on_step_end=lambda p, i, t, k: calls.append(i) or {})
    assert len(calls) == 3


def test_without_diffusion_decodes_the_transmitted_latent(pipe, images):
    bitstreams = pipe.compress(images[:1], captions="x")
    latent = pipe.decompress(bitstreams, use_diffusion=False, output_type="latent").images
    assert torch.equal(latent, pipe.decode_latents_from_bitstreams(bitstreams)[0])


def test_save_load_gives_the_same_output(pipe, images, saved):
    loaded = SLIMPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.compressor).__name__ == "SLIMCompressor"
    assert type(loaded.controlnet).__name__ == "SLIMControlNet"
    bitstreams = pipe.compress(images, captions="x")
    assert loaded.compress(images, captions="x") == bitstreams
    np.testing.assert_allclose(decode(loaded, bitstreams), decode(pipe, bitstreams), atol=1e-5)


def test_sender_only_loading(saved, images, pipe):
    sender = SLIMPipeline.from_pretrained(saved, unet=None, controlnet=None, text_encoder=None, tokenizer=None)
    assert sender.unet is None and sender.controlnet is None
    bitstreams = sender.compress(images, captions="x")
    assert bitstreams == pipe.compress(images, captions="x")
    with pytest.raises(ValueError, match="unet"):
        sender.decompress(bitstreams)


def test_loading_in_a_fresh_process(saved, images, pipe, tmp_path):
    path = tmp_path / "a.slim"
    pipe.compress(images[:1], captions="a fox")[0].save(path)
    code = (
        "import sys, numpy as np, torch; from slim_diffusers import SLIMPipeline, SLIMBitstream;"
        f"p = SLIMPipeline.from_pretrained({str(saved)!r}); p.set_progress_bar_config(disable=True);"
        f"bs = SLIMBitstream.load({str(path)!r});"
        f"im = p.decompress(bs, num_inference_steps={STEPS}, generator=torch.Generator().manual_seed(0), output_type='np').images;"
        f"np.save({str(tmp_path / 'out.npy')!r}, im)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    expected = decode(pipe, [SLIMBitstream.load(path)])
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


def test_decoding_with_other_weights_raises_mismatch(pipe, images):
    bitstreams = pipe.compress(images[:1], captions="x")
    other = tiny_pipeline(seed=1)
    with pytest.raises(SLIMModelMismatchError, match=bitstreams[0].fingerprint.hex()) as err:
        other.decompress(bitstreams)
    assert other.decompressor.fingerprint().hex() in str(err.value)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_from_stable_diffusion(tmp_path, prediction_type):
    from diffusers import StableDiffusionPipeline

    from slim_diffusers.testing import tiny_sd_components

    sd = StableDiffusionPipeline(**tiny_sd_components(0, prediction_type), safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(tmp_path / "sd")
    pipe = SLIMPipeline.from_stable_diffusion(
        str(tmp_path / "sd"), hidden_channels=8, latent_codec_channels=16, hyper_channels=8, groups=(4, 4, 8)
    )
    assert pipe.scheduler.config.prediction_type == prediction_type
    assert pipe.decompressor.config.groups == (4, 4, 8) and pipe.compressor.config.latent_codec_channels == 16
    torch.testing.assert_close(pipe.controlnet.conv_in.weight, pipe.unet.conv_in.weight)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(torch.rand(3, 16, 24), captions="x", num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 16, 24, 3)
    with pytest.raises(ValueError, match="unknown"):
        SLIMPipeline.from_stable_diffusion(str(tmp_path / "sd"), not_an_option=1)


def test_diffusion_parts_in_bfloat16(images):
    p = tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    bitstreams = p.compress(images[:1], captions="x")
    for name in ("vae", "unet", "controlnet", "text_encoder"):
        getattr(p, name).to(torch.bfloat16)
    out = p.decompress(bitstreams, num_inference_steps=STEPS, output_type="np").images
    assert out.shape == (1, 32, 40, 3) and np.isfinite(out).all()
    # the codec kept float32, so the decoding weights, and what they accept, are unchanged
    assert p.compress(images[:1], captions="x")[0].fingerprint == bitstreams[0].fingerprint


# ------------------------------------------------------------------------------- diffusers' pipeline habits
# what diffusers' PipelineTesterMixin.test_pipeline_call_signature asks of a pipeline, with SLIM's inputs
CALL_PARAMS = {"images", "captions"}
CALL_OPTIONAL_PARAMS = {
    "num_inference_steps", "strength", "guidance_scale", "controlnet_conditioning_scale", "use_diffusion", "eta",
    "generator", "latents", "output_type", "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs",
}


@pytest.mark.parametrize("method", ["__call__", "decompress"])
def test_call_signature_lists_every_argument(method):
    import inspect

    parameters = inspect.signature(getattr(SLIMPipeline, method)).parameters
    assert not any(p.kind == p.VAR_KEYWORD for p in parameters.values()), "no hidden **kwargs"
    optional = {name for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert CALL_OPTIONAL_PARAMS <= optional
    if method == "__call__":
        assert CALL_PARAMS <= set(parameters)


def test_device_map_loading_decodes(saved, images, pipe):
    loaded = SLIMPipeline.from_pretrained(saved, device_map="cpu")
    loaded.set_progress_bar_config(disable=True)
    bitstreams = pipe.compress(images, captions="x")
    assert loaded.compress(images, captions="x") == bitstreams
    np.testing.assert_allclose(decode(loaded, bitstreams), decode(pipe, bitstreams), atol=1e-5)


def test_model_cpu_offload_gives_the_same_output(saved, images, pipe):
    offloaded = SLIMPipeline.from_pretrained(saved)
    offloaded.set_progress_bar_config(disable=True)
    # on a machine without an accelerator the hooks move every model to the CPU and back: the wiring (the
    # sequence, the hooks on the codec's coding methods, _execution_device) is what runs
    offloaded.enable_model_cpu_offload(device="cpu")
    for name in ("compressor", "decompressor", "controlnet", "unet", "vae", "text_encoder"):
        assert hasattr(getattr(offloaded, name), "_hf_hook"), name
    assert offloaded._execution_device.type == "cpu"
    bitstreams = offloaded.compress(images, captions="x")
    assert bitstreams == pipe.compress(images, captions="x")
    np.testing.assert_allclose(decode(offloaded, bitstreams), decode(pipe, bitstreams), atol=1e-5)


def test_given_latents_replace_the_drawn_noise(pipe, images):
    bitstreams = pipe.compress(images, captions="x")
    size = pipe._latent_size(bitstreams[0])
    noise = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(5))
    a = pipe.decompress(bitstreams, num_inference_steps=STEPS, latents=noise, output_type="np").images
    b = pipe.decompress(bitstreams, num_inference_steps=STEPS, latents=noise.clone(), output_type="np",
                        generator=torch.Generator().manual_seed(9)).images
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="latents"):
        pipe.decompress(bitstreams, latents=noise[:1])


def test_pipeline_loop_and_training_loss_share_one_denoiser_step(pipe):
    import inspect

    from slim_diffusers.models import controlnet as controlnet_module
    from slim_diffusers.pipelines import pipeline_slim
    from slim_diffusers.training import losses

    assert losses.controlled_noise_prediction is controlnet_module.controlled_noise_prediction
    assert pipeline_slim.controlled_noise_prediction is controlnet_module.controlled_noise_prediction
    for module in (losses, pipeline_slim):
        assert "down_block_additional_residuals" not in inspect.getsource(module)


# ------------------------------------------------------------------------------------------- large images
def test_large_images_go_through_the_vae_in_tiles(images):
    from unittest import mock

    from slim_diffusers.pipelines.pipeline_slim import VAE_TILING_MIN_PIXELS

    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_tile_size() == 256  # the tiny VAE's sample_size is 64: tiles are at least VAE_MIN_TILE_SIZE
    large = PIL.Image.fromarray(np.random.default_rng(2).integers(0, 256, (500, 600, 3), dtype=np.uint8))
    assert 500 * 600 > VAE_TILING_MIN_PIXELS >= 32 * 40

    def run(image):
        vae = pipe.vae
        with mock.patch.object(vae, "_tiled_encode", wraps=vae._tiled_encode) as enc, \
                mock.patch.object(vae, "tiled_decode", wraps=vae.tiled_decode) as dec:
            (bs,) = pipe.compress(image, captions="x")
            out = pipe.decompress(bs, use_diffusion=False, output_type="np").images
        return bs, out, enc.call_count + dec.call_count

    bs_auto, out_auto, tiled = run(large)
    assert tiled == 2 and out_auto.shape == (1, 500, 600, 3)
    assert not pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == 64  # the VAE's own settings are restored
    assert run(images[0])[2] == 0  # small images are coded whole

    pipe.disable_vae_tiling()
    bs_whole, out_whole, tiled = run(large)
    assert tiled == 0 and out_whole.shape == out_auto.shape and bs_whole.payload != bs_auto.payload

    pipe.enable_vae_tiling(tile_size=128)
    assert pipe.vae_tile_size() == 128 and run(images[0])[2] == 0  # 40×32 fits in one tile
    assert run(large)[2] == 2
    with pytest.raises(ValueError, match="multiple of 32"):
        pipe.enable_vae_tiling(tile_size=100)


# ----------------------------------------------------------------------------------- memory and attention
def test_vae_slicing_switches_the_vae_and_keeps_the_output(pipe, images):
    bitstreams = pipe.compress(images, captions="x")
    reference = decode(pipe, bitstreams)
    pipe.enable_vae_slicing()
    try:
        assert pipe.vae.use_slicing
        assert pipe.compress(images, captions="x") == bitstreams
        np.testing.assert_allclose(decode(pipe, bitstreams), reference, atol=1e-6)
    finally:
        pipe.disable_vae_slicing()
    assert not pipe.vae.use_slicing


def test_attention_processors_reach_the_unet_and_the_control_module(images):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    pipe = tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    bitstreams = pipe.compress(images, captions="x")
    reference = decode(pipe, bitstreams)

    calls = {"unet": 0, "controlnet": 0}

    class Counting(AttnProcessor):
        def __init__(self, owner):
            super().__init__()
            self.owner = owner

        def __call__(self, attn, hidden_states, *args, **kwargs):
            calls[self.owner] += 1
            return super().__call__(attn, hidden_states, *args, **kwargs)

    pipe.set_attn_processor(Counting("unet"))
    assert all(isinstance(p, Counting) for p in pipe.controlnet.attn_processors.values())
    pipe.controlnet.set_attn_processor(Counting("controlnet"))
    np.testing.assert_allclose(decode(pipe, bitstreams), reference, atol=1e-5)  # the classic processor: same images
    assert calls["unet"] > 0 and calls["controlnet"] > 0

    by_name = {name: AttnProcessor2_0() for name in pipe.unet.attn_processors}
    pipe.set_attn_processor(by_name)
    assert set(pipe.controlnet.attn_processors) <= set(by_name)
    assert all(type(p) is AttnProcessor2_0 for p in pipe.controlnet.attn_processors.values())
    with pytest.raises(ValueError):
        pipe.set_attn_processor({name: AttnProcessor2_0() for name in list(by_name)[:1]})
