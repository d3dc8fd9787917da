"""Kill a training run with SIGKILL at random instants, resume it each time, and check it ends as an uninterrupted run.

The experiment of the crash-safety issue, with the tiny components: a checkpoint after every step, one kept
(``--checkpoints_total_limit 1``), so most kills land in or near a checkpoint write. After each kill the script
records where it landed (a ``.checkpoint-N.partial`` folder: during a checkpoint write; a staging folder: during
the final save; else between writes), whether ``--resume_from_checkpoint latest`` finds a complete checkpoint,
and resumes. At the end the weights are compared with an uninterrupted run of the same command.

    .venv/bin/python benchmarks/kill_resume.py --kills 20            # results: benchmarks/results/kill_resume.txt
    .venv/bin/python benchmarks/kill_resume.py --kills 3 --steps 20  # a quick look (writes under outputs/)
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import datetime  # noqa: E402

from machine_info import finish_results, load_average, machine  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200, help="training steps of the run (a checkpoint after each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill instants")
    parser.add_argument("--work-dir", default=str(REPO / "outputs" / "kill_resume"))
    parser.add_argument("--results", default=None,
                        help="results file (default: benchmarks/results/kill_resume.txt for --kills ≥ 20, else under "
                        "the work dir, so a quick look never replaces the committed results)")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    from slim_diffusers.testing import tiny_pipeline
    from slim_diffusers.training.training_utils import checkpoint_dirs, checkpoint_state, partial_checkpoint_dirs
    from tests.training.test_train import make_dataset

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    make_dataset().save_to_disk(str(work / "data"))
    tiny_pipeline(seed=0).save_pretrained(work / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def command(out):
        return [sys.executable, str(REPO / "training" / "train_stage1.py"), "--pretrained_model_name_or_path",
                str(work / "model"), "--train_data_dir", str(work / "data"), "--output_dir", str(out),
                "--resolution", "64", "--train_batch_size", "2", "--report_to", "none", "--seed", "3",
                "--max_train_steps", str(args.steps), "--checkpointing_steps", "1", "--checkpoints_total_limit", "1",
                "--validation_steps", "0", "--resume_from_checkpoint", "latest", "--remove_incomplete_checkpoints"]

    start_load = load_average()
    t0 = time.perf_counter()
    subprocess.run(command(work / "reference"), env=env, check=True, capture_output=True)
    uninterrupted = time.perf_counter() - t0

    step_seconds = uninterrupted / args.steps  # an upper bound: start-up is in it

    def newest_step(folder: Path) -> int:
        found = [int(d.name.split("-")[1]) for d in checkpoint_dirs(folder)] if folder.is_dir() else []
        return max(found, default=0)

    rng = random.Random(args.seed)
    out = work / "killed"
    lines, landed, resumable = [], {}, 0
    for k in range(args.kills):
        proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # once the run is in its training loop (a checkpoint newer than the one it resumed from), a random instant
        # within about two steps: with a checkpoint after every step, that is in or near a checkpoint write
        before = newest_step(out)
        while proc.poll() is None and newest_step(out) <= before:
            time.sleep(0.05)
        seen = newest_step(out)
        delay = rng.uniform(0.0, 2.0) * step_seconds
        time.sleep(delay)
        if proc.poll() is not None:
            lines.append(f"kill {k + 1}: the run had already finished")
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = partial_checkpoint_dirs(out)
        staging = [p for p in out.iterdir() if ".slim-staging-" in p.name] if out.is_dir() else []
        where = ("in a checkpoint write" if partial else "in the final save" if staging else "between writes")
        landed[where] = landed.get(where, 0) + 1
        complete = [d for d in checkpoint_dirs(out) if checkpoint_state(d) == "complete"] if out.is_dir() else []
        incomplete = [d.name for d in checkpoint_dirs(out) if checkpoint_state(d) != "complete"] if out.is_dir() else []
        ok = bool(complete) and not incomplete
        resumable += ok
        lines.append(f"kill {k + 1}, {delay:4.2f} s after checkpoint-{seen} appeared: {where:<22} newest complete "
                     f"{complete[-1].name if complete else 'none':<14} incomplete checkpoint-N folders: {incomplete or 'none'}"
                     f"{' partial: ' + ', '.join(p.name for p in partial) if partial else ''}")
        print(lines[-1], flush=True)
    final = subprocess.run(command(out), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    state = json.loads((out / "training_state.json").read_text())
    same = all(
        torch.equal(a[key], b[key])
        for component in ("compressor", "decompressor", "controlnet")
        for a, b in [(load_file(str(work / "reference" / component / "diffusion_pytorch_model.safetensors")),
                      load_file(str(out / component / "diffusion_pytorch_model.safetensors")))]
        for key in a
    )
    kills = len([line for line in lines if "already finished" not in line])
    summary = [
        f"uninterrupted run: {uninterrupted:.1f} s for {args.steps} steps (checkpoint after every step, one kept)",
        f"kills: {kills}; landed {', '.join(f'{v} {k}' for k, v in sorted(landed.items()))}",
        f"after every kill a complete checkpoint was there to resume from: {resumable}/{kills}",
        f"final run: global step {state['global_step']}; weights equal to the uninterrupted run's, bit for bit: {same}",
    ]
    print("\n".join(summary))
    results = Path(args.results) if args.results else (
        HERE / "results" / "kill_resume.txt" if args.kills >= 20 else work / "kill_resume.txt")
    header = [f"# kill_resume.py --kills {args.kills} --steps {args.steps} --seed {args.seed}",
              f"date             {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
              f"machine          {machine()}", f"load average     {start_load} at the start"]
    finish_results(results, header, lines + summary)
    return 0 if same and resumable == kills else 1


if __name__ == "__main__":
    sys.exit(main())
