"""Stage 1 of SLIM training: rate + RoI guide loss + diffusion loss.

    accelerate launch training/train_stage1.py \\
        --pretrained_model_name_or_path stabilityai/stable-diffusion-2-1-base \\
        --train_data_dir data/slim-imagenet-3k --output_dir slim-stage1

See ``training/train_slim.py`` (``--help``) for every flag.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_slim import main  # noqa: E402

if __name__ == "__main__":
    main(stage=1)
