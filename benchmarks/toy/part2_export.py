"""Bundle toy world v3's SLIM (part 2's variable-rate model with RoI, after stage 2) as the package's demo model.

    .venv/bin/python benchmarks/toy/part2_export.py --model outputs/v3_part2/remedy/stage2-roi \
        --test-images outputs/v3_part2/eval-test/data/test-1000
    .venv/bin/python tests/golden/update_golden.py    # the golden files change on purpose: say so in the commit

``run_toy.export_default`` does the bundling (the exact integer entropy model, the swap that a kill cannot leave half
done, one test image per class); this script gives it part 2's model: its λr per level from the model's own
``training_state.json`` (level 0: the fewest bits), ``slim demo``'s default the highest level (the most accurate),
decoded as part 2 evaluates it (``control_curve.DECODE``: one DDIM step on trailing spacing from t = 499), the
bundled classifier kept (toy world v3 keeps v2's ResNet), and the asset README naming the v3 foundation prior.
It refuses a fixed-rate model, a stage-1 model, SLIM w/o RoI, a model whose training has not stopped by its rule, and
a folder that is not a trained SLIM pipeline. Before the package's bundled model is replaced, toy world v2's LDM is
copied out of it to ``benchmarks/toy/models/foundation_v2`` (``foundation.v2_ldm()``, the part-1 tools' default).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import foundation  # noqa: E402
import run_toy  # noqa: E402
from control_curve import DECODE  # noqa: E402
from convergence import read_lines  # noqa: E402

FOUNDATION_V3 = ("the VAE is toy world v2's (`benchmarks/toy/foundation.py`); the UNet and CLIP text encoder are\n"
                 "  toy world v3's foundation prior (`benchmarks/toy/models/prior_v3`, trained by\n"
                 "  `benchmarks/toy/train_prior.py`).")


def levels_of(model: Path) -> Tuple[List[float], dict]:
    """The model's λr per level (level 0 first) and the arguments it trained with, as its training recorded them;
    refuses what part 2 did not train."""
    state_file = model / "training_state.json"
    if not (model / "model_index.json").is_file() or not state_file.is_file():
        raise ValueError(f"{model}: not a trained SLIM pipeline (no model_index.json / training_state.json)")
    state = json.loads(state_file.read_text())
    levels = state.get("rate_levels")
    if not levels:
        raise ValueError(f"{model}: a fixed-rate model; the demo bundles part 2's variable-rate model")
    args = state.get("args", {})
    if args.get("stage") != 2:
        raise ValueError(f"{model}: a stage-{args.get('stage', '?')} model; the demo bundles SLIM after stage 2")
    if args.get("no_roi"):
        raise ValueError(f"{model}: SLIM w/o RoI; the demo bundles SLIM (with RoI)")
    curve = read_lines(model / "curve.jsonl")
    if not curve or not curve[-1].get("verdict", {}).get("stop"):
        raise ValueError(f"{model}: its training has not stopped by its rule (curve.jsonl): the demo bundles the "
                         "finished model only")
    return [float(x) for x in levels], args


def keep_v2_ldm(bundled: Path, copy: Path) -> None:
    """Copy toy world v2's LDM out of the bundled model before part 2's model replaces it (``foundation.v2_ldm``:
    the part-1 tools' default); nothing to do once the copy exists. Refuses a bundled model that is not v2's."""
    import shutil

    if (copy / "unet").is_dir():
        return
    unet = json.loads((bundled / "unet" / "config.json").read_text())
    if unet.get("addition_embed_type") is not None:  # v3's prior embeds the caption into the time embedding too
        raise ValueError(f"{bundled} is not toy world v2's LDM and {copy} holds no copy of it")
    staging = copy.with_name(copy.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    for part in foundation.V2_LDM_PARTS:
        shutil.copytree(bundled / part, staging / part)
    staging.rename(copy)


def export(model: Path, test_images: Path, assets: Optional[Path] = None) -> dict:
    levels, args = levels_of(model)
    if not (test_images / "dataset_info.json").is_file():
        raise ValueError(f"{test_images}: not a saved dataset (evaluate_v3.py --split test writes one)")
    if assets is None:  # the package's: toy world v2's LDM is kept for the part-1 tools first
        keep_v2_ldm(foundation.BUNDLED_SLIM, foundation.V2_LDM_COPY)
    demo = {"rate_levels": {str(i): lam for i, lam in enumerate(levels)}, "default_rate": len(levels) - 1}
    trained_as = (f"with toy world v3's foundation (part 2) as one variable-rate model with {len(levels)} rate levels "
                  f"(λr {', '.join(f'{lam:g}' for lam in levels)} for levels 0 … {len(levels) - 1}; "
                  "`slim demo --rate R`)" + (", each image's loss divided by max(1, λr of its level)"
                                             if args.get("level_loss_scale") == "inverse_lambda"
                                             else ", the paper's loss"))
    command = f"benchmarks/toy/part2_export.py --model {model} --test-images {test_images}"
    run_toy.export_default(REPO / "outputs", run_toy.V3, {}, model=model, demo=demo, trained_as=trained_as,
                           decode=dict(DECODE), command=command, test_images=test_images,
                           classifier=foundation.BUNDLED_SLIM.parent / "classifier",
                           components=FOUNDATION_V3, assets=assets)
    return demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="part2_slim.py's stage2-roi folder")
    parser.add_argument("--test-images", type=Path, required=True,
                        help="the test split saved as a dataset (evaluate_v3.py's WORK/data/test-1000)")
    parser.add_argument("--assets", type=Path, default=None, help="default: the package's slim_diffusers/assets")
    args = parser.parse_args(argv)
    try:  # a model part 2 did not finish, no test images, no v2 LDM to keep: refused before anything is written
        demo = export(args.model, args.test_images, args.assets)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
