"""Named errors of the evaluation harness (the Bjøntegaard module has its own, ``BDRateError``).

All are ``ValueError``s, so ``slim evaluate`` reports them in one line instead of a traceback.
"""


class EvaluationSetupError(ValueError):
    """The evaluation is set up inconsistently: clashing codec names, labels a classifier cannot output, ..."""


class CodecUnavailableError(EvaluationSetupError):
    """A baseline cannot run here: the installed Pillow lacks the format, or model weights are missing."""


class CodecDataError(ValueError):
    """Bytes handed to a codec's ``decode`` are not what its ``encode`` writes."""


class RowsFileError(ValueError):
    """A rows JSONL file is damaged somewhere other than its last line (which an interruption may cut)."""
