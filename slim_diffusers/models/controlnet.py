"""SLIM's control module: a ControlNet whose condition is the decompressed latent ẑ itself."""

from typing import Optional, Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

# one conv to the UNet's first width and a zero conv out: no strided blocks, so stride 1
LATENT_CONDITIONING_EMBEDDING = (64,)


class SLIMControlNet(ControlNetModel):
    r"""
    Trainable copy of the UNet's time embedding, ``conv_in``, down blocks and mid block, with zero-initialised
    output convolutions (diffusers' :class:`ControlNetModel`), conditioned on the RoI-focused latent ẑ and
    attending to the CLIP-encoded caption.

    ẑ already has the UNet latent's size and channels, so the condition is embedded in latent space at stride
    1: diffusers' ``ControlNetConditioningEmbedding`` with a single width in
    ``conditioning_embedding_out_channels`` is a 3×3 conv, SiLU and a zero-initialised 3×3 conv, without the
    three stride-2 convolutions that map a pixel-space condition image down to latent size. Build it with
    :meth:`from_unet`, which sets ``conditioning_channels`` to the latent channels and this embedding.

    The output is diffusers' ``ControlNetOutput``; pass its residuals to the UNet as
    ``down_block_additional_residuals`` and ``mid_block_additional_residual``.
    """

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        conditioning_channels: Optional[int] = None,
        conditioning_embedding_out_channels: Sequence[int] = LATENT_CONDITIONING_EMBEDDING,
        load_weights_from_unet: bool = True,
        controlnet_conditioning_channel_order: str = "rgb",
    ) -> "SLIMControlNet":
        """Initialise from a UNet (weights copied) with the latent-space, stride-1 condition embedding."""
        return super().from_unet(
            unet,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            load_weights_from_unet=load_weights_from_unet,
            conditioning_channels=conditioning_channels or unet.config.in_channels,
        )

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, controlnet_cond: torch.Tensor, *args, **kwargs):
        if controlnet_cond.shape[-2:] != sample.shape[-2:] or controlnet_cond.shape[1] != self.config.conditioning_channels:
            raise ValueError(
                f"the control module takes ẑ at the latent's size: got a condition of shape {tuple(controlnet_cond.shape)} "
                f"for a sample of shape {tuple(sample.shape)} ({self.config.conditioning_channels} channels expected); "
                "build it with SLIMControlNet.from_unet"
            )
        return super().forward(sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs)


# model_index.json records where a component's class lives; recording the package (not this file) keeps
# saved pipelines loadable when the code moves. diffusers then finds the class and its base classes
# (ModelMixin, ...) as attributes of `slim_diffusers`.
SLIMControlNet.__module__ = "slim_diffusers"


def controlled_noise_prediction(
    unet: UNet2DConditionModel,
    controlnet: SLIMControlNet,
    sample: torch.Tensor,
    timestep,
    encoder_hidden_states: torch.Tensor,
    control_latents: torch.Tensor,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """One step of the controlled denoiser: the control module's residuals for ``control_latents`` (ẑ) added into
    the frozen UNet. The pipeline's sampling loop and the training loss both call this, so what is trained is
    what decodes."""
    down, mid = controlnet(
        sample,
        timestep,
        encoder_hidden_states=encoder_hidden_states,
        controlnet_cond=control_latents,
        conditioning_scale=conditioning_scale,
        return_dict=False,
    )
    return unet(
        sample,
        timestep,
        encoder_hidden_states=encoder_hidden_states,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]
