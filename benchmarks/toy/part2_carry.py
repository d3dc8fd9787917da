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

The test split's evaluation (``evaluate_v3.py --work-dir outputs/v3_part2/eval-test``, hours of CPU) is carried too,
so that a session ending in the middle of it loses no finished row: ``save`` keeps its rows (``eval/rows*.jsonl``,
gzip'd, complete lines only), its trained second classifier (``foundation/resnet_b``: trained again on another CPU it
would not be the same network), its bits inside/outside and the SHA-256 of its images' files (``data/<split>-<n>.
sha256.json``; the images themselves, 53 MB, are drawn again from their seed) under ``models/v3_part2/carry/
eval-test``; ``restore`` puts back what is missing there, and the evaluation resumes from its rows (the bitstream
files of rows already finished are not kept: their sizes are in the rows). ``evaluate_v3.py`` refuses images drawn
again whose files differ from the digests (the rows would belong to other images). Nothing is read or decided here.
"""

import argparse
import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from convergence import read_lines  # noqa: E402

from slim_diffusers.utils.file_utils import write_atomically  # noqa: E402

KINDS = ("mse", "task")
SEGMENT = {"mse": 1000, "task": 250}  # baseline_curve.py's defaults, the main runs' settings
EVAL = "eval-test"  # evaluate_v3.py --split test's work folder under outputs/v3_part2
CLASSIFIER_B = "foundation/resnet_b"  # evaluate_v3.ensure_classifier_b's folder in it
DIGEST = ".sha256.json"  # beside a data folder: what its files were when the evaluation drew them
NEWLINE = b"\n"


class DataMismatchError(RuntimeError):
    """Images drawn again are not the ones an evaluation's carried rows were measured on."""


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


def folder_digest(folder: Path) -> dict:
    """SHA-256 of every file in a folder (its names relative to it)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_digest(folder: Path) -> Path:
    target = folder.with_name(folder.name + DIGEST)
    write_atomically(target, (json.dumps(folder_digest(folder), indent=1) + "\n").encode("utf-8"))
    return target


def check_digest(folder: Path) -> None:
    """Raises ``DataMismatchError`` where ``folder``'s files differ from the digest written beside it (if any)."""
    target = folder.with_name(folder.name + DIGEST)
    if target.is_file():
        kept, now = json.loads(target.read_text()), folder_digest(folder)
        if kept != now:
            differ = sorted(k for k in set(kept) | set(now) if kept.get(k) != now.get(k))
            raise DataMismatchError(f"{folder}: its files {differ} differ from {target.name} (the images the "
                                    f"evaluation's rows belong to); the rows cannot be resumed with these images")


def _complete_lines(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:data.rfind(NEWLINE) + 1]  # a line the evaluation is writing right now is left for later


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # the same rows give the same file: no new blob in the repository


def save_eval(out: Path, models: Path) -> List[str]:
    """The test evaluation's finished rows, second classifier, bits and its images' digest, to ``models/carry/eval-test``."""
    work, carry = out / EVAL, models / "carry" / EVAL
    if not work.is_dir():
        return []
    said = []
    shards = sorted((work / "eval").glob("rows*.jsonl"))
    rows = 0
    for shard in shards:
        data = _complete_lines(shard)
        rows += data.count(NEWLINE)
        target = carry / "eval" / (shard.name + ".gz")
        if not (target.is_file() and gzip.decompress(target.read_bytes()) == data):
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, _gzip(data))
    if shards:
        said.append(f"{EVAL}: {rows} finished rows carried")
    for data in sorted(d for d in (work / "data").glob("*") if (d / "dataset_info.json").is_file()):
        digest = data.with_name(data.name + DIGEST)
        if not digest.is_file():  # drawn before the evaluation wrote digests
            write_digest(data)
        (carry / "data").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(digest, carry / "data" / digest.name)
        said.append(f"{EVAL}: the digest of data/{data.name} carried")
    classifier = work / CLASSIFIER_B
    if (classifier / "toy_done.json").is_file():
        if not same_tree(classifier, carry / CLASSIFIER_B):
            (carry / CLASSIFIER_B).parent.mkdir(parents=True, exist_ok=True)
            copy_tree(classifier, carry / CLASSIFIER_B)
        said.append(f"{EVAL}: {CLASSIFIER_B} carried")
    for bits in sorted(work.glob("bits-*.json")):
        carry.mkdir(parents=True, exist_ok=True)
        if not ((carry / bits.name).is_file() and (carry / bits.name).read_bytes() == bits.read_bytes()):
            shutil.copyfile(bits, carry / bits.name)
        said.append(f"{EVAL}: {bits.name} carried")
    return said


def restore_eval(out: Path, models: Path) -> List[str]:
    """Puts back what ``save_eval`` kept and ``out/eval-test`` lacks (what is there is left as it is)."""
    work, carry = out / EVAL, models / "carry" / EVAL
    if not carry.is_dir():
        return []
    said = []
    for shard in sorted((carry / "eval").glob("rows*.jsonl.gz")):
        target = work / "eval" / shard.name[:-len(".gz")]
        if target.exists():
            said.append(f"{EVAL}: {target.name} already under {out}, left as it is")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data = gzip.decompress(shard.read_bytes())
        write_atomically(target, data)
        said.append(f"{EVAL}: {data.count(NEWLINE)} finished rows restored ({target.name})")
    for digest in sorted((carry / "data").glob("*" + DIGEST)):
        if not (work / "data" / digest.name).exists():
            (work / "data").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(digest, work / "data" / digest.name)
            said.append(f"{EVAL}: data/{digest.name} restored (the images are drawn again, and checked against it)")
    if (carry / CLASSIFIER_B).is_dir():
        if (work / CLASSIFIER_B).exists():
            said.append(f"{EVAL}: {CLASSIFIER_B} already under {out}, left as it is")
        else:
            (work / CLASSIFIER_B).parent.mkdir(parents=True, exist_ok=True)
            copy_tree(carry / CLASSIFIER_B, work / CLASSIFIER_B)
            said.append(f"{EVAL}: {CLASSIFIER_B} restored")
    for bits in sorted(carry.glob("bits-*.json")):
        if not (work / bits.name).exists():
            work.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bits, work / bits.name)
            said.append(f"{EVAL}: {bits.name} restored")
    return said


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "v3_part2")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "v3")
    parser.add_argument("--models", type=Path, default=HERE / "models" / "v3_part2")
    args = parser.parse_args(argv)
    if args.action == "save":
        said = save(args.out, args.results, args.models) + save_eval(args.out, args.models)
    else:
        said = restore(args.out, args.results, args.models) + restore_eval(args.out, args.models)
    print("\n".join(said) if said else "nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
