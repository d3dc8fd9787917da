"""Carry toy world v3's learned-baseline runs across machines: the ignored ``outputs/`` folder does not outlive a
session's machine, so what the runs need to go on is kept in the repository (docs/toy.md, "When outputs/ is lost").

    .venv/bin/python benchmarks/toy/part2_carry.py save       # outputs/v3_part2 -> the repository
    .venv/bin/python benchmarks/toy/part2_carry.py restore    # the repository -> outputs/v3_part2 (a new machine)

``save`` copies every baseline run's curve to ``results/v3/<kind>/lambda=<λ>/curve.jsonl``, the model of a run its
rule stopped to ``models/v3_part2/<kind>/lambda=<λ>/model``, and the last saved state of a run still training (its
weights and both optimizers, what ``baseline_curve.py`` resumes from) to ``models/v3_part2/carry/<kind>/lambda=<λ>/
state``, removed again once that run has stopped. A state is carried only with the curve it belongs to (the state at
the curve's last measured step or one segment after it, as ``baseline_curve.py`` checks when it resumes).

``restore`` puts them back where ``baseline_curve.py`` and ``baseline_chain.sh`` look: a stopped run's curve and
model (an MSE run's model also as its ``state``, the weights its task run starts from), a carried run's curve and
state. A run whose curve is committed but which has neither is not restored and says so: it trains again from
scratch. Nothing already under ``outputs/`` is overwritten.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from convergence import read_lines  # noqa: E402

KINDS = ("mse", "task")
SEGMENT = {"mse": 1000, "task": 250}  # baseline_curve.py's defaults, the main runs' settings


def stopped(lines: List[dict]) -> bool:
    return bool(lines) and bool(lines[-1].get("verdict", {}).get("stop"))


def copy_tree(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of ``src`` (through a temporary folder beside it, so a kill leaves one or the other)."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def same_tree(a: Path, b: Path) -> bool:
    if not (a.is_dir() and b.is_dir()):
        return False
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
        (a / f).read_bytes() == (b / f).read_bytes() for f in names)


def state_step(state: Path) -> Optional[int]:
    path = state / "state.json"
    return json.loads(path.read_text())["step"] if path.is_file() else None


def save(out: Path, results: Path, models: Path, attempts: int = 5) -> List[str]:
    said = []
    for kind in KINDS:
        for folder in sorted((out / kind).glob("lambda=*")):
            label = folder.name
            for _ in range(attempts):  # a run may write its state or a curve line meanwhile: take a consistent pair
                lines = read_lines(folder / "curve.jsonl")
                carried = None
                if not stopped(lines) and (folder / "state").is_dir():
                    try:
                        carried = models / "carry" / kind / label / "state.new"
                        if carried.exists():
                            shutil.rmtree(carried)
                        shutil.copytree(folder / "state", carried)
                    except (OSError, shutil.Error):
                        continue
                if read_lines(folder / "curve.jsonl") != lines:
                    continue
                last = lines[-1]["step"] if lines else 0
                if carried is not None and state_step(carried) not in (last, last + SEGMENT[kind]):
                    continue
                break
            else:
                raise RuntimeError(f"{folder}: no consistent state and curve in {attempts} tries")
            if lines:
                (results / kind / label).mkdir(parents=True, exist_ok=True)
                (results / kind / label / "curve.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
            if stopped(lines) and (folder / "model").is_dir():
                target = models / kind / label / "model"
                if not same_tree(folder / "model", target):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    copy_tree(folder / "model", target)
                if (models / "carry" / kind / label).exists():
                    shutil.rmtree(models / "carry" / kind / label)
                said.append(f"{kind} {label}: stopped at step {lines[-1]['step']}, model kept")
            elif carried is not None:
                final = models / "carry" / kind / label / "state"
                if same_tree(carried, final):
                    shutil.rmtree(carried)
                else:
                    if final.exists():
                        shutil.rmtree(final)
                    carried.rename(final)
                said.append(f"{kind} {label}: state at step {state_step(final)} carried (curve at step "
                            f"{lines[-1]['step'] if lines else 0})")
    return said


def restore(out: Path, results: Path, models: Path) -> List[str]:
    said = []
    for kind in KINDS:
        for curve in sorted((results / kind).glob("lambda=*/curve.jsonl")):
            label = curve.parent.name
            folder = out / kind / label
            if (folder / "curve.jsonl").exists() or (folder / "state").exists():
                said.append(f"{kind} {label}: already under {out}, left as it is")
                continue
            lines = read_lines(curve)
            model, carried = models / kind / label / "model", models / "carry" / kind / label / "state"
            if stopped(lines) and model.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                copy_tree(model, folder / "model")
                if kind == "mse":  # where the task run of this λ starts (baseline_curve.py --init)
                    copy_tree(model, folder / "state")
                shutil.copyfile(curve, folder / "curve.jsonl")
                said.append(f"{kind} {label}: stopped at step {lines[-1]['step']}, model restored")
            elif carried.is_dir() and state_step(carried) in (lines[-1]["step"], lines[-1]["step"] + SEGMENT[kind]):
                folder.mkdir(parents=True, exist_ok=True)
                copy_tree(carried, folder / "state")
                shutil.copyfile(curve, folder / "curve.jsonl")
                said.append(f"{kind} {label}: resumes from step {state_step(carried)}")
            else:
                said.append(f"{kind} {label}: neither a stopped model nor a carried state: not restored (it would "
                            f"train again from scratch, and its committed curve be replaced)")
    return said


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "v3_part2")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "v3")
    parser.add_argument("--models", type=Path, default=HERE / "models" / "v3_part2")
    args = parser.parse_args(argv)
    said = (save if args.action == "save" else restore)(args.out, args.results, args.models)
    print("\n".join(said) if said else "nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
