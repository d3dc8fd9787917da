"""Named errors of slim-diffusers. Each message says what went wrong and what to do about it."""


class SLIMBitstreamError(ValueError):
    """A ``.slim`` file or payload is malformed: wrong magic, unknown version, truncated, corrupt."""


class SLIMModelMismatchError(ValueError):
    """A bitstream or component was written by weights other than the ones asked to read it."""
