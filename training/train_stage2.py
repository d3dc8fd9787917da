"""Stage 2 of SLIM training: stage 1 + RoI pixel loss (MSE + LPIPS) + task (classification) loss.

    accelerate launch training/train_stage2.py \\
        --pretrained_model_name_or_path slim-stage1 \\
        --train_data_dir data/slim-train --output_dir slim-stage2 --classifier_name_or_path microsoft/resnet-50

``--help`` lists every flag; the loop is :func:`slim_diffusers.training.train.main`.
"""

from slim_diffusers.training.train import main

if __name__ == "__main__":
    main(stage=2)
