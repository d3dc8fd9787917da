"""Few-step decoding on toy world v2: top-1 at several rates for 1, 2, 4, 10 and 20 denoising steps and three
strengths, with 95 % intervals, through the evaluation harness (real bytes; every decoder reads the same files).

    .venv/bin/python benchmarks/toy/few_step.py --work-dir outputs/toy-v2 --num-images 300
    .venv/bin/python benchmarks/toy/few_step.py --models per-lambda     # the per-λ models' two lowest rates
    .venv/bin/python benchmarks/toy/few_step.py --num-images 200 --timestep-spacing trailing --steps 1 2 4 --strengths 0.5 1

Needs a finished ``variable_rate.py`` work directory (its variable-rate model at ``--rates``, default the levels of the
four per-λ rate weights; or, with ``--models per-lambda``, ``run_toy.py``'s models), its classifiers and test set.
``strength`` is how far
ẑ is noised before denoising (1: from pure noise; the toy run decodes at 0.5); ``k`` steps are run, on a schedule
of ``round(k / strength)`` steps of which the last ``k`` are kept. Rows are cached under
``WORK_DIR/few_step`` (``few_step_trailing``; an interrupted run resumes); results go to ``benchmarks/toy/results/few_step.{json,md}``
(``few_step_trailing.{json,md}`` with ``--timestep-spacing trailing``) for the default work folder, and to
``WORK_DIR/results`` for any other (a smoke run's), unless ``--results-dir`` says where.

``--timestep-spacing trailing`` decodes with the DDIM schedule's timesteps counted back from the last training
timestep (999, 499 for two steps) instead of Stable Diffusion's "leading" spacing (501, 1): with leading spacing a
one-step schedule is the single timestep 1, so one step from noise never denoises, and the last ``k`` steps of a
short schedule start far below the noise level ``strength`` asks for.

Start noise and step count are two variables: each row records the timestep its decode starts from
(``start_timestep``, :func:`decode_plan`). On the leading schedule they move together (strength 0.5: 1 step starts at
t = 1, which is no noise at all and equals "w/o diffusion"; 2 at 251, 4 at 376, 10 at 451), so a leading-spacing
study confounds them and its table says so; on the trailing schedule every step count at one strength starts from
the same timestep (499 at strength 0.5), so the rows differ in the number of steps only.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_toy  # noqa: E402

STEPS = (1, 2, 4, 10, 20)
STRENGTHS = (0.3, 0.5, 1.0)
SPACINGS = ("leading", "trailing")


def decode_plan(scheduler, steps: int, strength: float) -> dict:
    """The schedule that runs ``steps`` denoising steps at ``strength`` on ``scheduler``'s spacing, and the timesteps it
    runs: ``{"schedule": n, "timesteps": [...], "start_timestep": t₀}``."""
    from slim_diffusers.training.losses import decode_timesteps

    n = max(round(steps / strength), steps)
    timesteps = decode_timesteps(scheduler, n, strength).tolist()
    if len(timesteps) != steps:
        raise ValueError(f"a schedule of {n} steps at strength {strength} runs {len(timesteps)} steps, not {steps}")
    return {"schedule": n, "timesteps": timesteps, "start_timestep": int(timesteps[0])}


DEFAULT_WORK_DIR = run_toy.REPO / "outputs" / "toy-v2"


def default_results_dir(work_dir: Path, given=None) -> Path:
    """``given``; else the tracked ``benchmarks/toy/results`` only for the work folder the tracked results come from,
    and ``WORK_DIR/results`` for any other (a smoke run's, say)."""
    if given is not None:
        return Path(given)
    return HERE / "results" if Path(work_dir).resolve() == DEFAULT_WORK_DIR.resolve() else Path(work_dir) / "results"


def schedule_length(pipe, steps: int, strength: float) -> int:
    """The schedule whose last ``steps`` steps run at ``strength`` (checked against the pipeline's own rule)."""
    n = max(round(steps / strength), steps)
    ran = len(pipe.get_timesteps(n, strength, "cpu"))
    if ran != steps:
        raise ValueError(f"a schedule of {n} steps at strength {strength} runs {ran} steps, not {steps}")
    return n


def main(argv=None) -> int:
    import datasets

    from slim_diffusers.evaluation.codecs import SLIMCodec
    from slim_diffusers.evaluation.harness import Classifier, latest_rows
    from slim_diffusers.evaluation.run import run_evaluation
    from slim_diffusers.utils.file_utils import write_atomically

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))  # the whole first sentence
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--num-images", type=int, default=300, help="the first N images of the run's test set")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default: benchmarks/toy/results for the default --work-dir (the run the tracked results "
                        "come from), else WORK_DIR/results: a smoke or other run never rewrites the tracked results")
    parser.add_argument("--models", choices=["variable-rate", "per-lambda"], default="variable-rate",
                        help="the variable-rate model of variable_rate.py, or run_toy.py's per-λ models")
    parser.add_argument("--rates", type=float, nargs="+", default=[0, 2, 4, 6],
                        help="the variable-rate model's rates (default: the levels of λr 16, 4, 1 and 0.25)")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="denoising steps run")
    parser.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS))
    parser.add_argument("--timestep-spacing", choices=SPACINGS, default="leading",
                        help="the DDIM schedule's spacing (the models' own: leading, as Stable Diffusion 2.1's)")
    args = parser.parse_args(argv)
    args.results_dir = default_results_dir(args.work_dir, args.results_dir)
    torch.set_num_threads(2)
    cfg = run_toy.ToyConfig()
    rates = {}
    if args.models == "per-lambda":
        lowest = sorted(cfg.rate_points)[-2:]  # the highest λr: the lowest rates
        pipes = {run_toy.rate_label(r): run_toy.load_pipeline(args.work_dir / "slim" / f"stage2-lr{r:g}") for r in lowest}
    else:
        from slim_diffusers.evaluation.codecs import slim_rate_points

        vr = run_toy.load_pipeline(args.work_dir / "slim" / "vr-stage2")
        pipes, rates = slim_rate_points({"vr": vr}, args.rates)
    if args.timestep_spacing != "leading":
        from diffusers import DDIMScheduler

        for pipe in {id(p): p for p in pipes.values()}.values():
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=args.timestep_spacing)
    any_pipe = next(iter(pipes.values()))
    once = run_toy.EncodeOnce()
    spacing = "" if args.timestep_spacing == "leading" else f"{args.timestep_spacing} spacing, "
    names = {(s, k): f"SLIM {spacing}strength {s:g}, {k} step{'s' if k > 1 else ''}"
             for s in args.strengths for k in args.steps}
    plans = {name: decode_plan(any_pipe.scheduler, k, s) for (s, k), name in names.items()}
    codecs = [once.share(SLIMCodec(pipes, name=name, seed=0, num_inference_steps=schedule_length(any_pipe, k, s),
                                   strength=s, rates=rates))
              for (s, k), name in names.items()]
    classifiers = [Classifier.from_pretrained(str(args.work_dir / "foundation" / name), name=name)
                   for name in run_toy.CLASSIFIERS]
    ds = datasets.load_from_disk(str(args.work_dir / "data" / "test"))
    t0 = time.perf_counter()
    stem = "few_step" if args.timestep_spacing == "leading" else f"few_step_{args.timestep_spacing}"
    run_evaluation(args.work_dir / stem, ds, codecs, classifiers, caption_column="caption",
                   num_samples=args.num_images, batch_size=cfg.eval_batch)
    seconds = time.perf_counter() - t0
    results = {"images": args.num_images, "steps": args.steps, "strengths": args.strengths,
               "timestep_spacing": args.timestep_spacing, "classifiers": run_toy.CLASSIFIERS,
               "models": args.models, "rates": rates,
               "seconds_this_call": round(seconds, 1), "date": time.strftime("%Y-%m-%d"), "accuracy": {}}
    # the first N images only: the cache may hold rows of a longer earlier run
    rows = [r for r in latest_rows(args.work_dir / stem) if r["index"] < args.num_images]
    rows = [r for r in rows if r["rate_point"] in pipes]  # the cache may hold another --models run's rows
    for codec in codecs:
        for point in codec.rate_points:
            mine = [r for r in rows if r["codec"] == codec.name and r["rate_point"] == point]
            entry = {"decode_seconds_per_image": sum(r["decode_seconds"] for r in mine) / len(mine),
                     "mean_bpp": sum(r["bpp"] for r in mine) / len(mine)}
            entry.update({clf: run_toy.claims.accuracy_of(mine, codec.name, point, clf) for clf in run_toy.CLASSIFIERS})
            entry["start_timestep"] = plans[codec.name]["start_timestep"]
            results["accuracy"].setdefault(point, {})[codec.name] = entry
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(args.results_dir / f"{stem}.json", (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    lines = [f"# Few-step decoding, toy world v2 ({args.num_images} test images, {results['date']}; DDIM, "
             f"{args.timestep_spacing} timestep spacing)", "",
             "Top-1 (%) with 95 % Wilson intervals; ResNet / ResNet-B; decode seconds per image (batches of "
             f"{cfg.eval_batch}, 2 threads).", ""]
    for s in args.strengths:
        starts = sorted({plans[names[(s, k)]]["start_timestep"] for k in args.steps})
        if len(starts) > 1:
            lines += [f"At strength {s:g} the step counts start from different timesteps ({starts}): start noise and step "
                      "count are confounded in these rows (trailing spacing separates them).", ""]
    for point, by_codec in results["accuracy"].items():
        bpp = next(iter(by_codec.values()))["mean_bpp"]
        lines += [f"## {point} ({bpp:.4f} bpp)", "", "| strength | steps | start t | ResNet top-1 | ResNet-B top-1 | decode s/image |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for (s, k), name in names.items():
            e = by_codec[name]
            cell = lambda c: f"{e[c]['top1']:.1f} [{e[c]['low']:.1f}, {e[c]['high']:.1f}]"  # noqa: E731
            lines.append(f"| {s:g} | {k} | {e['start_timestep']} | {cell('resnet')} | {cell('resnet_b')} | {e['decode_seconds_per_image']:.3f} |")
        lines.append("")
    write_atomically(args.results_dir / f"{stem}.md", ("\n".join(lines)).encode("utf-8"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
