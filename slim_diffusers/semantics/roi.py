"""RoI masks: where a machine looks in an image, from Grad-CAM on an image classifier (paper §3.2.1).

SLIM spends its bits where the downstream classifier looks. The region of interest (RoI) is the
Grad-CAM map (Selvaraju et al., 2017) of a classifier — ResNet-50 (``microsoft/resnet-50``) by default,
any transformers ``AutoModelForImageClassification`` with a convolutional backbone works — for the
ground-truth class when it is known, else for the classifier's top prediction.

A mask is a soft weight in [0, 1] per image pixel, at the image's own size: the guide loss weighs latent
errors by it (:func:`resize_to_latent` gives it at latent size), the RoI loss weighs pixel errors by it,
and the captioner sees the image with the pixels outside it suppressed (:mod:`slim_diffusers.semantics.captioning`).

Grad-CAM here is a few lines of torch rather than the ``grad-cam`` package: that package only installs
next to ``numpy<2`` by back-tracking to an old OpenCV build, pulls OpenCV, scikit-learn and ttach, and does
not run on a frozen transformers classifier without wrappers (it needs a model returning a tensor and an
input that requires gradients). The computation is the same: channel weights are the spatial mean of the
gradient of the class score with respect to the last convolutional stage's activations, the map is the
ReLU of the weighted sum of the activations.

Storage (datasets built by ``training/prepare_dataset.py``): a mask is an 8-bit greyscale PNG (PIL mode
``"L"``, value / 255 is the weight) at the image's size. Grad-CAM maps are smooth, so the PNG takes a few
kilobytes where a float32 TIFF would take 4 bytes per pixel; the quantisation step (1/255) is far below
anything a loss weight can tell apart. :func:`roi_mask_to_image` writes that form and
:func:`roi_mask_to_array` reads it (and float ``"F"`` images or arrays) back to float32 in [0, 1].
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput

from ..utils.image_utils import ImageInput, as_image_list, image_size, to_rgb_tensor
from ..utils.loading import load_image_classifier

DEFAULT_ROI_CLASSIFIER = "microsoft/resnet-50"

MaskInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor]


class RoIMaskSizeError(ValueError):
    """An RoI mask does not have the size of the image it belongs to."""


class RoITargetLayerError(ValueError):
    """Grad-CAM cannot run on the chosen layer: its output is not a convolutional feature map."""


@dataclass
class RoIMaskOutput(BaseOutput):
    """
    Args:
        masks: one soft mask in [0, 1] per image at the image's size: a ``(B, 1, H, W)`` tensor (``"pt"``) or
            ``(B, H, W)`` array (``"np"``) when every image has the same size, else a list of ``(1, H, W)``
            tensors / ``(H, W)`` arrays; a list of PIL ``"L"`` images for ``"pil"`` (the storage form).
        target_labels: the class each map explains (the given label, else the top prediction).
        predicted_labels: the classifier's top prediction for each image.
    """

    masks: Union[torch.Tensor, np.ndarray, List[torch.Tensor], List[np.ndarray], List[PIL.Image.Image]]
    target_labels: List[int]
    predicted_labels: List[int]


# ------------------------------------------------------------------------------------------ masks in
def as_mask_list(masks, num_images: int) -> list:
    """One mask per image from a list, a ``(B, 1, H, W)``/``(B, H, W)`` batch, or a single mask."""
    if isinstance(masks, (list, tuple)):
        out = list(masks)
    elif isinstance(masks, (np.ndarray, torch.Tensor)) and (
        masks.ndim == 4 or (masks.ndim == 3 and masks.shape[0] == num_images != 1)
    ):
        out = list(masks)
    else:
        out = [masks]
    if len(out) != num_images:
        raise ValueError(f"got {len(out)} RoI masks for {num_images} images")
    return out


# ------------------------------------------------------------------------------------- classifier in
def classifier_input_size(image_processor) -> Tuple[int, int]:
    """The (height, width) the classifier was trained on, read from its image processor.

    ``crop_size`` when the processor centre-crops, else ``size`` (``height``/``width``, or ``shortest_edge``
    taken as a square); 224 × 224 when neither says.
    """

    def field(size, key):
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    attrs = ("crop_size", "size") if getattr(image_processor, "do_center_crop", False) else ("size",)
    for attr in attrs:
        size = getattr(image_processor, attr, None)
        if size is None:
            continue
        if isinstance(size, int):
            return size, size
        if field(size, "height") and field(size, "width"):
            return int(field(size, "height")), int(field(size, "width"))
        if field(size, "shortest_edge"):
            return int(field(size, "shortest_edge")), int(field(size, "shortest_edge"))
    return 224, 224


def classifier_inputs(images: Union[torch.Tensor, Sequence[torch.Tensor]], image_processor) -> torch.Tensor:
    """Resize whole images in [0, 1] to the classifier's input size and normalise them as its processor says.

    ``images`` is a ``(B, 3, H, W)`` batch or a list of ``(3, H, W)`` images of any sizes. The image is
    resized, not centre-cropped as e.g. ResNet-50's processor does for evaluation: every pixel must be seen
    to get a mask value, and the stage-2 task loss feeds the classifier the same way (differentiably). The result
    is float32 whatever the images' dtype.
    """
    size = classifier_input_size(image_processor)

    def resize(x):
        # in float32: the antialiased resize has no bfloat16/float16 kernel on the CPU (stage 2 decodes in bfloat16
        # under --mixed_precision bf16); callers cast the result to their classifier's dtype
        return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)

    if isinstance(images, torch.Tensor) and images.ndim == 4:
        batch = resize(images)
    else:
        batch = torch.cat([resize(x[None]) for x in images])
    if getattr(image_processor, "do_normalize", True):
        mean = torch.tensor(getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]).view(1, 3, 1, 1)
        std = torch.tensor(getattr(image_processor, "image_std", None) or [0.5, 0.5, 0.5]).view(1, 3, 1, 1)
        batch = (batch - mean.to(batch)) / std.to(batch)
    return batch


def default_target_layer(classifier: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional stage, whose activations Grad-CAM explains.

    transformers' convolutional classifiers (ResNet, ConvNeXt, ConvNeXt V2, RegNet, ...) keep their stages in
    ``base_model.encoder.stages``; for other models the last ``Conv2d`` is taken.
    """
    base = getattr(classifier, "base_model", classifier)
    stages = getattr(getattr(base, "encoder", None), "stages", None)
    if isinstance(stages, torch.nn.ModuleList) and len(stages) > 0:
        return stages[-1]
    convs = [m for m in classifier.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise RoITargetLayerError(
            f"{type(classifier).__name__} has no convolutional layer for Grad-CAM; use a convolutional classifier "
            "(e.g. microsoft/resnet-50) or pass target_layer="
        )
    return convs[-1]


def grad_cam(
    classifier: torch.nn.Module,
    pixel_values: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    target_layer: Optional[torch.nn.Module] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM maps at the target layer's resolution for a batch of classifier inputs.

    Args:
        classifier: an image classifier returning ``.logits`` (or a logits tensor). It may be frozen: the
            gradient is taken with respect to the target layer's activations only, so no parameter
            gradient is computed or stored.
        pixel_values: ``(B, 3, h, w)`` normalised inputs.
        labels: ``(B,)`` target classes; entries < 0 (and ``labels=None``) take the top prediction.

    Returns:
        ``(cams, targets, predicted)``: ``cams`` is ``(B, 1, h', w')``, float32, ≥ 0, each map divided by its
        maximum (a map with no positive evidence, all zeros, becomes all ones: no region is preferred).
    """
    layer = target_layer if target_layer is not None else default_target_layer(classifier)
    store = {}

    def keep_activation(module, args, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise RoITargetLayerError(
                f"Grad-CAM needs a convolutional feature map (B, C, h, w) from the target layer, got {shape}; "
                "pass target_layer= a convolutional stage of the classifier"
            )
        # cut the graph here: the backward pass stops at this activation, frozen or not
        activation = output.detach().requires_grad_(True)
        store["activation"] = activation
        return activation

    handle = layer.register_forward_hook(keep_activation)
    was_training = classifier.training
    classifier.eval()  # batch norm in train mode would mix the images of a batch
    try:
        with torch.enable_grad():
            out = classifier(pixel_values=pixel_values)
            logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
            predicted = logits.argmax(-1)
            targets = predicted if labels is None else torch.where(labels >= 0, labels.to(predicted.device), predicted)
            # the images of a batch are independent, so the gradient of the summed scores is per image
            score = logits.gather(1, targets[:, None]).sum()
            (grads,) = torch.autograd.grad(score, store["activation"])
    finally:
        handle.remove()
        classifier.train(was_training)
    activation = store["activation"].detach().float()
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * activation).sum(dim=1, keepdim=True))
    peak = cams.amax(dim=(2, 3), keepdim=True)
    cams = torch.where(peak > 0, cams / peak.clamp_min(1e-12), torch.ones_like(cams))
    return cams, targets.detach(), predicted.detach()


def compute_roi_masks(
    classifier: torch.nn.Module,
    image_processor,
    images: Union[ImageInput, Sequence[ImageInput]],
    labels: Optional[Sequence[Optional[int]]] = None,
    target_layer: Optional[torch.nn.Module] = None,
    batch_size: int = 16,
    output_type: str = "pt",
) -> RoIMaskOutput:
    """Grad-CAM RoI masks at image size for a batch of images.

    Args:
        classifier: an ``AutoModelForImageClassification`` with a convolutional backbone (any device/dtype).
        image_processor: its image processor (input size, mean and std are read from it).
        images: PIL images, H×W×C arrays or C×H×W tensors in [0, 1], or a list of them; sizes may differ.
        labels: ground-truth class per image; ``None`` (or ``None``/``-1`` entries) explains the top prediction.
        target_layer: the layer to explain; default :func:`default_target_layer`.
        batch_size: images per classifier pass.
        output_type: ``"pt"``, ``"np"`` or ``"pil"`` (8-bit ``"L"`` images, the dataset storage form).
    """
    if output_type not in ("pt", "np", "pil"):
        raise ValueError(f"output_type must be 'pt', 'np' or 'pil', got {output_type!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be ≥ 1")
    images = [to_rgb_tensor(im, i) for i, im in enumerate(as_image_list(images))]
    num_labels = getattr(getattr(classifier, "config", None), "num_labels", None)
    if labels is None:
        labels = [-1] * len(images)
    labels = [-1 if label is None else int(label) for label in labels]
    if len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    if num_labels is not None:
        bad = [label for label in labels if label >= num_labels]
        if bad:
            raise ValueError(
                f"label {bad[0]} is outside the classifier's {num_labels} classes; give labels in the classifier's "
                "label space, or None to explain its top prediction"
            )
    param = next(classifier.parameters())
    masks, targets, predicted = [], [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixel_values = classifier_inputs(chunk, image_processor).to(device=param.device, dtype=param.dtype)
        chunk_labels = torch.tensor(labels[start : start + batch_size], device=param.device)
        cams, t, p = grad_cam(classifier, pixel_values, chunk_labels, target_layer)
        cams = cams.cpu()
        for cam, image in zip(cams, chunk):
            mask = F.interpolate(cam[None], size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0]
            masks.append(mask.clamp(0, 1))
        targets += t.tolist()
        predicted += p.tolist()
    same_size = len({tuple(m.shape) for m in masks}) == 1
    if output_type == "pil":
        out = [roi_mask_to_image(m) for m in masks]
    elif output_type == "np":
        out = np.stack([m[0].numpy() for m in masks]) if same_size else [m[0].numpy() for m in masks]
    else:
        out = torch.stack(masks) if same_size else masks
    return RoIMaskOutput(masks=out, target_labels=targets, predicted_labels=predicted)


# ------------------------------------------------------------------------------------- masks out
def resize_to_latent(masks: Union[torch.Tensor, Sequence[torch.Tensor]], vae_scale_factor: int = 8) -> torch.Tensor:
    """Masks at the latent grid of SLIM's VAE, for the guide loss.

    The pipeline pads an image at the bottom/right to a multiple of the VAE stride (replicating edge pixels)
    before encoding; the mask is padded the same way and each latent position gets the mean of the
    ``vae_scale_factor``² pixels it covers. Accepts ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)`` tensors, or
    a list of ``(1, H, W)`` masks of one size.
    """
    if isinstance(masks, (list, tuple)):
        if len({tuple(m.shape[-2:]) for m in masks}) != 1:
            raise RoIMaskSizeError("resize_to_latent stacks masks of one size; resize masks of different sizes one by one")
        masks = torch.stack([m.reshape(1, *m.shape[-2:]) for m in masks])
    masks = torch.as_tensor(masks).float()
    if masks.ndim == 2:
        masks = masks[None, None]
    elif masks.ndim == 3:
        masks = masks[:, None]
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"expected masks of shape (B, 1, H, W), (B, H, W) or (H, W), got {tuple(masks.shape)}")
    s = vae_scale_factor
    h, w = masks.shape[-2:]
    masks = F.pad(masks, (0, (-w) % s, 0, (-h) % s), mode="replicate")
    return F.avg_pool2d(masks, kernel_size=s, stride=s)


def roi_mask_to_image(mask: MaskInput) -> PIL.Image.Image:
    """The storage form of a mask: an 8-bit greyscale PIL image (mode ``"L"``), weight × 255 rounded."""
    array = roi_mask_to_array(mask)
    return PIL.Image.fromarray(np.round(array * 255.0).astype(np.uint8))  # uint8 H×W → mode "L"


def roi_mask_to_array(mask: MaskInput) -> np.ndarray:
    """A mask as float32 ``(H, W)`` in [0, 1], from any form a dataset or this module holds.

    8-bit greyscale images (``"L"``, the storage form) are divided by 255, 16-bit ones (``"I;16"``) by 65535,
    binary (``"1"``) ones give 0/1; float images (``"F"``), arrays and tensors are taken as weights already.
    """
    if isinstance(mask, PIL.Image.Image):
        if mask.mode == "1":
            array = np.asarray(mask, dtype=np.float32)
        elif mask.mode in ("L", "LA", "P"):
            array = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        elif mask.mode.startswith("I;16"):
            array = np.asarray(mask, dtype=np.float32) / 65535.0
        elif mask.mode in ("F", "I"):
            array = np.asarray(mask, dtype=np.float32)
        else:
            raise ValueError(f"an RoI mask must be a single-channel image ('L', 'F', 'I;16' or '1'), got mode {mask.mode!r}")
    elif isinstance(mask, torch.Tensor):
        array = mask.detach().float().cpu().numpy()
    else:
        array = np.asarray(mask, dtype=np.float32)
    while array.ndim > 2 and array.shape[0] == 1:  # (1, H, W) and (1, 1, H, W) masks; keeps a 1×1 mask 2-D
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"an RoI mask must be one H×W channel, got shape {np.shape(mask)}")
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def mask_size(mask: MaskInput) -> Tuple[int, int]:
    """(height, width) of a mask: a PIL image, or an array/tensor whose last two axes are H and W."""
    if isinstance(mask, PIL.Image.Image):
        return mask.height, mask.width
    return tuple(int(n) for n in mask.shape[-2:])


def check_mask_matches_image(mask: MaskInput, image: ImageInput, index: int = 0) -> None:
    """Raise :class:`RoIMaskSizeError` unless ``mask`` has the height and width of ``image``."""
    (mh, mw), (ih, iw) = mask_size(mask), image_size(image)
    if (mh, mw) != (ih, iw):
        raise RoIMaskSizeError(
            f"RoI mask {index} is {mw}×{mh} but its image is {iw}×{ih}; masks must be at image size "
            "(compute_roi_masks returns them so)"
        )


def load_roi_classifier(name_or_path: str = DEFAULT_ROI_CLASSIFIER, device=None, torch_dtype=None, **kwargs):
    """``(classifier, image_processor)``: any ``AutoModelForImageClassification`` with its image processor, frozen."""
    return load_image_classifier(name_or_path, device, torch_dtype, **kwargs)
