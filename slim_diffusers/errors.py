"""Named errors of slim-diffusers. Each message says what went wrong and what to do about it."""


class SLIMBitstreamError(ValueError):
    """A ``.slim`` file or payload is malformed: wrong magic, unknown version, truncated, corrupt."""


class SLIMModelMismatchError(ValueError):
    """A bitstream or component was written by weights other than the ones asked to read it."""


class SLIMDecodeLimitError(SLIMBitstreamError):
    """A ``.slim`` file claims an image larger than the decoder's pixel limit
    (:data:`slim_diffusers.coding.bitstream.MAX_IMAGE_PIXELS`, in the spirit of Pillow's ``MAX_IMAGE_PIXELS``).

    A file of a few dozen bytes can claim up to 16384×16384 pixels, and decoding costs time and memory in
    proportion to the size claimed; the limit keeps an untrusted file from taking more than a large image's worth.
    """


class SLIMRateControlError(ValueError):
    """A size target (``compress(..., target_bytes=…)`` / ``target_bpp=…``, ``slim compress --target-bytes``) that
    cannot be used as asked: a model trained for one rate, or a target given together with a rate."""


class SLIMTargetSizeError(SLIMRateControlError):
    """No rate of the model codes an image into the size asked for. ``smallest`` is the smallest size that can be
    reached (bytes of one file, or bits per pixel for a batch mean), so a caller can retry with it."""

    def __init__(self, message: str, smallest: float):
        super().__init__(message)
        self.smallest = smallest


class SLIMModelNotFoundError(OSError):
    """A model named to ``from_pretrained`` or a script is neither a folder here nor reachable on the Hugging Face
    Hub (offline: not in the local cache). An ``OSError``, as diffusers' and transformers' own "cannot load" errors
    are, so code that catches those catches it too."""
