"""What the machine at the other end looks at: Grad-CAM RoI masks (:mod:`.roi`) and RoI-focused BLIP-2 captions
(:mod:`.captioning`)."""

from ..utils.import_utils import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "compute_roi_masks": "slim_diffusers.semantics.roi",
        "load_roi_classifier": "slim_diffusers.semantics.roi",
        "resize_to_latent": "slim_diffusers.semantics.roi",
        "generate_captions": "slim_diffusers.semantics.captioning",
        "load_captioner": "slim_diffusers.semantics.captioning",
    },
    globals(),
)
