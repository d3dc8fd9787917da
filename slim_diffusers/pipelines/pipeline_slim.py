"""SLIMPipeline: compress images to ``.slim`` bitstreams and decode them with the control module + SD UNet.

The stages follow diffusers' ControlNet and img2img pipelines: ``check_inputs`` (both directions),
``encode_prompt`` (the transmitted caption), ``get_timesteps`` (``strength``), ``prepare_latents``,
``prepare_extra_step_kwargs``, the denoising loop on ``_execution_device`` with
:func:`~slim_diffusers.models.controlnet.controlled_noise_prediction` (the step training uses), and
``maybe_free_model_hooks``.
"""

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import Blip2ForConditionalGeneration, CLIPTextModel, CLIPTokenizer, PreTrainedModel
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.processing_utils import ProcessorMixin

from ..coding.bitstream import (
    MAX_SIDE,
    RATE_STEPS,
    SLIMBitstream,
    check_decode_limit,
    check_entropy_model,
    check_rate,
)
from ..coding.latents import check_pair, compress_latents, decompress_latents
from ..coding.rate_control import allocate_mean_rate, highest_fitting_rate
from ..errors import SLIMModelMismatchError, SLIMRateControlError, SLIMTargetSizeError
from ..models.compressor import SLIMCompressor
from ..models.controlnet import SLIMControlNet, controlled_noise_prediction
from ..models.decompressor import SLIMDecompressor
from ..models.rate_gains import quantize_rate
from ..semantics.captioning import DEFAULT_MAX_NEW_TOKENS, CaptionOutput, generate_captions
from ..semantics.roi import RoIMaskOutput, compute_roi_masks
from ..utils.image_utils import ImageInput, image_size, to_rgb_list

logger = logging.get_logger(__name__)  # pylint: disable=invalid-name

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

# Images of this many pixels or more go through the VAE in overlapping tiles (diffusers' tiled encode and decode)
# unless tiling is switched off: the VAE's attention costs the square of the latent's area and its
# full-resolution activations grow with the image. With the bundled toy VAE on CPU, 256-pixel tiles already
# take a 512×512 image through the VAE faster than one pass (2.4 s against 3.2 s), and a 1024×1024 one 3.4× as
# fast in a quarter of the added memory (benchmarks/large_images.py --vae-tiling off; README "Large images").
VAE_TILING_MIN_PIXELS = 512 * 512
# The smallest tile side in pixels; the VAE's own `sample_size` when that is larger (768 for SD 2.1's VAE).
VAE_MIN_TILE_SIZE = 256
# Images of more pixels than this, coded on the CPU, get a one-line notice of what they will cost before the work
# starts. The figures are the bundled toy model's at 1024² on 2 quiet cores (benchmarks/results/large_images.txt,
# 2026-12-04, load average 0.8–2.1), per megapixel: VAE encode 1.5 s, VAE decode 2.7 s, one denoising step 9.9 s.
# They are floors: per megapixel, every stage measured slower at 2048² and 4096² (the UNet's self-attention grows with
# the square of the latent's area), and larger models are slower.
LARGE_CPU_NOTICE_PIXELS = 2_000_000
CPU_SECONDS_PER_MEGAPIXEL = {"vae_encode": 1.5, "vae_decode": 2.7, "denoising_step": 9.9}


def encode_captions(tokenizer, text_encoder, captions: Sequence[str], device, dtype) -> torch.Tensor:
    """CLIP embeddings of the transmitted captions, padded to the tokenizer's length (what the UNet and the control
    module attend to). The pipeline and the training module both encode captions here."""
    ids = tokenizer(
        [str(c) for c in captions],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return text_encoder(ids)[0].to(dtype=dtype)


class _RateCoder:
    """One image's VAE latent and header fields, coded at any rate on demand; each rate's file is made once (a size
    target's search measures several rates, and the chosen file is the one measured)."""

    def __init__(self, pipe: "SLIMPipeline", latent: torch.Tensor, header: dict):
        self.pipe, self.latent, self.header = pipe, latent, header
        self.files: Dict[Optional[float], SLIMBitstream] = {}

    def bitstream(self, rate: Optional[float]) -> SLIMBitstream:
        if rate not in self.files:
            pipe = self.pipe
            (payload,) = compress_latents(pipe.compressor, pipe.decompressor, self.latent, rate)
            self.files[rate] = SLIMBitstream(payload=payload, rate=rate, **self.header)
        return self.files[rate]

    def size(self, units: int) -> int:
        """Bytes of the whole file at ``units`` / RATE_STEPS."""
        return self.bitstream(units / RATE_STEPS).num_bytes


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

    model_cpu_offload_seq = "roi_classifier->captioner->compressor->decompressor->text_encoder->controlnet->unet->vae"
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
        self._warned: set = set()
        # the RateSearch of each image of the last compress() call with a size target (rate_control.RateSearch)
        self.last_rate_searches: Optional[list] = None
        self._vae_tiling: Union[str, bool] = "auto"
        self._vae_tile_size: Optional[int] = None

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """diffusers' ``save_pretrained``, written so that a kill during the save never leaves a folder that half
        loads: the pipeline is saved into a hidden staging folder and moved into ``save_directory`` when complete,
        ``model_index.json`` last (see :func:`slim_diffusers.utils.file_utils.staged_directory`). A saved pipeline
        that is being replaced stays loadable until the new one's components are in place; from then until
        ``model_index.json`` arrives, ``from_pretrained`` says the folder has none."""
        import os

        from ..utils.file_utils import staged_directory

        if push_to_hub:  # the Hub repository is named after the folder, as diffusers names it, not the staging folder
            kwargs.setdefault("repo_id", os.path.basename(os.path.abspath(save_directory)))
        with staged_directory(save_directory) as stage:
            super().save_pretrained(stage, *args, push_to_hub=push_to_hub, **kwargs)

    # ------------------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "SLIMPipeline":
        """diffusers' ``from_pretrained``, with two additions.

        ``"toy"`` names the SLIM model bundled in the package (:func:`slim_diffusers.toy_model_path`), as
        ``--model toy`` does on the command line; a local folder called toy is ``"./toy"``. It decodes best with
        its own settings: ``pipe.decompress(bitstream, **slim_diffusers.toy_decode_settings())``.

        A Hub id that is neither a folder here nor available (offline: not in the local cache; online: not on the
        Hub, or the Hub unreachable) raises :class:`~slim_diffusers.SLIMModelNotFoundError` with one sentence
        that says what to do, before any component is looked for.
        """
        from ..utils.hub import BUNDLED_MODEL, check_model, resolve_model_name

        name = pretrained_model_name_or_path
        if isinstance(name, str) and name == BUNDLED_MODEL and Path(name).is_dir():
            logger.warning(f"{name!r} is the bundled toy model; write './{name}' for the folder {name}")
        name = resolve_model_name(name)
        check_model(name, "model_index.json", "SLIM model", revision=kwargs.get("revision"),
                    cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token"),
                    local_files_only=bool(kwargs.get("local_files_only")))
        return super().from_pretrained(name, **kwargs)

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


    # ------------------------------------------------------------------------------------------ VAE tiles
    def enable_vae_tiling(self, tile_size: Optional[int] = None) -> None:
        """Encode and decode every image larger than one tile in overlapping tiles (diffusers' tiled VAE), whatever
        its size. ``tile_size``: tile side in pixels, a multiple of 4 × the VAE's stride (default:
        :meth:`vae_tile_size`). By default (before this is called) only images of ``VAE_TILING_MIN_PIXELS``
        (512 × 512) pixels or more are tiled."""
        if tile_size is not None and (tile_size <= 0 or tile_size % (4 * self.vae_scale_factor)):
            raise ValueError(
                f"tile_size must be a positive multiple of {4 * self.vae_scale_factor} (4 × the VAE's stride), got {tile_size}"
            )
        self._vae_tiling, self._vae_tile_size = True, tile_size

    def disable_vae_tiling(self) -> None:
        """Never tile: every image goes through the VAE whole (memory grows with the image, attention with its square)."""
        self._vae_tiling = False

    def vae_tile_size(self) -> int:
        """Tile side in pixels: the one given to :meth:`enable_vae_tiling`, else the VAE's ``sample_size`` (what
        diffusers tiles with) but at least ``VAE_MIN_TILE_SIZE``; tiles of 64 pixels (the toy VAE's training size)
        would cost more in overlap than they save."""
        if self._vae_tile_size is not None:
            return self._vae_tile_size
        sample_size = self.vae.config.sample_size
        sample_size = sample_size[0] if isinstance(sample_size, (list, tuple)) else int(sample_size)
        unit = 4 * self.vae_scale_factor  # tiles overlap by a quarter, in whole latent positions
        return -(-max(sample_size, VAE_MIN_TILE_SIZE) // unit) * unit

    @contextlib.contextmanager
    def _vae_tiles(self, height: int, width: int):
        """Set the VAE's tiling for one image of ``height × width`` pixels, and restore it after."""
        vae = self.vae
        tiling = self._vae_tiling
        if tiling == "auto":
            if vae.use_tiling:  # tiling switched on by the user with `pipe.vae.enable_tiling()`: theirs to decide
                yield
                return
            tiling = height * width >= VAE_TILING_MIN_PIXELS
        saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
        tile = self.vae_tile_size()
        vae.use_tiling = bool(tiling)
        vae.tile_sample_min_size, vae.tile_latent_min_size = tile, tile // self.vae_scale_factor
        try:
            yield
        finally:
            vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved

    # ------------------------------------------------------------------------------------- VAE slices
    def enable_vae_slicing(self) -> None:
        """Pass batches through the VAE one image at a time (diffusers' ``vae.enable_slicing()``). This pipeline
        already encodes and decodes every image on its own (images of different sizes share no batch), so its
        outputs and memory stay the same; the switch is here for code written for diffusers' pipelines, and
        applies to batched calls of ``pipe.vae`` itself."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        """Let batched calls of ``pipe.vae`` run whole again (:meth:`enable_vae_slicing`)."""
        self.vae.disable_slicing()

    # ------------------------------------------------------------------------------- attention processors
    def set_attn_processor(self, processor) -> None:
        """Set the attention processor of the controlled denoiser: the UNet's and the control module's
        (``set_attn_processor`` of each), so that both halves of every denoising step compute attention the same
        way. ``processor`` is one processor for every layer, or a dict keyed by the UNet's ``attn_processors``
        names; the control module, a copy of the UNet's down and mid blocks, takes the entries of the names it
        has. The VAE keeps its own (``pipe.vae.set_attn_processor``)."""
        self._require("unet", "controlnet", action="set_attn_processor()")
        self.unet.set_attn_processor(dict(processor) if isinstance(processor, dict) else processor)  # diffusers pops a dict
        if isinstance(processor, dict):
            missing = [name for name in self.controlnet.attn_processors if name not in processor]
            if missing:
                raise ValueError(f"the processors dict has no entry for the control module's layers {missing[:3]}...")
            processor = {name: processor[name] for name in self.controlnet.attn_processors}
        self.controlnet.set_attn_processor(processor)

    # --------------------------------------------------------------------------------------------- inputs
    def check_inputs(
        self,
        images: Optional[List[Any]] = None,
        captions: Optional[Union[str, Sequence[str]]] = None,
        bitstreams: Optional[List[SLIMBitstream]] = None,
        num_inference_steps: Optional[int] = None,
        strength: Optional[float] = None,
        output_type: Optional[str] = None,
        use_diffusion: bool = True,
        latents: Optional[torch.Tensor] = None,
        callback_on_step_end_tensor_inputs: Optional[Sequence[str]] = None,
    ) -> None:
        """Fail early, with a sentence saying what to change, on anything either direction cannot use."""
        if images is not None:
            for i, image in enumerate(images):
                h, w = image_size(image)
                if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
                    raise ValueError(
                        f"image {i} is {w}×{h}; SLIM codes images from 1×1 up to {MAX_SIDE}×{MAX_SIDE} pixels"
                    )
            if captions is not None and not isinstance(captions, str) and len(captions) != len(images):
                raise ValueError(f"got {len(captions)} captions for {len(images)} images")
        if output_type is not None and output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_inference_steps is not None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if strength is not None and not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if callback_on_step_end_tensor_inputs is not None:
            bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if bad:
                raise ValueError(
                    f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, got {bad}"
                )
        if bitstreams is not None:
            if output_type != "latent":
                self._require("vae", action="decoding to images")
            if use_diffusion:
                self._require("unet", "controlnet", "text_encoder", "tokenizer", action="decompress(use_diffusion=True)")
            if latents is not None:
                sizes = {self._latent_size(bs) for bs in bitstreams}
                expected = (len(bitstreams), self.unet.config.in_channels, *next(iter(sizes)))
                if len(sizes) != 1 or tuple(latents.shape) != expected:
                    raise ValueError(
                        f"`latents` must have shape {expected} for these bitstreams (one latent size for all of "
                        f"them), got {tuple(latents.shape)}"
                    )

    def _require(self, *names: str, action: str) -> None:
        missing = [n for n in names if getattr(self, n, None) is None]
        if missing:
            raise ValueError(
                f"{action} needs the component(s) {', '.join(missing)}, which this pipeline was loaded without; "
                "load them with `SLIMPipeline.from_pretrained(...)`"
            )

    def _notice_large_cpu_work(self, action: str, sizes: Sequence[tuple], denoising_steps: int = 0) -> None:
        """Before coding images larger than ``LARGE_CPU_NOTICE_PIXELS`` on the CPU: one line saying what it will cost
        (from the bundled toy model's measured seconds per megapixel; at least that), and that Ctrl-C stops it."""
        if self._execution_device.type != "cpu":
            return
        large = [(h, w) for h, w in sizes if h * w > LARGE_CPU_NOTICE_PIXELS]
        if not large:
            return
        megapixels = sum(h * w for h, w in large) / 1e6
        rate = CPU_SECONDS_PER_MEGAPIXEL
        vae = rate["vae_encode"] if action == "compressing" else rate["vae_decode"]
        seconds = megapixels * (vae + denoising_steps * rate["denoising_step"])
        steps = f" and {denoising_steps} denoising step(s)" if denoising_steps else ""
        shown = " + ".join(f"{w}×{h}" for h, w in large)
        logger.warning(
            f"{action} {shown} ({megapixels:.1f} megapixels) on the CPU: the VAE{steps} take at least ~{seconds / 60:.0f} "
            f"min ({seconds:.0f} s at the bundled toy model's measured seconds per megapixel on 2 cores; larger models "
            "and larger images take more, attention growing with the square of the area); Ctrl-C stops it"
        )

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    # ------------------------------------------------------------------------------------------- sender
    @torch.no_grad()
    def encode_images(self, images: List[Any]) -> List[torch.Tensor]:
        """VAE latents (× scaling factor) of each image, padded to the VAE stride; one tensor per image."""
        device, dtype = self._execution_device, self.vae.dtype
        latents = []
        for image in images:
            pixels = self.image_processor.preprocess(image).to(device=device, dtype=dtype)
            h, w = pixels.shape[-2:]
            s = self.vae_scale_factor
            pixels = F.pad(pixels, (0, (-w) % s, 0, (-h) % s), mode="replicate")
            # the posterior mean, not a sample: compression must be deterministic
            with self._vae_tiles(h, w):
                latents.append(self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor)
        return latents

    def roi_masks(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        labels: Optional[Sequence[Optional[int]]] = None,
        output_type: str = "pt",
    ) -> RoIMaskOutput:
        """Grad-CAM RoI masks of ``roi_classifier`` at image size (see
        :func:`slim_diffusers.semantics.roi.compute_roi_masks`).

        ``labels`` are ground-truth classes when the sender knows them; ``None`` explains the top prediction.
        """
        images = to_rgb_list(images)
        self.check_inputs(images=images)
        return self._roi_masks(images, labels, output_type)

    def _roi_masks(self, images: List[Any], labels=None, output_type: str = "pt") -> RoIMaskOutput:
        self._require("roi_classifier", "roi_image_processor", action="roi_masks()")
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
        images = to_rgb_list(images)
        self.check_inputs(images=images)
        return self._caption_images(images, roi_masks, max_new_tokens)

    def _caption_images(self, images: List[Any], roi_masks=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        self._require("captioner", "caption_processor", action="caption_images()")
        if roi_masks is None and self.roi_classifier is not None and self.roi_image_processor is not None:
            roi_masks = list(self._roi_masks(images).masks)
        return generate_captions(self.captioner, self.caption_processor, images, roi_masks, max_new_tokens=max_new_tokens)

    @property
    def num_rate_levels(self) -> int:
        """The trained rate levels of a variable-rate model (``compress(..., rate=r)`` with ``0 ≤ r ≤ L − 1``); 0 for a
        model trained at one rate."""
        return self.decompressor.num_rate_levels if self.decompressor is not None else 0

    def resolve_rate(self, rate: Optional[float]) -> Optional[float]:
        """The rate a ``compress`` call codes at: ``rate`` rounded to the 1/16 of a level the ``.slim`` header carries,
        the highest level (the most bits) when a variable-rate model is given none, ``None`` for a fixed-rate model.
        Raises :class:`ValueError` for a rate the model does not have."""
        levels = self.num_rate_levels
        if not levels:
            if rate is not None:
                raise ValueError(
                    "this model was trained for one rate and codes at that rate only; rate= needs a variable-rate model "
                    "(trained with several --lambda_rate values)"
                )
            return None
        if rate is None:
            return float(levels - 1)
        try:
            value = float(rate)
        except (TypeError, ValueError):
            raise ValueError(f"rate must be a number in [0, {levels - 1}], got {rate!r}") from None
        if not 0 <= value <= levels - 1:
            raise ValueError(
                f"rate must be in [0, {levels - 1}]: this model has {levels} trained rate levels (0: the fewest bits, "
                f"{levels - 1}: the most; fractions interpolate), got {rate!r}"
            )
        return quantize_rate(value)

    @torch.no_grad()
    def compress(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        captions: Optional[Union[str, Sequence[str]]] = None,
        max_caption_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        rate: Optional[float] = None,
        target_bytes: Optional[int] = None,
        target_bpp: Optional[float] = None,
        target_mean: bool = False,
        exhaustive_rate_search: bool = False,
    ) -> List[SLIMBitstream]:
        """Compress images into :class:`SLIMBitstream` objects (``.save(path)`` writes a ``.slim`` file).

        Args:
            images: PIL images (any mode; grey and RGBA are converted), H×W×C arrays or C×H×W tensors in
                [0, 1], or lists of them; any size up to 16384² (padded for coding, cropped back on decode).
            captions: one caption per image (or one for all). ``None`` writes RoI-focused captions with the
                optional ``roi_classifier`` and ``captioner`` when they are loaded (:meth:`caption_images`),
                and sends an empty caption (with a warning) when no captioner is loaded.
            max_caption_tokens: bound on the generated captions' length, in tokens.
            rate: variable-rate models only (:attr:`num_rate_levels` ``= L > 0``): the rate level, a number in
                ``[0, L − 1]``; ``0`` writes the fewest bits and bits rise with the rate; whole numbers are the
                trained levels, fractions interpolate between them (rounded to 1/16, which the file records).
                ``None``: the highest level. A fixed-rate model takes no rate.
            target_bytes: variable-rate models only, instead of ``rate``: each image's file (header, caption, payload
                and CRC) is at most this many bytes, at the highest rate on the 1/16 grid that fits
                (:mod:`slim_diffusers.coding.rate_control`: the VAE and the caption are computed once, only the
                codec re-runs, about a dozen times per image). :class:`~slim_diffusers.SLIMTargetSizeError` when even the
                smallest file is larger; it names that size.
            target_bpp: the same in bits per pixel of each file (``8 × bytes / (height × width)``).
            target_mean: with ``target_bpp``: the mean over the images, not each image, is at most ``target_bpp``;
                the batch's bits go where the images need them (one common rate, then single images one step up).
            exhaustive_rate_search: measure every rate of the grid instead of searching (``16 × (L − 1) + 1``
                encodes per image): the highest rate that fits even where bytes are not monotone in the rate.
        """
        self._require("vae", "compressor", "decompressor", action="compress()")
        check_pair(self.compressor, self.decompressor)
        target = self.check_size_target(rate, target_bytes, target_bpp, target_mean)
        rate = self.resolve_rate(rate)
        images = to_rgb_list(images)  # the one conversion of this call; the helpers below take RGB images
        self.check_inputs(images=images, captions=captions)
        if captions is None and self.captioner is not None and self.caption_processor is not None:
            if self.roi_classifier is None:
                self._warn_once("no roi_classifier loaded: captioning whole images, not their regions of interest")
            captions = self._caption_images(images, max_new_tokens=max_caption_tokens).captions
        elif captions is None:
            self._warn_once("no caption given and no captioner loaded: sending an empty caption, which weakens decoding")
            captions = [""] * len(images)
        elif isinstance(captions, str):
            captions = [captions] * len(images)

        self._notice_large_cpu_work("compressing", [image_size(image) for image in images])
        fingerprint = self.decompressor.fingerprint()
        exact = self.decompressor.exact_entropy_model  # the file records it (versions 2 and 3)
        coders = []
        for image, caption, latent in zip(images, captions, self.encode_images(images)):
            h, w = image_size(image)
            header = dict(height=h, width=w, fingerprint=fingerprint, caption=caption, exact_entropy_model=exact)
            coders.append(_RateCoder(self, latent.to(dtype=self.compressor.dtype), header))
        if target is None:
            bitstreams = [coder.bitstream(rate) for coder in coders]
        else:
            bitstreams = self._fit_sizes(coders, *target, exhaustive=exhaustive_rate_search)
        self.maybe_free_model_hooks()
        return bitstreams

    def check_size_target(self, rate, target_bytes, target_bpp, target_mean: bool):
        """``None`` without a size target, else ``(kind, value, mean)`` (kind ``"bytes"`` or ``"bpp"``).
        Raises :class:`~slim_diffusers.SLIMRateControlError` for a target a call cannot use."""
        given = [name for name, v in (("target_bytes", target_bytes), ("target_bpp", target_bpp)) if v is not None]
        if not given:
            if target_mean:
                raise SLIMRateControlError("target_mean=True needs target_bpp= (the mean bits per pixel of the batch)")
            return None
        option = given[0]
        if len(given) > 1:
            raise SLIMRateControlError("give target_bytes= or target_bpp=, not both")
        if rate is not None:
            raise SLIMRateControlError(f"give rate= or {option}=, not both: {option} chooses the rate of each image")
        if not self.num_rate_levels:
            raise SLIMRateControlError(
                f"{option}= needs a variable-rate model: this one was trained for one rate and writes files of the "
                "size that rate gives (train with several --lambda_rate values for one model of many rates)"
            )
        if target_mean and option != "target_bpp":
            raise SLIMRateControlError("target_mean=True is a mean bits per pixel over the batch: give target_bpp=")
        value = target_bytes if option == "target_bytes" else target_bpp
        kind = "whole number of bytes" if option == "target_bytes" else "number of bits per pixel"
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not number > 0 or number == float("inf") or (option == "target_bytes" and number != int(number)):
            raise SLIMRateControlError(f"{option} must be a positive {kind}, got {value!r}")
        return ("bytes" if option == "target_bytes" else "bpp"), number, target_mean

    def _fit_sizes(self, coders: List["_RateCoder"], kind: str, value: float, mean: bool,
                   exhaustive: bool) -> List[SLIMBitstream]:
        """Bitstreams at the rates :mod:`~slim_diffusers.coding.rate_control` chooses for a size target."""
        top = RATE_STEPS * (self.num_rate_levels - 1)
        if mean:
            pixels = [c.header["height"] * c.header["width"] for c in coders]
            searches = allocate_mean_rate([c.size for c in coders], pixels, top, value, exhaustive=exhaustive)
        else:
            searches = []
            for i, coder in enumerate(coders):
                pixels = coder.header["height"] * coder.header["width"]
                max_bytes = int(value) if kind == "bytes" else int(value * pixels / 8)
                try:
                    searches.append(highest_fitting_rate(coder.size, top, max_bytes, exhaustive=exhaustive))
                except SLIMTargetSizeError as err:
                    name = f"image {i}" if len(coders) > 1 else "the image"
                    asked = f"{int(value)} bytes" if kind == "bytes" else f"{value:g} bpp ({max_bytes} bytes)"
                    smallest = f"{err.smallest} bytes ({8 * err.smallest / pixels:.4g} bpp)"
                    raise SLIMTargetSizeError(
                        f"{name} does not fit {asked} at any rate: its smallest file is {smallest}; ask for at least "
                        "that much", smallest=err.smallest) from None
        self.last_rate_searches = searches  # what each search measured (benchmarks/rate_control.py reads it)
        return [coder.bitstream(search.units / RATE_STEPS) for coder, search in zip(coders, searches)]

    # ----------------------------------------------------------------------------------------- receiver
    def _load_bitstreams(self, bitstreams, max_pixels: Optional[int] = None) -> List[SLIMBitstream]:
        """Parse, then check every header against the pixel limit and this pipeline's model, before anything is
        decoded or allocated."""
        if isinstance(bitstreams, (SLIMBitstream, bytes, bytearray)):
            bitstreams = [bitstreams]
        out = [b if isinstance(b, SLIMBitstream) else SLIMBitstream.from_bytes(b) for b in bitstreams]
        if not out:
            raise ValueError("no bitstreams to decode")
        expected = self.decompressor.fingerprint()
        for i, bs in enumerate(out):
            name = f"bitstream {i}" if len(out) > 1 else "the bitstream"
            check_decode_limit(bs, max_pixels, name=name)
            check_entropy_model(bs, self.decompressor.exact_entropy_model, name=name)
            check_rate(bs, self.decompressor.num_rate_levels, name=name)
            if bs.fingerprint != expected:
                raise SLIMModelMismatchError(
                    f"{name} was written by model {bs.fingerprint.hex()}, but this pipeline's decompressor "
                    f"is model {expected.hex()}; decode it with the pipeline that wrote it"
                )
        return out

    def _latent_size(self, bitstream: SLIMBitstream) -> tuple:
        s = self.vae_scale_factor
        return (-(-bitstream.height // s), -(-bitstream.width // s))

    @torch.no_grad()
    def decode_latents_from_bitstreams(self, bitstreams: List[SLIMBitstream]) -> List[torch.Tensor]:
        """ẑ for each bitstream, at the latent size of its (VAE-stride padded) image."""
        return [decompress_latents(self.decompressor, [bs.payload], self._latent_size(bs), bs.rate) for bs in bitstreams]

    @torch.no_grad()
    def encode_prompt(self, captions: List[str], device, do_classifier_free_guidance: bool):
        """``(prompt_embeds, negative_prompt_embeds)`` of the transmitted captions; the negative prompt is the empty
        caption, and ``None`` without classifier-free guidance."""
        dtype = self.unet.dtype if self.unet is not None else self.text_encoder.dtype
        prompt_embeds = encode_captions(self.tokenizer, self.text_encoder, captions, device, dtype)
        negative = None
        if do_classifier_free_guidance:
            negative = encode_captions(self.tokenizer, self.text_encoder, [""] * len(captions), device, dtype)
        return prompt_embeds, negative

    def get_timesteps(self, num_inference_steps: int, strength: float, device):
        """The scheduler's timesteps, keeping the last ``strength`` of them (img2img's rule)."""
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if strength >= 1.0:
            return timesteps
        init = min(max(int(round(num_inference_steps * strength)), 1), num_inference_steps)
        start = (num_inference_steps - init) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        return timesteps[start:]

    def prepare_latents(
        self,
        control_latents: torch.Tensor,
        first_timestep: torch.Tensor,
        strength: float,
        generator,
        latents: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The starting point of the denoising loop. ``strength == 1``: pure noise, DiffEIC-style (the control
        module carries ẑ into every step); ``< 1``: ẑ noised to the first kept timestep (fewer steps, closer to
        what was sent). ``latents`` replaces the drawn noise."""
        noise = latents
        if noise is None:
            noise = randn_tensor(control_latents.shape, generator=generator, device=control_latents.device,
                                 dtype=control_latents.dtype)
        noise = noise.to(device=control_latents.device, dtype=control_latents.dtype)
        if strength >= 1.0:
            return noise * self.scheduler.init_noise_sigma
        return self.scheduler.add_noise(control_latents, noise, first_timestep.repeat(control_latents.shape[0]))

    def prepare_extra_step_kwargs(self, generator, eta: float) -> Dict[str, Any]:
        # not every scheduler's step takes them: eta (η) is DDIM's, and only some draw noise with a generator
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in parameters:
            extra["eta"] = eta
        if "generator" in parameters:
            extra["generator"] = generator
        return extra

    @torch.no_grad()
    def denoise(
        self,
        control_latents: torch.Tensor,
        captions: List[str],
        num_inference_steps: int,
        strength: float,
        guidance_scale: float,
        controlnet_conditioning_scale: float,
        eta: float,
        generator,
        latents: Optional[torch.Tensor],
        callback_on_step_end,
        callback_on_step_end_tensor_inputs: Sequence[str],
    ) -> torch.Tensor:
        """The controlled denoising loop for a batch of ẑ of one size; returns the enhanced latents."""
        device = self._execution_device
        control_latents = control_latents.to(device=device, dtype=self.unet.dtype)
        do_cfg = guidance_scale > 1.0
        prompt_embeds, negative = self.encode_prompt(captions, device, do_cfg)
        if do_cfg:
            prompt_embeds = torch.cat([negative, prompt_embeds])

        timesteps = self.get_timesteps(num_inference_steps, strength, device)
        train_steps = getattr(self.scheduler.config, "num_train_timesteps", None)
        if strength >= 1.0 and train_steps and len(timesteps) and float(timesteps[0]) < 0.75 * train_steps:
            # a "leading" schedule of one step is the single timestep 1: pure noise that is never denoised
            self._warn_once(
                f"decoding from pure noise (strength 1) with {num_inference_steps} step(s) starts at timestep "
                f"{int(timesteps[0])} of {train_steps}, far below the noise it starts from; for few-step decoding use "
                "timestep_spacing='trailing' (pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, "
                "timestep_spacing='trailing')), strength < 1, or more steps"
            )
        latents = self.prepare_latents(control_latents, timesteps[:1], strength, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                control = torch.cat([control_latents] * 2) if do_cfg else control_latents
                noise_pred = controlled_noise_prediction(
                    self.unet, self.controlnet, model_input, t, prompt_embeds, control, controlnet_conditioning_scale
                )
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
    def decode_latents(self, latents: torch.Tensor, bitstream: SLIMBitstream) -> torch.Tensor:
        """VAE-decoded pixels in [-1, 1] of one (padded) latent, cropped to the bitstream's image size."""
        latents = latents.to(device=self._execution_device, dtype=self.vae.dtype) / self.vae.config.scaling_factor
        with self._vae_tiles(bitstream.height, bitstream.width):
            decoded = self.vae.decode(latents, return_dict=False)[0]
        return decoded[..., : bitstream.height, : bitstream.width]

    @torch.no_grad()
    def decompress(
        self,
        bitstreams: Union[SLIMBitstream, bytes, Sequence[Union[SLIMBitstream, bytes]]],
        num_inference_steps: int = 20,
        strength: float = 1.0,
        guidance_scale: float = 1.0,
        controlnet_conditioning_scale: float = 1.0,
        use_diffusion: bool = True,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["SLIMPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_pixels: Optional[int] = None,
    ):
        """Decode bitstreams to images.

        Args:
            bitstreams: :class:`SLIMBitstream` objects or the bytes of ``.slim`` files.
            num_inference_steps: denoising steps.
            strength: ``1.0`` samples from pure noise with the control module conditioning every step on ẑ;
                ``< 1`` starts from ẑ noised to the corresponding timestep and runs only that fraction of
                the steps (faster, closer to the transmitted latent).
            guidance_scale: classifier-free guidance on the caption (``> 1`` doubles the UNet batch).
            controlnet_conditioning_scale: weight of the control module's residuals.
            use_diffusion: ``False`` decodes ẑ with the VAE directly (the paper's "w/o diffusion" ablation);
                needs neither ``unet`` nor ``controlnet``.
            eta: DDIM's η (other schedulers ignore it).
            generator: seeds the sampling noise; a list gives one generator per bitstream.
            latents: the starting noise, ``(B, C, h, w)``, instead of drawing it (one latent size only).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (the enhanced latents, uncropped).
            callback_on_step_end: ``fn(pipeline, step, timestep, tensors) -> dict`` after every step; it may
                return a replacement for ``latents``.
            max_pixels: refuse (:class:`~slim_diffusers.SLIMDecodeLimitError`) bitstreams whose image has more
                pixels; ``None`` uses ``slim_diffusers.coding.bitstream.MAX_IMAGE_PIXELS`` (4096 × 4096). The
                limit is checked on the headers, before anything is decoded.
        """
        self._require("decompressor", action="decompress()")
        bitstreams = self._load_bitstreams(bitstreams, max_pixels)
        self.check_inputs(
            bitstreams=bitstreams,
            num_inference_steps=num_inference_steps,
            strength=strength,
            output_type=output_type,
            use_diffusion=use_diffusion,
            latents=latents,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        # the steps run: the last `strength` of the schedule, as get_timesteps takes them
        steps = min(int(num_inference_steps * strength), num_inference_steps) if use_diffusion else 0
        self._notice_large_cpu_work("decoding", [(bs.height, bs.width) for bs in bitstreams], steps)
        control = self.decode_latents_from_bitstreams(bitstreams)
        # items of one latent size share a batch; the generator is consumed in input order
        results: List[Optional[torch.Tensor]] = [None] * len(bitstreams)
        by_size: Dict[tuple, List[int]] = {}
        for i, z in enumerate(control):
            by_size.setdefault(tuple(z.shape[-2:]), []).append(i)
        for idx in by_size.values():
            batch = torch.cat([control[i] for i in idx])
            if use_diffusion:
                batch = self.denoise(
                    batch,
                    [bitstreams[i].caption for i in idx],
                    num_inference_steps,
                    strength,
                    guidance_scale,
                    controlnet_conditioning_scale,
                    eta,
                    [generator[i] for i in idx] if isinstance(generator, list) else generator,
                    latents,
                    callback_on_step_end,
                    list(callback_on_step_end_tensor_inputs),
                )
            for j, i in enumerate(idx):
                results[i] = batch[j : j + 1]

        if output_type == "latent":
            images = results if len(by_size) > 1 else torch.cat(results)
        else:
            decoded = [self.decode_latents(latent, bs) for bs, latent in zip(bitstreams, results)]
            images = self._postprocess(decoded, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return SLIMPipelineOutput(images=images)

    def _postprocess(self, decoded: List[torch.Tensor], output_type: str):
        """Images of one size come back as one array/tensor (``"np"``, ``"pt"``), of several sizes as a list."""
        if output_type == "pt" and len({tuple(p.shape) for p in decoded}) == 1:
            return self.image_processor.postprocess(torch.cat(decoded), output_type="pt")
        images = [self.image_processor.postprocess(p, output_type=output_type)[0] for p in decoded]
        if output_type == "np" and len({im.shape for im in images}) == 1:
            return np.stack(images)
        return images

    @torch.no_grad()
    def __call__(
        self,
        images: Union[ImageInput, Sequence[ImageInput]],
        captions: Optional[Union[str, Sequence[str]]] = None,
        num_inference_steps: int = 20,
        strength: float = 1.0,
        guidance_scale: float = 1.0,
        controlnet_conditioning_scale: float = 1.0,
        use_diffusion: bool = True,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["SLIMPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_caption_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        rate: Optional[float] = None,
    ):
        """Compress then decompress: the images a machine at the other end of the link would see.

        The arguments are those of :meth:`compress` and :meth:`decompress`. Returns the decoded images, the
        bitstreams and the bits per pixel of each (from the bytes of the whole ``.slim`` file).
        """
        bitstreams = self.compress(images, captions, max_caption_tokens=max_caption_tokens, rate=rate)
        images = self.decompress(
            bitstreams,
            num_inference_steps=num_inference_steps,
            strength=strength,
            guidance_scale=guidance_scale,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            use_diffusion=use_diffusion,
            eta=eta,
            generator=generator,
            latents=latents,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            max_pixels=MAX_SIDE * MAX_SIDE,  # the caller's own images: no decoding limit beyond the format's
        ).images
        bpp = [bs.bits_per_pixel for bs in bitstreams]
        if not return_dict:
            return (images, bitstreams, bpp)
        return SLIMPipelineOutput(images=images, bitstreams=bitstreams, bits_per_pixel=bpp)
