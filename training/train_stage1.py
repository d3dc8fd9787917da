"""Stage 1 of SLIM training: rate + RoI guide loss + diffusion loss.

    accelerate launch training/train_stage1.py \\
        --pretrained_model_name_or_path stabilityai/stable-diffusion-2-1-base \\
        --train_data_dir data/slim-train --output_dir slim-stage1

``--help`` lists every flag; the loop is :func:`slim_diffusers.training.train.main`.
"""

from slim_diffusers.training.train import main

if __name__ == "__main__":
    main(stage=1)
