"""SLIMPipeline: compress images to ``.slim`` bitstreams and decode them with the control module + SD UNet."""

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import Blip2ForConditionalGeneration, CLIPTextModel, CLIPTokenizer, PreTrainedModel
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.processing_utils import ProcessorMixin

from ..coding.bitstream import MAX_SIDE, SLIMBitstream
from ..semantics.captioning import DEFAULT_MAX_NEW_TOKENS, CaptionOutput, generate_captions
from ..coding.latents import check_pair, compress_latents, decompress_latents
from ..errors import SLIMModelMismatchError
from ..utils.image_utils import ImageInput, image_size, to_rgb_list
from ..models.compressor import SLIMCompressor
from ..models.controlnet import SLIMControlNet
from ..models.decompressor import SLIMDecompressor
from ..semantics.roi import RoIMaskOutput, compute_roi_masks


@dataclass
class SLIMPipelineOutput(BaseOutput):
    """
    Args:
        images: decoded images (`List[PIL.Image.Image]`, `np.ndarray`, `torch.Tensor`, or latents for
            ``output_type="latent"``).
        bitstreams: the compressed images (``None`` when decoding existing bitstreams).
        bits_per_pixel: per image, counted from the bytes of the whole ``.slim`` file.
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    bitstreams: Optional[List[SLIMBitstream]] = None
    bits_per_pixel: Optional[List[float]] = None


class SLIMPipeline(DiffusionPipeline):
    r"""
    SLIM: semantic-based low-bitrate image compression for machines.

    Sender side (:meth:`compress`): image → VAE encoder → latent → :class:`SLIMCompressor` and the entropy
    model of :class:`SLIMDecompressor` → bytes, with the (RoI-focused) caption, in a :class:`SLIMBitstream`.
    Needs only ``vae``, ``compressor`` and ``decompressor``.

    Receiver side (:meth:`decompress`): bytes → :class:`SLIMDecompressor` → RoI-focused latent ẑ → denoising
    loop in which :class:`SLIMControlNet`, conditioned on ẑ and the CLIP-encoded caption, guides the frozen
    ``unet`` → VAE decoder → image cropped to its original size.

    Args:
        vae ([`AutoencoderKL`]): Stable Diffusion 2.1 VAE.
        text_encoder ([`CLIPTextModel`]): frozen CLIP text encoder for captions.
        tokenizer ([`CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): frozen Stable Diffusion 2.1 UNet.
        controlnet ([`SLIMControlNet`]): the trainable control module.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler (ε- or v-prediction).
        compressor ([`SLIMCompressor`]): latent and hyper analysis transforms.
        decompressor ([`SLIMDecompressor`]): entropy model and latent synthesis.
        roi_classifier ([`PreTrainedModel`], *optional*): sender side, an image classifier with a convolutional
            backbone (``microsoft/resnet-50`` in the paper) whose Grad-CAM map is the RoI (:mod:`slim_diffusers.semantics.roi`).
        roi_image_processor ([`ImageProcessingMixin`], *optional*): its image processor (input size, mean, std).
        captioner ([`Blip2ForConditionalGeneration`], *optional*): sender side, BLIP-2, which writes the
            RoI-focused caption when ``compress()`` is given none (:mod:`slim_diffusers.semantics.captioning`).
        caption_processor ([`Blip2Processor`], *optional*): its processor.
    """

    model_cpu_offload_seq = "roi_classifier->captioner->compressor->text_encoder->controlnet->unet->vae"
    _optional_components = [
        "text_encoder",
        "tokenizer",
        "unet",
        "controlnet",
        "roi_classifier",
        "roi_image_processor",
        "captioner",
        "caption_processor",
    ]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "control_latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: Optional[CLIPTextModel],
        tokenizer: Optional[CLIPTokenizer],
        unet: Optional[UNet2DConditionModel],
        controlnet: Optional[SLIMControlNet],
        scheduler: KarrasDiffusionSchedulers,
        compressor: SLIMCompressor,
        decompressor: SLIMDecompressor,
        roi_classifier: Optional[PreTrainedModel] = None,
        roi_image_processor: Optional[ImageProcessingMixin] = None,
        captioner: Optional[Blip2ForConditionalGeneration] = None,
        caption_processor: Optional[ProcessorMixin] = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            compressor=compressor,
            decompressor=decompressor,
            roi_classifier=roi_classifier,
            roi_image_processor=roi_image_processor,
            captioner=captioner,
            caption_processor=caption_processor,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        # sizes are kept, not resized: the pipeline pads to the VAE's stride and crops back
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_resize=False)
        self._empty_caption_warned = False
        self._whole_image_caption_warned = False

    # ------------------------------------------------------------------------------------- construction
    @classmethod
    def from_stable_diffusion(
        cls,
        pretrained_model_name_or_path: str,
        scheduler=None,
        torch_dtype: Optional[torch.dtype] = None,
        **compressor_config,
    ) -> "SLIMPipeline":
        """Assemble an untrained SLIM from a Stable Diffusion 2.1 checkpoint: the starting point for training.

        VAE, text encoder, tokenizer, UNet and scheduler come from the checkpoint (ε- or v-prediction, as its
        scheduler config says); the control module is initialised from the UNet (:meth:`SLIMControlNet.from_unet`);
        compressor and decompressor are new, built with ``compressor_config`` (keys of either config).
        """
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        path = pretrained_model_name_or_path
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        if scheduler is None:
            scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
        controlnet = SLIMControlNet.from_unet(unet, conditioning_channels=unet.config.in_channels)
        shared = {"latent_channels": unet.config.in_channels}
        comp_keys = set(inspect.signature(SLIMCompressor.__init__).parameters) & set(compressor_config)
        dec_keys = set(inspect.signature(SLIMDecompressor.__init__).parameters) & set(compressor_config)
        unknown = set(compressor_config) - comp_keys - dec_keys
        if unknown:
            raise ValueError(f"unknown compressor/decompressor options: {sorted(unknown)}")
        compressor = SLIMCompressor(**{**shared, **{k: compressor_config[k] for k in comp_keys}})
        dec_kw = {k: compressor_config[k] for k in dec_keys}
        dec_kw.setdefault("num_upsamples", compressor.config.num_downsamples)
        decompressor = SLIMDecompressor(**{**shared, **dec_kw})
        decompressor.update(force=True)
        return cls(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            compressor=compressor,
            decompressor=decompressor,
        )

    # --------------------------------------------------------------------------------------------- inputs
    def check_inputs(self, images: List[Any]) -> None:
        for i, image in enumerate(images):
            h, w = image_size(image)
            if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
                raise ValueError(f"image {i} is {w}×{h}; SLIM codes images from 1×1 up to {MAX_SIDE}×{MAX_SIDE} pixels")

    def _require(self, *names: str, action: str) -> None:
        missing = [n for n in names if getattr(self, n, None) is None]
        if missing:
            raise ValueError(
                f"{action} needs the component(s) {', '.join(missing)}, which this pipeline was loaded without; "
                "load them with `SLIMPipeline.from_pretrained(...)`"
            )

    # ------------------------------------------------------------------------------------------- sender
    @torch.no_grad()
    def encode_images(self, images) -> List[torch.Tensor]:
        """VAE latents (× scaling factor) of each image, padded to the VAE stride; one tensor per image."""
        device, dtype = self.vae.device, self.vae.dtype
        latents = []
        for image in images:
            pixels = self.image_processor.preprocess(image).to(device=device, dtype=dtype)
            h, w = pixels.shape[-2:]
            s = self.vae_scale_factor
            pixels = F.pad(pixels, (0, (-w) % s, 0, (-h) % s), mode="replicate")
            # the posterior mean, not a sample: compression must be deterministic
            latent = self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor
            latents.append(latent)
        return latents

    def roi_masks(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        labels: Optional[Sequence[Optional[int]]] = None,
        output_type: str = "pt",
    ) -> RoIMaskOutput:
        """Grad-CAM RoI masks of ``roi_classifier`` at image size (see :func:`slim_diffusers.semantics.roi.compute_roi_masks`).

        ``labels`` are ground-truth classes when the sender knows them; ``None`` explains the top prediction.
        """
        self._require("roi_classifier", "roi_image_processor", action="roi_masks()")
        images = to_rgb_list(images)
        self.check_inputs(images)
        return compute_roi_masks(self.roi_classifier, self.roi_image_processor, images, labels, output_type=output_type)

    @torch.no_grad()
    def caption_images(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        roi_masks=None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> CaptionOutput:
        """RoI-focused captions: ``captioner`` sees each image with its non-RoI pixels suppressed.

        The masks come from ``roi_masks`` or, when that is ``None``, from :meth:`roi_masks` if the RoI
        classifier is loaded; without one, whole images are captioned.
        """
        self._require("captioner", "caption_processor", action="caption_images()")
        images = to_rgb_list(images)
        self.check_inputs(images)
        if roi_masks is None and self.roi_classifier is not None and self.roi_image_processor is not None:
            roi_masks = list(self.roi_masks(images).masks)
        return generate_captions(self.captioner, self.caption_processor, images, roi_masks, max_new_tokens=max_new_tokens)

    @torch.no_grad()
    def compress(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        captions: Optional[Union[str, Sequence[str]]] = None,
        max_caption_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> List[SLIMBitstream]:
        """Compress images into :class:`SLIMBitstream` objects (``.save(path)`` writes a ``.slim`` file).

        Args:
            images: PIL images (any mode; grey and RGBA are converted), H×W×C arrays or C×H×W tensors in
                [0, 1], or lists of them; any size up to 16384² (padded for coding, cropped back on decode).
            captions: one caption per image (or one for all). ``None`` writes RoI-focused captions with the
                optional ``roi_classifier`` and ``captioner`` when they are loaded (:meth:`caption_images`),
                and sends an empty caption (with a warning, once) when no captioner is loaded.
            max_caption_tokens: bound on the generated captions' length, in tokens.
        """
        self._require("vae", "compressor", "decompressor", action="compress()")
        check_pair(self.compressor, self.decompressor)
        images = to_rgb_list(images)
        self.check_inputs(images)
        if captions is None and self.captioner is not None and self.caption_processor is not None:
            if self.roi_classifier is None and not self._whole_image_caption_warned:
                warnings.warn(
                    "no roi_classifier loaded: captioning whole images, not their regions of interest", stacklevel=2
                )
                self._whole_image_caption_warned = True
            captions = self.caption_images(images, max_new_tokens=max_caption_tokens).captions
        elif captions is None:
            if not self._empty_caption_warned:
                warnings.warn(
                    "no caption given and no captioner loaded: sending an empty caption, which weakens decoding",
                    stacklevel=2,
                )
                self._empty_caption_warned = True
            captions = [""] * len(images)
        elif isinstance(captions, str):
            captions = [captions] * len(images)
        if len(captions) != len(images):
            raise ValueError(f"got {len(captions)} captions for {len(images)} images")

        fingerprint = self.decompressor.fingerprint()
        bitstreams = []
        for image, caption, latent in zip(images, captions, self.encode_images(images)):
            h, w = image_size(image)
            latent = latent.to(device=self.compressor.device, dtype=self.compressor.dtype)
            (payload,) = compress_latents(self.compressor, self.decompressor, latent)
            bitstreams.append(SLIMBitstream(height=h, width=w, fingerprint=fingerprint, caption=caption, payload=payload))
        return bitstreams

    # ----------------------------------------------------------------------------------------- receiver
    def _load_bitstreams(self, bitstreams) -> List[SLIMBitstream]:
        if isinstance(bitstreams, (SLIMBitstream, bytes, bytearray)):
            bitstreams = [bitstreams]
        out = [b if isinstance(b, SLIMBitstream) else SLIMBitstream.from_bytes(b) for b in bitstreams]
        if not out:
            raise ValueError("no bitstreams to decode")
        expected = self.decompressor.fingerprint()
        for i, bs in enumerate(out):
            if bs.fingerprint != expected:
                raise SLIMModelMismatchError(
                    f"bitstream {i} was written by model {bs.fingerprint.hex()}, but this pipeline's decompressor "
                    f"is model {expected.hex()}; decode it with the pipeline that wrote it"
                )
        return out

    @torch.no_grad()
    def decode_latents_from_bitstreams(self, bitstreams: List[SLIMBitstream]) -> List[torch.Tensor]:
        """ẑ for each bitstream, at the latent size of its (VAE-stride padded) image."""
        s = self.vae_scale_factor
        return [
            decompress_latents(self.decompressor, [bs.payload], (-(-bs.height // s), -(-bs.width // s)))
            for bs in bitstreams
        ]

    @torch.no_grad()
    def encode_captions(self, captions: List[str], device, dtype) -> torch.Tensor:
        ids = self.tokenizer(
            [str(c) for c in captions],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(ids)[0].to(dtype=dtype)

    def get_timesteps(self, num_inference_steps: int, strength: float, device):
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if strength >= 1.0:
            return timesteps
        init = min(max(int(round(num_inference_steps * strength)), 1), num_inference_steps)
        start = (num_inference_steps - init) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return timesteps[start:]

    @torch.no_grad()
    def denoise(
        self,
        control_latents: torch.Tensor,
        captions: List[str],
        num_inference_steps: int,
        strength: float,
        guidance_scale: float,
        controlnet_conditioning_scale: float,
        generator,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs: List[str],
    ) -> torch.Tensor:
        """Run the controlled denoising loop for a batch of ẑ of one size; returns the enhanced latents."""
        device = self.unet.device
        dtype = self.unet.dtype
        control_latents = control_latents.to(device=device, dtype=dtype)
        prompt_embeds = self.encode_captions(captions, device, dtype)
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            negative = self.encode_captions([""] * len(captions), device, dtype)
            prompt_embeds = torch.cat([negative, prompt_embeds])

        timesteps = self.get_timesteps(num_inference_steps, strength, device)
        noise = randn_tensor(control_latents.shape, generator=generator, device=device, dtype=dtype)
        if strength >= 1.0:
            # DiffEIC-style: sample from noise, the control module carries ẑ into every step
            latents = noise * self.scheduler.init_noise_sigma
        else:
            # start from ẑ noised to the first kept timestep: fewer steps, closer to the transmitted latent
            latents = self.scheduler.add_noise(control_latents, noise, timesteps[:1].repeat(control_latents.shape[0]))
        extra_step_kwargs = {"generator": generator} if "generator" in self.scheduler.step.__code__.co_varnames else {}

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                control = torch.cat([control_latents] * 2) if do_cfg else control_latents
                down, mid = self.controlnet(
                    model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    controlnet_cond=control,
                    conditioning_scale=controlnet_conditioning_scale,
                    return_dict=False,
                )
                noise_pred = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    down_block_additional_residuals=down,
                    mid_block_additional_residual=mid,
                    return_dict=False,
                )[0]
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds, "control_latents": control_latents}
                    outputs = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()
        return latents

    @torch.no_grad()
    def decompress(
        self,
        bitstreams: Union[SLIMBitstream, bytes, Sequence[Union[SLIMBitstream, bytes]]],
        num_inference_steps: int = 20,
        strength: float = 1.0,
        guidance_scale: float = 1.0,
        controlnet_conditioning_scale: float = 1.0,
        use_diffusion: bool = True,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        output_type: str = "pil",
        callback_on_step_end: Optional[Callable[["SLIMPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
    ):
        """Decode bitstreams to images.

        Args:
            num_inference_steps: denoising steps.
            strength: ``1.0`` samples from pure noise with the control module conditioning every step on ẑ;
                ``< 1`` starts from ẑ noised to the corresponding timestep and runs only that fraction of
                the steps (faster, closer to the transmitted latent).
            guidance_scale: classifier-free guidance on the caption (``> 1`` doubles the UNet batch).
            use_diffusion: ``False`` decodes ẑ with the VAE directly (the paper's "w/o diffusion" ablation);
                needs neither ``unet`` nor ``controlnet``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (the enhanced latents, uncropped).
            callback_on_step_end: ``fn(pipeline, step, timestep, tensors) -> dict`` after every step; it may
                return a replacement for ``latents``.
        """
        self._require("decompressor", action="decompress()")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if num_inference_steps < 1 or not 0 < strength <= 1:
            raise ValueError("num_inference_steps must be ≥ 1 and strength in (0, 1]")
        if output_type != "latent":
            self._require("vae", action="decoding to images")
        if use_diffusion:
            self._require("unet", "controlnet", "text_encoder", "tokenizer", action="decompress(use_diffusion=True)")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, got {bad}")

        bitstreams = self._load_bitstreams(bitstreams)
        control = self.decode_latents_from_bitstreams(bitstreams)
        # items of one latent size share a batch; the generator is consumed in input order
        results: List[Optional[torch.Tensor]] = [None] * len(bitstreams)
        by_size: Dict[tuple, List[int]] = {}
        for i, z in enumerate(control):
            by_size.setdefault(tuple(z.shape[-2:]), []).append(i)
        for idx in by_size.values():
            batch = torch.cat([control[i] for i in idx])
            if use_diffusion:
                gen = [generator[i] for i in idx] if isinstance(generator, list) else generator
                batch = self.denoise(
                    batch,
                    [bitstreams[i].caption for i in idx],
                    num_inference_steps,
                    strength,
                    guidance_scale,
                    controlnet_conditioning_scale,
                    gen,
                    callback_on_step_end,
                    list(callback_on_step_end_tensor_inputs),
                )
            for j, i in enumerate(idx):
                results[i] = batch[j : j + 1]

        if output_type == "latent":
            images = results if len(by_size) > 1 else torch.cat(results)
        else:
            decoded = []
            for bs, latent in zip(bitstreams, results):
                latent = latent.to(device=self.vae.device, dtype=self.vae.dtype) / self.vae.config.scaling_factor
                pixels = self.vae.decode(latent, return_dict=False)[0][..., : bs.height, : bs.width]
                decoded.append(pixels)
            if output_type == "pt" and len({tuple(p.shape) for p in decoded}) == 1:
                images = self.image_processor.postprocess(torch.cat(decoded), output_type="pt")
            else:
                images = [self.image_processor.postprocess(p, output_type=output_type) for p in decoded]
                if output_type == "pil":
                    images = [im[0] for im in images]
                elif output_type == "np":
                    images = np.concatenate(images) if len({im.shape for im in images}) == 1 else [im[0] for im in images]
                else:
                    images = [im[0] for im in images]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return SLIMPipelineOutput(images=images)

    @torch.no_grad()
    def __call__(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        captions: Optional[Union[str, Sequence[str]]] = None,
        return_dict: bool = True,
        **decompress_kwargs,
    ):
        """Compress then decompress: the images a machine at the other end of the link would see.

        Returns images, the bitstreams and the bits per pixel of each (from the bytes of the whole file).
        """
        bitstreams = self.compress(images, captions)
        images = self.decompress(bitstreams, return_dict=True, **decompress_kwargs).images
        bpp = [bs.bits_per_pixel for bs in bitstreams]
        if not return_dict:
            return (images, bitstreams, bpp)
        return SLIMPipelineOutput(images=images, bitstreams=bitstreams, bits_per_pixel=bpp)
