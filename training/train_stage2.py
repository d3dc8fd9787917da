"""Stage 2 of SLIM training: stage 1 + RoI pixel loss (MSE + LPIPS) + task (classification) loss.

    accelerate launch training/train_stage2.py \\
        --pretrained_model_name_or_path slim-stage1 \\
        --train_data_dir data/slim-imagenet-3k --output_dir slim-stage2 --classifier_name_or_path microsoft/resnet-50

See ``training/train_slim.py`` (``--help``) for every flag.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_slim import main  # noqa: E402

if __name__ == "__main__":
    main(stage=2)
