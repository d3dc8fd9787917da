"""RoI-focused captions: BLIP-2 describes what is inside the RoI mask (paper §3.2.1, supplementary §6).

A SLIM bitstream carries a short caption next to the latent; the receiver's diffusion decoder is
conditioned on it. The caption should name what the machine at the other end cares about, not the
background, so the captioner sees the image with the pixels outside the RoI suppressed:

    x' = M ⊙ x + (1 − M) ⊙ c

with the soft Grad-CAM mask ``M`` (:mod:`slim_diffusers.semantics.roi`) and ``c`` the captioner's normalisation mean
(its image processor's ``image_mean``; mid grey if it has none). After the processor normalises the image,
suppressed pixels are exactly zero: the vision encoder gets no signal from them, rather than a black or
white surface it would describe ("a black background"). The mask is soft, so the RoI fades out instead
of being cut along a hard edge the captioner could mistake for an object outline.

Captioning is batched and bounded: ``max_new_tokens`` caps the generated tokens (20 by default), and a
caption is cut to the ``.slim`` format's limit of 1024 UTF-8 bytes. :func:`caption_bits` is the caption's
cost in the bitstream: its raw-DEFLATE (zlib) size in bits, as :mod:`slim_diffusers.coding.bitstream` writes it.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from ..coding.bitstream import MAX_CAPTION_BYTES, compress_caption
from ..utils.image_utils import ImageInput, as_image_list, to_rgb_tensor
from ..utils.loading import load_frozen
from .roi import MaskInput, as_mask_list, check_mask_matches_image, roi_mask_to_array

DEFAULT_CAPTIONER = "Salesforce/blip2-opt-2.7b"
DEFAULT_MAX_NEW_TOKENS = 20


@dataclass
class CaptionOutput(BaseOutput):
    """
    Args:
        captions: one caption per image.
        caption_bits: per caption, its size in the ``.slim`` file in bits (8 × zlib raw-DEFLATE bytes).
    """

    captions: List[str]
    caption_bits: List[int]


def caption_bits(caption: str) -> int:
    """Bits the caption costs in a ``.slim`` file: 8 × its zlib raw-DEFLATE size (0 for the empty caption)."""
    return 8 * len(compress_caption(caption))


def suppression_colour(processor) -> Tuple[float, float, float]:
    """The colour (RGB in [0, 1]) non-RoI pixels are replaced by: the captioner's normalisation mean."""
    image_processor = getattr(processor, "image_processor", processor)
    mean = getattr(image_processor, "image_mean", None)
    if not getattr(image_processor, "do_normalize", True) or mean is None:
        return (0.5, 0.5, 0.5)
    mean = [float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)]
    return tuple(mean[:3]) if len(mean) >= 3 else (mean[0],) * 3


def suppress_non_roi(
    images: Union[ImageInput, Sequence[ImageInput]],
    roi_masks: Union[MaskInput, Sequence[MaskInput]],
    colour: Tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> List[PIL.Image.Image]:
    """``M ⊙ x + (1 − M) ⊙ colour`` for each image and its mask, as RGB PIL images.

    Masks must be at image size (:class:`~slim_diffusers.semantics.roi.RoIMaskSizeError` otherwise); they may be soft
    (floats in [0, 1]) or stored 8-bit ``"L"`` images.
    """
    images = as_image_list(images)
    masks = as_mask_list(roi_masks, len(images))
    fill = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)
    out = []
    for i, (image, mask) in enumerate(zip(images, masks)):
        check_mask_matches_image(mask, image, i)
        x = to_rgb_tensor(image, i)
        m = torch.from_numpy(roi_mask_to_array(mask))[None]
        blended = m * x + (1 - m) * fill
        out.append(_to_pil(blended))
    return out


def _to_pil(x: torch.Tensor) -> PIL.Image.Image:
    return PIL.Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))


def prepare_caption_inputs(
    processor,
    images: Union[ImageInput, Sequence[ImageInput]],
    roi_masks: Optional[Union[MaskInput, Sequence[MaskInput]]] = None,
    prompt: Optional[str] = None,
):
    """What the captioner sees: the processor's ``pixel_values`` (and prompt ids) of the RoI-suppressed images."""
    images = as_image_list(images)
    if roi_masks is not None:
        images = suppress_non_roi(images, roi_masks, suppression_colour(processor))
    else:
        images = [_to_pil(to_rgb_tensor(im, i)) for i, im in enumerate(images)]  # exact for 8-bit RGB
    text = [prompt] * len(images) if prompt else None
    return processor(images=images, text=text, return_tensors="pt")


def _fit_caption(text: str) -> str:
    text = " ".join(text.split())
    data = text.encode("utf-8")
    if len(data) <= MAX_CAPTION_BYTES:
        return text
    return data[:MAX_CAPTION_BYTES].decode("utf-8", errors="ignore").rstrip()


@torch.no_grad()
def generate_captions(
    captioner: torch.nn.Module,
    processor,
    images: Union[ImageInput, Sequence[ImageInput]],
    roi_masks: Optional[Union[MaskInput, Sequence[MaskInput]]] = None,
    prompt: Optional[str] = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    num_beams: int = 1,
    **generate_kwargs,
) -> CaptionOutput:
    """Caption images with BLIP-2 (any ``Blip2ForConditionalGeneration``), looking only inside the RoI.

    Args:
        captioner, processor: the captioning model and its ``Blip2Processor``.
        images: PIL images, H×W×C arrays or C×H×W tensors in [0, 1], or a list of them.
        roi_masks: one mask per image at image size (from :func:`slim_diffusers.semantics.roi.compute_roi_masks`);
            ``None`` captions the whole images.
        prompt: optional text the caption continues (e.g. ``"a photo of"``); it is not part of the caption.
        max_new_tokens: bound on the generated tokens (the caption's length and its bits).
        batch_size: images per ``generate`` call.
        num_beams: 1 is greedy decoding (deterministic); more beams may find likelier captions.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be ≥ 1")
    images = as_image_list(images)
    masks = None if roi_masks is None else as_mask_list(roi_masks, len(images))
    param = next(captioner.parameters())
    captions: List[str] = []
    for start in range(0, len(images), batch_size):
        chunk_masks = None if masks is None else masks[start : start + batch_size]
        inputs = prepare_caption_inputs(processor, images[start : start + batch_size], chunk_masks, prompt)
        inputs = {k: v.to(param.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
        generated = captioner.generate(
            **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, **generate_kwargs
        )
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and generated.shape[1] >= prompt_ids.shape[1] and torch.equal(
            generated[:, : prompt_ids.shape[1]], prompt_ids
        ):
            generated = generated[:, prompt_ids.shape[1] :]  # keep the continuation only
        captions += [_fit_caption(text) for text in processor.batch_decode(generated, skip_special_tokens=True)]
    return CaptionOutput(captions=captions, caption_bits=[caption_bits(c) for c in captions])


def load_captioner(name_or_path: str = DEFAULT_CAPTIONER, device=None, torch_dtype=None, **kwargs):
    """``(captioner, processor)``: a ``Blip2ForConditionalGeneration`` (eval mode) and its ``Blip2Processor``."""
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    return load_frozen(Blip2ForConditionalGeneration, AutoProcessor, name_or_path, device, torch_dtype, **kwargs)
