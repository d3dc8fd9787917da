"""Toy world v3, part 2: one SLIM variant's variable-rate model, stage 1 then stage 2, each to its stopping rule.

    nice -n 19 .venv/bin/python benchmarks/toy/part2_slim.py --variant roi --lambda-rate L0 ... L7
    nice -n 19 .venv/bin/python benchmarks/toy/part2_slim.py --variant noroi --lambda-rate L0 ... L7
    (the same command again resumes wherever it stopped; --smoke checks the chain in a minute)

The levels are ``rate_range.py``'s ``main_levels`` for the variant. The chain, each step cached under
``--work-dir`` (``control_curve.py --prepare-only`` made its ``data`` and ``init``, there or in ``--prepared``):

1. stage 1 from the untrained SLIM: ``train_curve.py --stage 1`` with its defaults (the rule of docs/toy.md) into
   ``stage1-<variant>``;
2. λt for stage 2: ``stage2_gradients.py`` on the stopped stage-1 model at every level (16 validation images, masks as
   the variant trains: Grad-CAM, or ones without RoI; the v3 recipe's mass normalisation and x̂ at the decoder's
   timesteps); λt is the median over the levels of the balance point on ẑ (the λt at which the task term pulls on ẑ
   as hard as the guide and RoI terms together), two significant digits; written to ``stage1-<variant>/lambda_task.json``;
3. stage 2 from the stopped stage-1 model: ``train_curve.py --stage 2`` with the v3 recipe's stage-2 settings into
   ``stage2-<variant>``, the model ``evaluate_v3.py`` takes.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import stage2_gradients  # noqa: E402
import train_curve  # noqa: E402
from convergence import read_lines  # noqa: E402

from slim_diffusers.utils.file_utils import write_atomically  # noqa: E402

BUNDLED = REPO / "slim_diffusers" / "assets" / "toy"
DECODE = ("2", "0.5")  # x̂'s timesteps: the decoder's (2 trailing steps at strength 0.5: t = 499)
STAGE2_OPTIONS = ["--classifier_name_or_path", str(BUNDLED / "classifier"), "--lpips_net", "alex", "--lpips_random_init",
                  "--stage2_timesteps", "decode", "--decode_num_inference_steps", DECODE[0], "--decode_strength",
                  DECODE[1], "--decode_timestep_spacing", "trailing"]
SETTING = "mask mass, x̂ timesteps decode"


def stopped(out: Path) -> bool:
    lines = read_lines(out / "curve.jsonl")
    return bool(lines) and bool(lines[-1]["verdict"]["stop"])


def check_foundation(init: Path, foundation: Path) -> None:
    """Refuse an untrained model whose frozen UNet is not ``foundation``'s (``control_curve.py --prepare-only`` builds
    ``init`` from the bundled v2 model unless given ``--sd``): a chain on the wrong foundation would train for hours."""
    import torch
    from safetensors.torch import load_file

    name = "unet/diffusion_pytorch_model.safetensors"
    if not (init / name).is_file():
        raise FileNotFoundError(f"{init} holds no untrained model: build it first with control_curve.py --sd "
                                f"{foundation} --work-dir {init.parent} --prepare-only")
    ours, theirs = load_file(init / name), load_file(foundation / name)
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        raise ValueError(f"{init}'s UNet is not the foundation's ({foundation}): rebuild it with control_curve.py "
                         f"--prepare-only --sd {foundation}, or name the foundation it was built from with --foundation")


def lambda_task(model: Path, levels: int, no_roi: bool, images: int = 16) -> dict:
    """The median over ``levels`` of the ẑ balance point, with every level's measurement."""
    per_level = {}
    for level in range(levels):
        out = model / "stage2_gradients" / f"level{level}.json"
        if not out.is_file():
            stage2_gradients.main(["--model", str(model), "--rate", str(level), "--images", str(images),
                                   "--decode", *DECODE, "--out", str(out), *(["--no-roi"] if no_roi else [])])
        per_level[level] = json.loads(out.read_text())["settings"][SETTING]["lambda_task_balance"]["z_hat"]
    value = float(f"{statistics.median(per_level.values()):.2g}")
    return {"lambda_task": value, "rule": "median over the levels of the ẑ balance point, two significant digits",
            "setting": SETTING, "images": images, "z_hat_balance_per_level": per_level}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=["roi", "noroi"], required=True)
    parser.add_argument("--lambda-rate", type=float, nargs="+", required=True, help="λr per level (rate_range.py)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "v3_part2")
    parser.add_argument("--level-loss-scale", choices=["none", "inverse_lambda"], default="none",
                        help="both stages' --level_loss_scale (default none: the paper's objective)")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="the folder whose data/ and init/ the chain trains from (default: --work-dir)")
    parser.add_argument("--foundation", type=Path, default=HERE / "models" / "prior_v3",
                        help="the LDM the work dir's init must carry (default: toy world v3's foundation prior)")
    parser.add_argument("--smoke", action="store_true", help="two steps per stage on the given work dir's data")
    args = parser.parse_args(argv)
    work, no_roi = args.work_dir, args.variant == "noroi"
    prepared = args.prepared or work
    try:
        check_foundation(prepared / "init", args.foundation)
    except (FileNotFoundError, ValueError) as err:  # a work dir not built for this chain: say so, no traceback
        parser.error(str(err))
    both = (["--no_roi"] if no_roi else []) + (["--level_loss_scale", args.level_loss_scale]
                                               if args.level_loss_scale != "none" else [])
    extra = ["--", *both] if both else []
    lambdas = ["--lambda-rate", *[str(x) for x in args.lambda_rate]]
    short = (["--segment", "2", "--min-steps", "2", "--max-steps", "2", "--warmup", "1", "--images", "2", "--batch", "2"]
             if args.smoke else [])
    stage1, stage2 = work / f"stage1-{args.variant}", work / f"stage2-{args.variant}"
    train_curve.main(["--stage", "1", "--model", str(prepared / "init"), "--data", str(prepared / "data" / "train"),
                      "--out", str(stage1), *lambdas, *short, *extra])
    if not stopped(stage1):
        raise RuntimeError(f"{stage1}: stage 1 has not stopped by its rule")
    chosen = stage1 / "lambda_task.json"
    if not chosen.is_file():
        result = lambda_task(stage1, len(args.lambda_rate), no_roi, images=2 if args.smoke else 16)
        write_atomically(chosen, (json.dumps(result, indent=2) + "\n").encode("utf-8"))
    lam_task = json.loads(chosen.read_text())["lambda_task"]
    print(f"[part2] {args.variant}: stage 2 with λt {lam_task:g} ({chosen})", flush=True)
    train_curve.main(["--stage", "2", "--model", str(stage1), "--data", str(prepared / "data" / "train"),
                      "--out", str(stage2), *lambdas, *short, "--", "--lambda_task", str(lam_task), *STAGE2_OPTIONS,
                      *both])
    return 0


if __name__ == "__main__":
    sys.exit(main())
