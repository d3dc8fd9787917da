"""Training at Stable Diffusion 2.1-base's layout (four UNet levels, 64-channel heads, linear projections, a CLIP text
encoder padded to 77 tokens) at a tenth of its width: the paths `benchmarks/train_full_size.py` runs at full size."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slim_diffusers import SLIMControlNet, SLIMPipeline
from slim_diffusers.semantics.roi import classifier_inputs
from slim_diffusers.testing import sd21_base_codec, sd21_base_components, tiny_classifier
from slim_diffusers.training.losses import LossWeights, slim_losses
from slim_diffusers.training.training_utils import SLIMTrainingModule

REPO = Path(__file__).resolve().parents[2]


def reduced_module(seed: int = 0) -> SLIMTrainingModule:
    sd = sd21_base_components(width_scale=0.1, text_layers=2, seed=seed)
    compressor, decompressor = sd21_base_codec(width_scale=0.1, seed=seed)
    controlnet = SLIMControlNet.from_unet(sd["unet"])
    with torch.no_grad():  # untrained zero convolutions would give the control module no gradient to compare
        gen = torch.Generator().manual_seed(seed)
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    pipe = SLIMPipeline(**sd, controlnet=controlnet, compressor=compressor, decompressor=decompressor)
    module = SLIMTrainingModule.from_pipeline(pipe)
    module.frozen.unet.requires_grad_(False)
    module.frozen.vae.requires_grad_(False)
    module.frozen.text_encoder.requires_grad_(False)
    return module


def stage2_step(module, classifier, processor, lpips_model):
    """Stage 2's loss and backward on one 64² image; returns (gradients, bytes saved for backward outside parameters)."""
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    embeds = module.encode_captions(["a red square"], "cpu", torch.float32)
    params = {id(p) for p in module.parameters()} | {id(p) for m in (module.unet, module.vae) for p in m.parameters()}
    saved = [0]

    def pack(t):
        if id(t._base if t._base is not None else t) not in params:
            saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        terms = module(pixels, mask, embeds, LossWeights(), stage=2, labels=torch.tensor([3]), classifier=classifier,
                       classifier_preprocess=lambda x: classifier_inputs(x, processor), lpips_model=lpips_model,
                       generator=torch.Generator().manual_seed(1))
    module.zero_grad()
    terms["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return grads, saved[0]


def test_gradient_checkpointing_keeps_the_gradients_and_drops_the_frozen_models_activations():
    import lpips

    module = reduced_module()
    module.train()
    classifier, processor = tiny_classifier(num_labels=10)
    classifier.requires_grad_(False)
    lpips_model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False).eval().requires_grad_(False)

    plain, plain_bytes = stage2_step(module, classifier, processor, lpips_model)
    module.enable_gradient_checkpointing()
    assert module.unet.is_gradient_checkpointing and module.vae.is_gradient_checkpointing
    assert module.controlnet.is_gradient_checkpointing
    checkpointed, checkpointed_bytes = stage2_step(module, classifier, processor, lpips_model)

    assert plain.keys() == checkpointed.keys() and any(n.startswith("controlnet.") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    # the UNet's and the VAE decoder's activations are half of what backward keeps at this width, most of it at full size
    assert checkpointed_bytes < 0.6 * plain_bytes, (checkpointed_bytes, plain_bytes)


def test_the_codec_trains_in_float32_under_bfloat16_autocast():
    module = reduced_module()
    module.train()
    for frozen in (module.vae, module.unet, module.text_encoder):
        frozen.to(torch.bfloat16)
    pixels = (torch.rand(1, 3, 64, 64) * 2 - 1).to(torch.bfloat16)
    embeds = module.encode_captions(["a red square"], "cpu", torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = module(pixels, torch.ones(1, 1, 64, 64), embeds, LossWeights(), stage=1,
                       generator=torch.Generator().manual_seed(0))
    assert terms["rate_bpp"].dtype == torch.float32 and terms["guide_loss"].dtype == torch.float32
    terms["loss"].backward()
    assert module.compressor.g_a[0].weight.grad is not None


def test_classifier_inputs_take_bfloat16_images():
    _, processor = tiny_classifier(num_labels=10, image_size=32)
    out = classifier_inputs(torch.rand(2, 3, 48, 40, dtype=torch.bfloat16), processor)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32


def test_benchmark_trains_both_stages_from_a_stable_diffusion_folder_in_bfloat16(tmp_path):
    # the benchmark's CI size: both real training scripts, stage 1 from a Stable Diffusion folder
    # (SLIMPipeline.from_stable_diffusion), stage 2 from stage 1's output, --gradient_checkpointing, bf16
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_full_size.py"), "--tiny", "--steps", "1", "--threads", "1",
           "--mixed-precision", "bf16", "--no-save", "--workdir", str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage 1, batch 1: no steady step" in result.stdout and "stage 2, batch 1: no steady step" in result.stdout
    assert (tmp_path / "stage2-batch1" / "model_index.json").is_file()
    assert SLIMPipeline.from_pretrained(tmp_path / "stage2-batch1").controlnet is not None
