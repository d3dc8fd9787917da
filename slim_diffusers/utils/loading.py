"""Loading frozen models from the Hub or a local ``save_pretrained`` directory: the classifiers (RoI masks,
evaluation) and the captioner."""


def dtype_kwargs(torch_dtype) -> dict:
    """``from_pretrained`` keyword for a dtype: transformers ≥ 4.56 calls it ``dtype``, older ones ``torch_dtype``."""
    if torch_dtype is None:
        return {}
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": torch_dtype}


def load_frozen(model_class, processor_class, name_or_path: str, device=None, torch_dtype=None, **kwargs):
    """``(model, processor)`` from the Hub or a local ``save_pretrained`` directory; the model frozen, in eval mode."""
    model = model_class.from_pretrained(name_or_path, **dtype_kwargs(torch_dtype), **kwargs)
    processor = processor_class.from_pretrained(name_or_path, **kwargs)
    model.requires_grad_(False).eval()
    if device is not None:
        model.to(device)
    return model, processor


def load_image_classifier(name_or_path: str, device=None, torch_dtype=None, **kwargs):
    """``(classifier, image_processor)``: any ``AutoModelForImageClassification`` with its image processor, frozen."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    return load_frozen(AutoModelForImageClassification, AutoImageProcessor, name_or_path, device, torch_dtype, **kwargs)
