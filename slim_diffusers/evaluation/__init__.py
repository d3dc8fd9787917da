"""Rate–accuracy evaluation of SLIM against baselines (paper §4.2: Fig. 3, Table 1).

- :mod:`.codecs` — the codec interface every evaluated codec implements, and SLIM behind it
- :mod:`.baselines` — Pillow's JPEG/WebP/AVIF and CompressAI models behind the same interface
- :mod:`.harness` — the loop: encode, write the bytes, decode, classify, one JSONL row per image
- :mod:`.report` — summary JSON, rate–accuracy plots and the BD-rate table
- :mod:`.bd_rate` — Bjøntegaard deltas (cubic and pchip), accuracy in percent as the quality axis
- :mod:`.run` — the whole evaluation as one function (``run_evaluation``)
- :mod:`.errors` — the harness's named errors

:func:`~slim_diffusers.evaluation.run.run_evaluation` puts them together for ``slim evaluate`` and the toy
reproduction. Names load lazily, and the Bjøntegaard
functions live in their module (``from slim_diffusers.evaluation.bd_rate import bd_rate, bd_accuracy``),
whose name the package attribute would otherwise shadow.
"""

from ..utils.import_utils import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Codec": "slim_diffusers.evaluation.codecs",
        "SLIMCodec": "slim_diffusers.evaluation.codecs",
        "PillowCodec": "slim_diffusers.evaluation.baselines",
        "CompressAICodec": "slim_diffusers.evaluation.baselines",
        "CodecUnavailableError": "slim_diffusers.evaluation.errors",
        "CodecDataError": "slim_diffusers.evaluation.errors",
        "Classifier": "slim_diffusers.evaluation.harness",
        "Evaluation": "slim_diffusers.evaluation.harness",
        "EvaluationSetupError": "slim_diffusers.evaluation.errors",
        "RowsFileError": "slim_diffusers.evaluation.errors",
        "Sample": "slim_diffusers.evaluation.harness",
        "run_evaluation": "slim_diffusers.evaluation.run",
        "write_report": "slim_diffusers.evaluation.report",
    },
    globals(),
)
