"""A short deterministic training of the tiny codec, so rate tests see realistic entropy-model scales."""

import torch

from slim_diffusers.coding.latents import run_codec
from slim_diffusers.testing import structured_latents, tiny_codec
from slim_diffusers.training.losses import LossWeights, variable_rate_term


def fit_tiny_codec(kodak_dir, steps: int = 150, seed: int = 0, lmbda: float = 4.0, rate_lambdas=None):
    """``rate_lambdas``: λr per level (level 0 first) trains a variable-rate codec with the training objective's rate
    term, every item at a level drawn at random each step; ``history`` then holds that term."""
    levels = len(rate_lambdas) if rate_lambdas else 0
    compressor, decompressor = tiny_codec(seed, num_rate_levels=levels)
    latents = structured_latents(batch=8, height=32, width=48, seed=seed, image_dir=str(kodak_dir))
    aux_params = [p for n, p in decompressor.named_parameters() if n.endswith("quantiles")]
    main_params = [p for n, p in decompressor.named_parameters() if not n.endswith("quantiles")]
    main_params += list(compressor.parameters())
    opt = torch.optim.Adam(main_params, lr=2e-3)
    aux_opt = torch.optim.Adam(aux_params, lr=1e-2)
    compressor.train(), decompressor.train()
    torch.manual_seed(seed)
    levels_drawn = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        rate = torch.randint(levels, (latents.shape[0],), generator=levels_drawn) if levels else None
        out = run_codec(compressor, decompressor, latents, rate)
        if levels:
            bpp = variable_rate_term(out.likelihoods, latents.shape[-2] * latents.shape[-1],
                                     LossWeights(rate_levels=tuple(rate_lambdas)), rate)
        else:
            bpp = out.bits() / latents.numel()
        loss = bpp + lmbda * torch.nn.functional.mse_loss(out.latents, latents)
        opt.zero_grad(), aux_opt.zero_grad()
        loss.backward()
        opt.step()
        decompressor.aux_loss().backward()
        aux_opt.step()
        history.append(float(bpp.detach()))
    compressor.eval(), decompressor.eval()
    decompressor.update(force=True)
    return compressor, decompressor, latents, history
