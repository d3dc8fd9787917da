"""Calibrate the toy world before any SLIM number is read: is the class decidable, and how do codecs erase it?

    OMP_NUM_THREADS=1 python benchmarks/toy/calibrate_world.py   # 11 min on one core of a busy 2-core machine
    python benchmarks/toy/calibrate_world.py --smoke --results-dir /tmp/calib     # the same code in ~10 s

A world is only a fair test of a codec for machines if (1) a small classifier trained on clean images tells
its classes apart, so every error after coding is the codec's, and (2) a classic codec loses the class
gradually as its rate falls, so rate–accuracy curves have a slope to compare over a useful range of rates.
This script measures both, with no SLIM model involved:

1. trains the stand-in ResNet (the architecture of ``foundation.build_classifier("resnet")``: a
   ``ResNetForImageClassification`` with embedding 32 and hidden sizes 32/64/128) on clean toy images,
   with the light augmentation of ``foundation.train_classifier`` (flips, brightness and contrast jitter);
2. classifies held-out images (a seed disjoint from training) clean, and after JPEG (``optimize=True``) and
   WebP (``method=6``) through :class:`slim_diffusers.evaluation.baselines.PillowCodec`, the evaluation
   harness's own baselines, over a quality sweep; bpp comes from the encoded bytes, 8 · bytes / (H · W);
   "kind accuracy" counts predictions of the right coarse kind (outline), whatever the variant (markings);
3. measures each format's byte floor: quality 1 on a flat grey image of the same size;
4. writes ``world_calibration.json``, ``world_calibration.md`` and ``world_examples.png`` (four images per
   class, with their captions) to ``--results-dir``.
"""

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from slim_diffusers import toy_world  # noqa: E402
from slim_diffusers.evaluation.baselines import PillowCodec, pillow_supports  # noqa: E402
from slim_diffusers.testing import tiny_classifier  # noqa: E402

# disjoint from the seeds of foundation.py (1–3 and their offsets up to +100)
TRAIN_SEED, TEST_SEED = 201, 203
QUALITIES = (1, 2, 5, 10, 20, 40, 70, 90)


def build_classifier(size: int):
    """``foundation.build_classifier("resnet")`` at any image size (foundation's processor is fixed to 64²)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    _, processor = tiny_classifier(num_labels=len(toy_world.CLASS_NAMES), image_size=size)
    labels = dict(enumerate(toy_world.CLASS_NAMES))
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="basic",
        num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}))
    return model, processor


def to_unit(images) -> torch.Tensor:
    """PIL images → (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im, np.uint8) for im in images])).permute(0, 3, 1, 2).float() / 255


def train(size: int, num_images: int, steps: int, batch: int, lr: float):
    """Train on a fixed pool of clean images (rendering fresh ones each step would double the time)."""
    model, processor = build_classifier(size)
    t0 = time.perf_counter()
    pool = toy_world.samples(num_images, seed=TRAIN_SEED, size=size)
    x_pool = torch.from_numpy(np.stack([np.asarray(s.image, np.uint8) for s in pool])).permute(0, 3, 1, 2)
    y_pool = torch.tensor([s.label for s in pool])
    render_s = time.perf_counter() - t0
    print(f"[calibrate] rendered {num_images} training images in {render_s:.0f}s", flush=True)

    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t1 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, num_images, (batch,), generator=gen)
        x = x_pool[idx].float() / 255
        # the light augmentation of foundation.train_classifier: flips and brightness/contrast jitter
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = ((x - 0.5) * (0.8 + 0.4 * torch.rand(batch, 1, 1, 1, generator=gen)) + 0.5
             + 0.1 * (torch.rand(batch, 1, 1, 1, generator=gen) - 0.5)).clamp(0, 1)
        loss = F.cross_entropy(model(pixel_values=(x - mean) / std).logits, y_pool[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"[calibrate] step {step}/{steps} ({time.perf_counter() - t1:.0f}s) loss {float(loss.detach()):.4f}", flush=True)
    model.eval()
    return model, processor, {"render_seconds": render_s, "train_seconds": time.perf_counter() - t1}


@torch.no_grad()
def predict(model, processor, images, chunk: int = 100) -> np.ndarray:
    out = []
    for i in range(0, len(images), chunk):
        inputs = processor(images=images[i : i + chunk], return_tensors="pt")
        out.append(model(**inputs).logits.argmax(-1).numpy())
    return np.concatenate(out)


def scores(pred: np.ndarray, labels: np.ndarray) -> dict:
    kinds = np.array([toy_world.kind_of(int(y)) for y in labels])
    pred_kinds = np.array([toy_world.kind_of(int(p)) for p in pred])
    variants = np.array([toy_world.variant_of(int(y)) for y in labels])
    return {
        "top1": 100.0 * float((pred == labels).mean()),
        "kind_accuracy": 100.0 * float((pred_kinds == kinds).mean()),
        "top1_by_variant": {name: 100.0 * float((pred == labels)[variants == v].mean())
                            for v, name in enumerate(toy_world.VARIANTS)},
    }


def byte_floors(size: int) -> dict:
    """Bytes of quality 1 on a flat grey image: what a format costs when there is nothing to code."""
    grey = Image.new("RGB", (size, size), (128, 128, 128))
    floors = {}
    for fmt in ("JPEG", "WEBP", "AVIF"):
        if pillow_supports(fmt):
            floors[fmt] = len(PillowCodec(fmt, qualities=[1]).encode(grey, 1))
    return floors


def example_grid(size: int, per_class: int, path: Path) -> None:
    """One row per kind (its caption on the left), one group of columns per variant (its name on top)."""
    pad, left, top = 2, 90, 22
    n_v = len(toy_world.VARIANTS)
    width = left + n_v * (per_class * (size + pad) + 8)
    height = top + len(toy_world.KINDS) * (size + pad)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=14)
    for v, variant in enumerate(toy_world.VARIANTS):
        draw.text((left + v * (per_class * (size + pad) + 8), 3), variant, fill=(0, 0, 0), font=font)
    for k in range(len(toy_world.KINDS)):
        label = k * n_v
        draw.text((4, top + k * (size + pad) + size // 2 - 8), f'"{toy_world.caption_for(label)}"', fill=(0, 0, 0), font=font)
        for v in range(n_v):
            label = k * n_v + v
            for j in range(per_class):
                # index ≡ label (mod number of classes): the j-th example of this class in the example seed
                item = toy_world.sample(label + j * len(toy_world.CLASSES), seed=TEST_SEED + 1000, size=size)
                grid.paste(item.image, (left + v * (per_class * (size + pad) + 8) + j * (size + pad), top + k * (size + pad)))
    grid.save(path)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(result: dict) -> str:
    c = result["classifier"]
    lines = [
        "# Toy world v2: calibration",
        "",
        f"{result['world']['num_classes']} classes ({len(toy_world.KINDS)} kinds × {len(toy_world.VARIANTS)} variants), "
        f"{result['size']}² images, chance {100 / result['world']['num_classes']:.1f}% top-1, "
        f"{100 / len(toy_world.KINDS):.0f}% kind accuracy. Classifier: the stand-in ResNet, {c['steps']} steps × "
        f"{c['batch']} on {c['train_images']} clean images ({c['train_seconds']:.0f} s on {result['threads']} thread(s) of "
        f"{result['machine']}, 1-min load average {result['load_average_1min']['start']:.1f} at the start); "
        f"{result['test_images']} held-out test images. Generated by `benchmarks/toy/calibrate_world.py` "
        f"({result['date']}).",
        "",
        "| codec | quality | bytes | bpp | top-1 (%) | kind accuracy (%) | " + " | ".join(
            f"{v} (%)" for v in toy_world.VARIANTS) + " |",
        "| --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in toy_world.VARIANTS) + " |",
    ]
    for row in result["rows"]:
        by = " | ".join(f"{row['top1_by_variant'][v]:.1f}" for v in toy_world.VARIANTS)
        q = "—" if row["quality"] is None else str(row["quality"])
        b = "—" if row["mean_bytes"] is None else f"{row['mean_bytes']:.1f}"
        bpp = "—" if row["bpp"] is None else f"{row['bpp']:.3f}"
        lines.append(f"| {row['codec']} | {q} | {b} | {bpp} | {row['top1']:.1f} | {row['kind_accuracy']:.1f} | {by} |")
    floors = ", ".join(f"{fmt} {n} B ({8 * n / result['size'] ** 2:.3f} bpp)" for fmt, n in result["byte_floor_q1_flat_grey"].items())
    lines += ["", f"Byte floor (quality 1, flat grey {result['size']}² image): {floors}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=toy_world.DEFAULT_SIZE, help="image size in pixels")
    parser.add_argument("--train_images", type=int, default=12000, help="size of the clean training pool")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--test_images", type=int, default=500)
    parser.add_argument("--qualities", type=int, nargs="+", default=list(QUALITIES))
    parser.add_argument("--results_dir", "--results-dir", type=Path, default=None,
                        help="default: benchmarks/toy/results; with --smoke, outputs/benchmarks/calibrate_world (a smoke "
                        "run never rewrites the tracked results)")
    parser.add_argument("--save_classifier", type=Path, default=None,
                        help="also write the trained classifier and its image processor here (save_pretrained)")
    parser.add_argument("--smoke", action="store_true", help="tiny run to check the code (its numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train_images, args.steps, args.test_images, args.qualities = 64, 3, 40, [5, 50]
    if args.results_dir is None:
        args.results_dir = HERE.parents[1] / "outputs" / "benchmarks" / "calibrate_world" if args.smoke else HERE / "results"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_at_start = os.getloadavg()[0]  # the CPU may be shared: timings mean little without it

    model, processor, timing = train(args.size, args.train_images, args.steps, args.batch, args.lr)
    if args.save_classifier:
        model.save_pretrained(args.save_classifier)
        processor.save_pretrained(args.save_classifier)
    test = toy_world.samples(args.test_images, seed=TEST_SEED, size=args.size)
    labels = np.array([s.label for s in test])
    images = [s.image for s in test]
    rows = [{"codec": "clean", "quality": None, "mean_bytes": None, "bpp": None,
             **scores(predict(model, processor, images), labels)}]
    print(f"[calibrate] clean: top-1 {rows[0]['top1']:.1f}%, kind {rows[0]['kind_accuracy']:.1f}%", flush=True)
    for fmt in ("JPEG", "WEBP"):
        codec = PillowCodec(fmt, qualities=args.qualities)
        for q in codec.rate_points:
            data = [codec.encode(im, q) for im in images]
            decoded = [codec.decode(d, q) for d in data]
            mean_bytes = float(np.mean([len(d) for d in data]))
            row = {"codec": codec.name, "quality": q, "mean_bytes": mean_bytes, "bpp": 8 * mean_bytes / args.size**2,
                   **scores(predict(model, processor, decoded), labels)}
            rows.append(row)
            print(f"[calibrate] {codec.name} q={q}: {row['bpp']:.3f} bpp, top-1 {row['top1']:.1f}%, "
                  f"kind {row['kind_accuracy']:.1f}%", flush=True)

    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores ({platform.machine()})",
        "threads": torch.get_num_threads(),
        "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
        "torch": torch.__version__,
        "size": args.size,
        "world": {"kinds": list(toy_world.KINDS), "variants": list(toy_world.VARIANTS),
                  "num_classes": len(toy_world.CLASSES), "train_seed": TRAIN_SEED, "test_seed": TEST_SEED},
        "classifier": {"arch": "ResNetForImageClassification (embedding 32, hidden 32/64/128, depths 1/1/1)",
                       "train_images": args.train_images, "steps": args.steps, "batch": args.batch, "lr": args.lr,
                       "clean_top1": rows[0]["top1"], **timing},
        "test_images": args.test_images,
        "byte_floor_q1_flat_grey": byte_floors(args.size),
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "smoke": args.smoke,
    }
    (args.results_dir / "world_calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results_dir / "world_calibration.md").write_text(markdown(result))
    example_grid(args.size, 4, args.results_dir / "world_examples.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
