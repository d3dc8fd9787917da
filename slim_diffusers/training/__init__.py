"""Training of SLIM's compressor, decompressor and control module.

- :mod:`.losses` — the objective of both stages (rate, guide, diffusion, RoI, task terms)
- :mod:`.training_utils` — :class:`SLIMTrainingModule`, data transforms, checkpoints, validation, model card
- :mod:`.train` — the loop that ``training/train_stage1.py`` and ``train_stage2.py`` run
- :mod:`.dataset_builder` — the training set's RoI masks and captions (``training/prepare_dataset.py``)
"""

from ..utils.import_utils import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "LossWeights": "slim_diffusers.training.losses",
        "slim_losses": "slim_diffusers.training.losses",
        "SLIMTrainingModule": "slim_diffusers.training.training_utils",
        "FrozenComponents": "slim_diffusers.training.training_utils",
    },
    globals(),
)
