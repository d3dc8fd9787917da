"""Rate–accuracy evaluation: compress, decode and classify every image, writing real bytes.

Every codec (SLIM, SLIM without diffusion, Pillow's JPEG/WebP/AVIF, CompressAI models, any object with the
interface of :class:`slim_diffusers.evaluation.codecs.Codec`) runs through the same loop::

    for each image, codec and rate point:
        encode -> bytes -> OUT_DIR/bitstreams/<codec>/<rate point>/<index><suffix>
        read the file back -> decode -> classify with every classifier -> one JSON line

Bits per pixel come from the size of that file on disk (``8 × bytes / (height × width)``), never from a
rate estimate. A row holds the bytes, bits per pixel, the label and each classifier's top-5.

Decoding by diffusion is stochastic. With ``seeds`` (``slim evaluate --seeds 0 1 2``), every file of a codec whose
decoding draws noise (``codec.stochastic``, SLIM with diffusion) is decoded once per seed, each decode a row that
records its ``seed``; the file is written once. A row without a seed counts as seed ``DEFAULT_SEED`` (0), the
seed every run used before seeds were recorded, so the rows of older runs resume and report as before.

An interrupted run resumes from its JSONL: finished rows are skipped, and a line cut short by the
interruption is dropped and redone. With several processes (``accelerate launch``) the images are split
between them; each process appends to its own ``rows.rank<i>.jsonl`` (one process: ``rows.jsonl``) and
knows the finished rows of all of them, so a resumed run may use another number of processes.
"""

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from PIL import Image

from ..utils.file_utils import write_atomically
from .codecs import Codec, folder_name
from .errors import EvaluationSetupError, RowsFileError

ROWS_GLOB = "rows*.jsonl"
# the decoding seed of a row that records none: rows written before seeds were recorded, and deterministic codecs
DEFAULT_SEED = 0


@dataclass
class Sample:
    """One labelled image of the evaluation set; ``index`` is its position in the dataset."""

    index: int
    image: Image.Image
    label: int
    caption: Optional[str] = None


class Classifier:
    """A transformers image classifier with its image processor, as the receiving machine.

    ``from_pretrained`` loads any ``AutoModelForImageClassification`` with its ``AutoImageProcessor``
    (``microsoft/resnet-50``, ``facebook/convnext-tiny-224``, or a local directory written by
    ``save_pretrained``). Its class indices must be the dataset's labels (ImageNet order for ImageNet).
    """

    def __init__(self, name: str, model: Any, processor: Any):
        self.name, self.model, self.processor = name, model.eval(), processor

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: Any = "cpu", name: Optional[str] = None) -> "Classifier":
        """``name`` labels the classifier's rows and report columns (default: ``name_or_path``)."""
        from ..utils.loading import load_image_classifier

        try:
            model, processor = load_image_classifier(name_or_path, device=device)
        except OSError as err:
            raise EvaluationSetupError(f"could not load the classifier {name_or_path!r}: {err}") from None
        return cls(name or str(name_or_path), model, processor)

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def top5(self, image: Image.Image) -> List[int]:
        """Class indices of the five highest logits, best first."""
        return self.top5_batch([image])[0]

    def top5_batch(self, images: Sequence[Image.Image]) -> List[List[int]]:
        """:meth:`top5` of each image, classified together."""
        import torch

        with torch.no_grad():
            inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").to(self.model.device)
            logits = self.model(**inputs).logits.float()
        return logits.topk(min(5, logits.shape[-1]), dim=-1).indices.tolist()


def _parse_lines(path: Path) -> Iterator[dict]:
    """Rows of one JSONL file. The last line is skipped when it has no newline (a write cut short, or another
    process writing it right now); any other bad line is an error, never silently dropped."""
    with open(path, "rb") as f:
        data = f.read()
    complete, _, _ = data.rpartition(b"\n")
    for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            raise RowsFileError(f"{path}, line {number}: not a JSON row ({err}); remove that line and resume") from None


def read_rows(paths: Iterable[os.PathLike]) -> List[dict]:
    """All complete rows of the given JSONL files, in file order (missing files are skipped)."""
    rows = []
    for path in paths:
        if Path(path).is_file():
            rows.extend(_parse_lines(Path(path)))
    return rows


def row_key(row: dict) -> Tuple[str, str, int, int]:
    """``(codec, rate point, image index, decoding seed)``; a row without a seed has :data:`DEFAULT_SEED`."""
    return row["codec"], str(row["rate_point"]), int(row["index"]), int(row.get("seed", DEFAULT_SEED))


def check_seeds(seeds: Optional[Sequence[int]]) -> Optional[List[int]]:
    """``seeds`` as a list of distinct whole numbers (``None`` stays ``None``: each codec decodes with its own)."""
    if seeds is None:
        return None
    values = list(seeds)
    if not values or any(isinstance(s, bool) or not isinstance(s, int) for s in values):
        raise EvaluationSetupError(f"seeds must be one or more whole numbers, got {seeds!r}")
    if len(set(values)) != len(values):
        raise EvaluationSetupError(f"a seed is given twice: {values}")
    return values


def _drop_cut_line(path: Path) -> None:
    """Truncate ``path`` after its last newline, so that appending starts on a fresh line."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            f.truncate(keep)


class Evaluation:
    """Runs codecs over samples, appending one row per (codec, rate point, image) to a JSONL shard.

    Args:
        out_dir: where ``rows*.jsonl`` and ``bitstreams/`` go.
        codecs: objects with the :class:`~slim_diffusers.evaluation.codecs.Codec` interface.
        classifiers: :class:`Classifier` objects; every decoded image goes through all of them.
        shard: suffix of this process's rows file (``""`` -> ``rows.jsonl``, ``".rank1"`` -> ``rows.rank1.jsonl``).
        keep_bitstreams: keep the files (default) or delete each after it was measured and decoded.
        seeds: decode every file of a stochastic codec (``codec.stochastic``) once per seed, a row each; ``None``:
            once, with the codec's own seed (``codec.seed``). Deterministic codecs decode once whatever is given.
    """

    def __init__(self, out_dir, codecs: Sequence[Any], classifiers: Sequence[Classifier], shard: str = "",
                 keep_bitstreams: bool = True, seeds: Optional[Sequence[int]] = None):
        self.out_dir = Path(out_dir)
        self.codecs = list(codecs)
        self.classifiers = list(classifiers)
        self.keep_bitstreams = keep_bitstreams
        self.seeds = check_seeds(seeds)
        self._check_setup()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rows_path = self.out_dir / f"rows{shard}.jsonl"
        _drop_cut_line(self.rows_path)
        # finished rows of every shard: a resumed run may split the images differently
        names = {c.name for c in self.classifiers}
        self.done = {row_key(r) for r in read_rows(sorted(self.out_dir.glob(ROWS_GLOB))) if names <= set(r["top5"])}

    def _check_setup(self) -> None:
        if not self.codecs:
            raise EvaluationSetupError("nothing to evaluate: give at least one codec")
        if not self.classifiers:
            raise EvaluationSetupError("give at least one classifier")
        for codec in self.codecs:
            if not isinstance(codec, Codec):
                raise EvaluationSetupError(
                    f"{codec!r} lacks the codec interface (name, suffix, rate_points, encode, decode); "
                    "see slim_diffusers.evaluation.codecs"
                )
            labels = [folder_name(p) for p in codec.rate_points]
            if not labels or len(set(labels)) != len(labels):
                raise EvaluationSetupError(
                    f"codec {codec.name!r}: rate points {list(codec.rate_points)} are empty or clash as folder names"
                )
        folders = [folder_name(c.name) for c in self.codecs]
        if len(set(folders)) != len(folders):
            names = [c.name for c in self.codecs]
            raise EvaluationSetupError(f"codec names {names} clash as folder names; give every codec its own name")
        clf_names = [c.name for c in self.classifiers]
        if len(set(clf_names)) != len(clf_names):
            raise EvaluationSetupError(f"a classifier is given twice: {clf_names}")

    def bitstream_path(self, codec: Any, rate_point: Any, index: int) -> Path:
        folder = self.out_dir / "bitstreams" / folder_name(codec.name) / folder_name(rate_point)
        return folder / f"{index}{codec.suffix}"

    def decoding_seeds(self, codec: Any) -> List[Optional[int]]:
        """The seeds ``codec``'s files are decoded with: ``[None]`` (one decode, no seed) for a deterministic codec."""
        if not getattr(codec, "stochastic", False):
            return [None]
        return list(self.seeds) if self.seeds is not None else [int(getattr(codec, "seed", DEFAULT_SEED))]

    def keys(self, indices: Iterable[int]) -> List[Tuple[str, str, int, int]]:
        """Row keys that a complete run over ``indices`` has."""
        return [(c.name, str(p), int(i), DEFAULT_SEED if s is None else s)
                for i in indices for c in self.codecs for p in c.rate_points for s in self.decoding_seeds(c)]

    def run(self, samples: Iterable[Sample], batch_size: int = 1) -> int:
        """Evaluate every sample not yet finished; returns the number of rows written by this call.

        With ``batch_size > 1``, codecs that have ``encode_batch``/``decode_batch`` code that many images per call
        (a diffusion decoder runs its UNet once per step for all of them) and the classifiers classify them
        together; the bytes, the files and the rows are those of one image at a time. The batches are the
        consecutive samples as given, so a resumed run redoes only unfinished rows (in smaller batches, which
        can round a decoded pixel differently: an accuracy, not a byte, may differ at the last digit).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        written = 0
        with open(self.rows_path, "a", encoding="utf-8") as f:
            for chunk in _batches(samples, batch_size):
                items = [(sample, self._checked_image(sample)) for sample in chunk]
                for codec in self.codecs:
                    seeds = self.decoding_seeds(codec)
                    for point in codec.rate_points:
                        missing = {
                            seed: {int(s.index) for s, _ in items if (codec.name, str(point), int(s.index),
                                                                      DEFAULT_SEED if seed is None else seed) not in self.done}
                            for seed in seeds
                        }
                        todo = [(s, im) for s, im in items if any(int(s.index) in m for m in missing.values())]
                        if not todo:
                            continue
                        for row in self._evaluate(codec, point, todo, missing):
                            f.write(json.dumps(row) + "\n")
                            self.done.add(row_key(row))
                            written += 1
                        f.flush()  # a killed run keeps every finished row
        return written

    def _checked_image(self, sample: Sample) -> Image.Image:
        for clf in self.classifiers:
            if not 0 <= int(sample.label) < clf.num_labels:
                raise EvaluationSetupError(
                    f"image {sample.index} has label {sample.label}, but {clf.name} outputs {clf.num_labels} "
                    "classes; use a classifier trained on the dataset's labels"
                )
        return sample.image.convert("RGB")

    def _evaluate(self, codec: Any, point: Any, items: List[Tuple[Sample, Image.Image]],
                  missing: Optional[Dict[Optional[int], set]] = None) -> List[dict]:
        """Encode ``items`` once, then decode and classify them under each seed of ``missing`` (``{seed: indices
        still to do}``; ``None``: one seedless decode of all)."""
        samples, images = [s for s, _ in items], [im for _, im in items]
        paths = [self.bitstream_path(codec, point, s.index) for s in samples]
        t0 = time.perf_counter()
        if len(items) > 1 and hasattr(codec, "encode_batch"):
            datas = codec.encode_batch(images, point, [s.caption for s in samples])
        else:
            datas = [codec.encode(im, point, s.caption) for s, im in items]
        t1 = time.perf_counter()
        sizes = []
        for path, data in zip(paths, datas):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, bytes(data))
            sizes.append(path.stat().st_size)  # the rate is what reached the disk
        stored = [path.read_bytes() for path in paths]
        missing = missing if missing is not None else {None: {int(s.index) for s in samples}}
        rows, encoded = [], set()
        for seed, wanted in missing.items():
            chosen = [j for j, sample in enumerate(samples) if int(sample.index) in wanted]
            if not chosen:
                continue
            rows += self._decode_and_classify(codec, point, seed, [samples[j] for j in chosen],
                                              [images[j] for j in chosen], [paths[j] for j in chosen],
                                              [sizes[j] for j in chosen], [stored[j] for j in chosen],
                                              (t1 - t0) / len(items), encoded)
        if not self.keep_bitstreams:
            for path in paths:
                path.unlink()
        return rows

    def _decode_and_classify(self, codec, point, seed, samples, images, paths, sizes, stored, encode_seconds,
                             encoded: set) -> List[dict]:
        """The rows of one decode of ``stored`` (with ``seed``, for a stochastic codec). The encoding time goes to
        the first row of each image (``encoded``), so that the rows add up to the time spent."""
        seeded = {} if seed is None else {"seed": seed}
        t2 = time.perf_counter()
        if len(stored) > 1 and hasattr(codec, "decode_batch"):
            decoded = codec.decode_batch(stored, point, **seeded)
        else:
            decoded = [codec.decode(data, point, **seeded) for data in stored]
        t3 = time.perf_counter()
        for sample, image, out in zip(samples, images, decoded):
            if out.size != image.size:
                raise EvaluationSetupError(
                    f"codec {codec.name!r} at {point} decoded image {sample.index} to {out.size}, not {image.size}"
                )
        top5 = {clf.name: clf.top5_batch(decoded) for clf in self.classifiers}
        n = len(stored)
        rows = []
        for j, (sample, image, path, size) in enumerate(zip(samples, images, paths, sizes)):
            first = int(sample.index) not in encoded
            encoded.add(int(sample.index))
            rows.append({
                "codec": codec.name,
                "rate_point": str(point),
                "index": int(sample.index),
                **seeded,
                "width": image.width,
                "height": image.height,
                "file": path.relative_to(self.out_dir).as_posix(),
                "bytes": size,
                "bpp": 8 * size / (image.width * image.height),
                "label": int(sample.label),
                "top5": {name: ranks[j] for name, ranks in top5.items()},
                "encode_seconds": encode_seconds if first else 0.0,
                "decode_seconds": (t3 - t2) / n,
            })
        return rows


def _batches(items: Iterable[Any], size: int) -> Iterator[List[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def latest_rows(out_dir, keys: Optional[Iterable[Tuple[str, str, int, int]]] = None) -> List[dict]:
    """Rows of every shard in ``out_dir``, one per key (:func:`row_key`; the last written wins), restricted to
    ``keys``."""
    by_key: Dict[Tuple[str, str, int, int], dict] = {}
    for row in read_rows(sorted(Path(out_dir).glob(ROWS_GLOB))):
        by_key[row_key(row)] = row
    if keys is None:
        return list(by_key.values())
    return [by_key[k] for k in keys if k in by_key]
