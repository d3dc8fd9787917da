"""Images in: the one place where PIL images, arrays and tensors of any mode become RGB.

The pipeline (compression), Grad-CAM (:mod:`slim_diffusers.semantics.roi`) and captioning all accept the same inputs
and must see the same pixels: a transparent pixel is shown over white, as an image viewer would, and grey
images are repeated over the three channels.
"""

from typing import List, Tuple, Union

import numpy as np
import PIL.Image
import torch

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor]


def as_image_list(images) -> list:
    """One image, an (N, ...) batch or a non-empty list of images, as a list."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (PIL.Image.Image, np.ndarray, torch.Tensor)):
        return [images]
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("`images` must be a PIL image, a NumPy array, a torch tensor, or a non-empty list of them")
    return list(images)


def to_rgb(image: ImageInput, index: int = 0) -> Union[PIL.Image.Image, torch.Tensor]:
    """A PIL image (any mode) → RGB PIL image; an H×W(×C) array or (C×)H×W tensor in [0, 1] (or uint8 array)
    → a ``(3, H, W)`` float tensor in [0, 1]. ``index`` names the image in error messages."""
    if isinstance(image, PIL.Image.Image):
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        array = image[..., None] if image.ndim == 2 else image
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image {index}: expected an H×W×C array with C in (1, 3, 4), got shape {image.shape}")
        array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image[None] if image.ndim == 2 else image
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ValueError(f"image {index}: expected a C×H×W tensor with C in (1, 3, 4), got shape {tuple(image.shape)}")
        tensor = tensor.detach().float().cpu()
    else:
        raise ValueError(f"image {index}: unsupported type {type(image).__name__}; pass PIL, NumPy or torch images")
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ValueError(f"image {index}: array and tensor images must hold values in [0, 1]")
    if tensor.shape[0] == 1:
        return tensor.expand(3, -1, -1)
    if tensor.shape[0] == 4:
        return tensor[:3] * tensor[3:4] + (1 - tensor[3:4])
    return tensor


def to_rgb_list(images) -> List[Union[PIL.Image.Image, torch.Tensor]]:
    return [to_rgb(image, i) for i, image in enumerate(as_image_list(images))]


def to_rgb_tensor(image: ImageInput, index: int = 0) -> torch.Tensor:
    """A ``(3, H, W)`` float tensor in [0, 1], whatever the input (see :func:`to_rgb`)."""
    rgb = to_rgb(image, index)
    if isinstance(rgb, PIL.Image.Image):
        return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return rgb


def image_size(image: ImageInput) -> Tuple[int, int]:
    """(height, width) of a PIL image, an H×W(×C) array or a (C×)H×W tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        return tuple(image.shape[:2])
    return tuple(image.shape[-2:])
