"""Learned baseline codecs trained in the toy world: one for human vision, one for machine vision.

The paper compares SLIM with learned codecs for machines (TransTIC, AdaptICMH, MPA). Their weights are trained
on ImageNet-scale data and cannot be had here, so this module trains their toy-scale stand-ins in the same
world as SLIM, on the same CPU budget, and hands them to the evaluation harness as
:class:`~slim_diffusers.evaluation.baselines.CompressAICodec` curves, so their bytes are real and counted whole:

- ``bmshj2018 MSE`` — CompressAI's ``ScaleHyperprior`` (Ballé et al. 2018, "bmshj2018-hyperprior") trained for
  ``λ·255²·MSE + bpp`` (CompressAI's ``RateDistortionLoss``) at several λ: the human-vision learned codec;
- ``bmshj2018 task`` — each of those models fine-tuned for ``bpp + λ·(κ·CE + γ·255²·MSE)``, the cross-entropy
  of the frozen toy ResNet on the reconstruction (the classifier SLIM's task loss uses), with a small MSE term
  (γ < 1) that keeps the pixels images: the machine-vision codec. Like TransTIC/AdaptICMH/MPA it starts from a
  codec trained for humans and adapts it to a downstream model with a rate + task objective; unlike them it
  tunes the whole codec instead of prompts or adapters, which is the stronger (upper-bound) variant.

Budget. Training a hyperprior from scratch at every rate costs more than the toy run can spend, so the highest
λ is trained from scratch and each lower λ is fine-tuned, for fewer steps, from the model of the next higher λ
(a chain: each fine-tune moves the rate by one rate point). Fine-tuning a trained codec to a new λ is common
practice when compute is short; going down in rate is the easy direction — it mostly switches latent channels
off — which we saw here: 30 fine-tuning steps cut the rate by a third going down, and hardly raised it going up.
The task models start from the MSE model of their λ. Steps are fixed numbers, not a time limit, so results do
not depend on the machine's speed.

Images are 96² in toy world v2; ``ScaleHyperprior`` needs sides divisible by 64, so the codec replicate-pads to
128² (as ``CompressAICodec`` does at evaluation) and training sees exactly that padding: distortion is measured
on the 96² image only and the rate is the bits of the whole padded latent per *image* pixel, so the objective is
the quantity the harness reports. The synthesis is trained on rounded latents (see :func:`training_forward`).

Every model is cached under ``out_dir`` as ``model.safetensors`` (the full state dict, CDF tables included, so
the bytes do not depend on recomputing them) with a ``config.json`` that rebuilds the architecture, and a
``training.json`` written last that marks it finished. A later call reuses a model whose recorded training
settings (and, for a fine-tune, the weights it started from and the classifier it was tuned through) match;
an interrupted run therefore resumes at the model it was training. Everything is seeded: the same settings and
thread count give the same weights and the same bytes.

Run as a script to train and measure (bpp from real bytes, PSNR, top-1 of the classifier on held-out images)::

    python benchmarks/toy/learned_baselines.py --work-dir /tmp/learned --classifier outputs/toy/foundation/resnet
    python benchmarks/toy/learned_baselines.py --tiny ...   # seconds: CI's check that the path works
"""

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from slim_diffusers.utils.file_utils import write_atomically

ARCHITECTURE = "bmshj2018-hyperprior"
MSE_NAME, TASK_NAME = "bmshj2018 MSE", "bmshj2018 task"
CONFIG_NAME, WEIGHTS_NAME, DONE_NAME = "config.json", "model.safetensors", "training.json"
PAD_TO = 64  # ScaleHyperprior's downsampling factor (g_a: 16, h_a: 4); CompressAICodec pads the same way


@dataclass(frozen=True)
class LearnedBaselineConfig:
    """Every setting of the learned baselines. ``(steps, batch, learning rate)`` per stage.

    Attributes:
        N, M: ScaleHyperprior's channels (transforms, latent). CompressAI uses 128/192 for its lowest
            qualities on photos; toy images are simpler and a training step at 64/96 already costs about a
            second on two cores, where steps, not capacity, limit the quality.
        lambdas: the rate points, CompressAI's λ (``λ·255²·MSE + bpp``; these are its qualities 3, 5, 7 and one
            step above its highest). Higher λ: more bits. Chosen where the toy ResNet's accuracy changes: WebP
            needs about 0.5 bpp at 96² for 90% top-1, and the first trial (qualities 1, 3, 5, 7, 400 steps from
            scratch) stayed at 23 dB and chance accuracy up to 0.8 bpp.
        base_lambda: the λ trained from scratch (one of ``lambdas``, best the highest); the others are
            fine-tuned in a chain from it.
        task_weight: κ, the weight of the classifier's cross-entropy relative to λ in the task stage. With
            κ = 1000 a nat of cross-entropy costs as much as 6.7 bpp at the lowest λ: accuracy comes first and the
            rate is cut where the classifier does not look (κ = 100 let the rate win at low λ: top-1 fell).
        task_mse_weight: γ, what is left of the MSE term in the task stage (1 would be the MSE codec's); a tenth
            keeps the reconstructions images without spending bits on what the classifier ignores.
        num_train_images: size of the pool of toy images rendered once (a few seconds per thousand at 96²).
    """

    N: int = 64
    M: int = 96
    lambdas: Tuple[float, ...] = (0.0067, 0.025, 0.0932, 0.36)
    base_lambda: float = 0.36
    base: Tuple[int, int, float] = (1600, 8, 1e-3)
    finetune: Tuple[int, int, float] = (150, 8, 5e-4)
    task: Tuple[int, int, float] = (150, 8, 5e-4)
    task_weight: float = 1000.0
    task_mse_weight: float = 0.1
    num_train_images: int = 2000
    aux_lr: float = 1e-3
    clip_max_norm: float = 1.0  # CompressAI's examples/train.py default

    def __post_init__(self):
        if self.base_lambda not in self.lambdas:
            raise ValueError(f"base_lambda {self.base_lambda} must be one of lambdas {self.lambdas}")
        if len(set(self.lambdas)) != len(self.lambdas):
            raise ValueError(f"lambdas must be distinct, got {self.lambdas}")


# seconds on two CPU cores: the same code, nothing of the numbers
SMOKE = LearnedBaselineConfig(
    N=8, M=12, lambdas=(0.001, 0.1), base_lambda=0.1, base=(6, 2, 1e-2), finetune=(6, 2, 1e-2),
    task=(2, 2, 1e-3), num_train_images=8,
)


@dataclass
class LearnedBaselines:
    """What :func:`train_learned_codecs` returns: ``models[curve][λ]`` (eval mode, CDF tables built), the
    seconds each trained model took, and which models were trained by this call (empty: all from cache)."""

    models: Dict[str, Dict[float, torch.nn.Module]]
    timings_s: Dict[str, float] = field(default_factory=dict)
    trained: List[str] = field(default_factory=list)
    info: Dict[str, dict] = field(default_factory=dict)

    def codecs(self) -> list:
        """The two curves as harness codecs, rate points named ``lambda=<λ>``."""
        from slim_diffusers.evaluation.baselines import CompressAICodec

        return [
            CompressAICodec({rate_point_label(lam): m for lam, m in sorted(models.items())}, name=name, pad_to=PAD_TO)
            for name, models in self.models.items()
        ]


def rate_point_label(lam: float) -> str:
    return f"lambda={lam:g}"


# ------------------------------------------------------------------------------------------------- models
def build_model(N: int, M: int) -> torch.nn.Module:
    from compressai.models import ScaleHyperprior

    return ScaleHyperprior(N=N, M=M)


def save_model(model: torch.nn.Module, path: Path, config: dict) -> None:
    """``config.json`` + ``model.safetensors`` (CDF tables included); the caller writes ``training.json`` last."""
    from safetensors.torch import save

    path.mkdir(parents=True, exist_ok=True)
    model.update(force=True)  # tables from the final weights, stored so decoding never recomputes them
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    write_atomically(path / WEIGHTS_NAME, save(state, metadata={"architecture": ARCHITECTURE}))
    write_atomically(path / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True).encode())


def load_model(path: Path) -> torch.nn.Module:
    """Rebuild a model saved by :func:`save_model`: architecture from ``config.json``, weights and CDF tables
    from ``model.safetensors`` (CompressAI's ``load_state_dict`` resizes the table buffers first)."""
    from safetensors.torch import load_file

    config = json.loads((Path(path) / CONFIG_NAME).read_text())
    if config.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path} holds a {config.get('architecture')!r} model, expected {ARCHITECTURE!r}")
    model = build_model(config["N"], config["M"])
    model.load_state_dict(load_file(str(Path(path) / WEIGHTS_NAME)))
    return model.eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _finished(path: Path, config: dict) -> bool:
    done = path / DONE_NAME
    return done.is_file() and (path / WEIGHTS_NAME).is_file() and json.loads(done.read_text()).get("config") == config


# --------------------------------------------------------------------------------------------------- data
class TrainingPool:
    """Toy images rendered once, as a uint8 (P, 3, H, W) tensor, with their labels; batches are drawn with a
    seeded generator. No augmentation: a pool of a few thousand images is seen only a few times in the budget,
    and flips could turn one class into another in a world whose classes are not all mirror-symmetric."""

    def __init__(self, sample_fn: Callable, n: int, seed: int, image_size: int):
        items = sample_fn(n, seed=seed, size=image_size, start=0)
        self.images = torch.from_numpy(np.stack([np.asarray(s.image.convert("RGB"), np.uint8) for s in items]))
        self.images = self.images.permute(0, 3, 1, 2).contiguous()
        self.labels = torch.tensor([int(s.label) for s in items])

    def batch(self, size: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """``size`` images in [0, 1] and their labels."""
        idx = torch.randint(0, len(self.labels), (size,), generator=generator)
        return self.images[idx].float() / 255.0, self.labels[idx]


def pad(x: torch.Tensor, multiple: int = PAD_TO) -> torch.Tensor:
    """Replicate-pad the bottom and right edges to a multiple of ``multiple``, exactly as CompressAICodec does."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")


# --------------------------------------------------------------------------------------------------- loss
def training_forward(model, x: torch.Tensor) -> dict:
    """ScaleHyperprior's ``forward`` with the synthesis fed rounded latents (straight-through gradient).

    CompressAI's ``forward`` adds uniform noise to ``y`` both for the likelihoods and for ``g_s``; the decoder
    then never sees the rounded latents it gets from ``decompress``. With a few hundred steps that mismatch
    is not trained away, and the frozen classifier of the task loss is sensitive to it, so the rate keeps the
    noisy relaxation and the reconstruction uses ``round(y)`` with a straight-through gradient ("mixed"
    quantization, Minnen & Singh 2020). ``z`` keeps CompressAI's noise: it only steers the scales.
    """
    y = model.g_a(x)
    z = model.h_a(torch.abs(y))
    z_hat, z_likelihoods = model.entropy_bottleneck(z)
    scales_hat = model.h_s(z_hat)
    _, y_likelihoods = model.gaussian_conditional(y, scales_hat)
    y_hat = y + (torch.round(y) - y).detach()  # what compress() codes: symbols round(y), no means
    return {"x_hat": model.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


def _classifier_inputs():
    try:
        from slim_diffusers.semantics.roi import classifier_inputs
    except ImportError:  # the layout before slim_diffusers.semantics
        from slim_diffusers.roi import classifier_inputs
    return classifier_inputs


def codec_loss(out: dict, x: torch.Tensor, lam: float, *, mse_weight: float = 1.0, task_weight: float = 0.0,
               classifier=None, processor=None, labels: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """``bpp + λ·(γ·255²·MSE + κ·CE)`` for a padded forward pass ``out`` of the (unpadded) images ``x``.

    The MSE codec is γ = 1, κ = 0 (CompressAI's RateDistortionLoss); the task codec adds the cross-entropy of
    the frozen classifier on the reconstruction, fed differentiably (resized and normalised as its processor
    says, as SLIM's stage-2 task loss feeds it). bpp counts the bits of the whole padded latent per image pixel.
    """
    b, _, h, w = x.shape
    x_hat = out["x_hat"][..., :h, :w]
    bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    terms = {"bpp": bits / (b * h * w), "mse": F.mse_loss(x_hat, x)}
    loss = terms["bpp"] + lam * mse_weight * 255**2 * terms["mse"]
    if task_weight:
        logits = classifier(pixel_values=_classifier_inputs()(x_hat.clamp(0, 1), processor)).logits
        terms["ce"] = F.cross_entropy(logits, labels)
        loss = loss + lam * task_weight * terms["ce"]
    terms["loss"] = loss
    return terms


def _optimizers(model, lr: float, aux_lr: float):
    # as CompressAI's examples/train.py: the entropy bottleneck's quantiles get their own optimizer and loss
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    return torch.optim.Adam(main, lr=lr), torch.optim.Adam(aux, lr=aux_lr)


def codec_step(model, opt, aux_opt, loss: torch.Tensor, clip_max_norm: float) -> None:
    """One optimisation step in CompressAI's order (its examples/train.py): both optimizers' gradients cleared first,
    so that the main step's gradient clipping sees the main loss's gradients only. (Clearing the aux optimizer after
    the main step instead, as this file did until 2026-12-04, left the previous step's aux gradients on the quantiles
    for the next step's clipping: a norm of about 200 against the main loss's 0.5–2, so every main gradient was
    scaled by it, and a run resumed from a checkpoint, whose first step has no such leftover, took a step two orders
    of magnitude larger than its Adam statistics had seen.)"""
    opt.zero_grad()
    aux_opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    opt.step()
    model.aux_loss().backward()
    aux_opt.step()


def train_codec(model, pool: TrainingPool, *, lam: float, steps: int, batch: int, lr: float, seed: int,
                config: LearnedBaselineConfig, name: str, mse_weight: float = 1.0, task_weight: float = 0.0,
                classifier=None, processor=None, log_every: int = 50) -> dict:
    """One training stage (from scratch or a fine-tune) of ``model`` in place; returns the last losses."""
    generator = torch.Generator().manual_seed(seed)
    opt, aux_opt = _optimizers(model, lr, config.aux_lr)
    # warm up briefly and anneal: the step counts are small, so the last steps must settle
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    model.train()
    t0 = time.perf_counter()
    terms = {}
    for step in range(steps):
        x, labels = pool.batch(batch, generator)
        out = training_forward(model, pad(x))
        terms = codec_loss(out, x, lam, mse_weight=mse_weight, task_weight=task_weight, classifier=classifier,
                           processor=processor, labels=labels)
        codec_step(model, opt, aux_opt, terms["loss"], config.clip_max_norm)
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            values = ", ".join(f"{k} {v.item():.4f}" for k, v in terms.items())
            print(f"[learned/{name}] step {step}/{steps} ({time.perf_counter() - t0:.0f}s) {values}", flush=True)
    # the bottleneck's quantiles follow its density only slowly through the aux loss; set them from it
    model.update(force=True, update_quantiles=True)
    model.eval()
    return {k: v.item() for k, v in terms.items()}


# ------------------------------------------------------------------------------------------------- driver
def _load_classifier(classifier_dir: Path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    classifier = AutoModelForImageClassification.from_pretrained(str(classifier_dir)).eval().requires_grad_(False)
    return classifier, AutoImageProcessor.from_pretrained(str(classifier_dir))


def _weights_digest(directory: Path) -> str:
    files = sorted(Path(directory).glob("*.safetensors")) or sorted(Path(directory).glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no classifier weights in {directory}")
    return hashlib.sha256("".join(_sha256(f) for f in files).encode()).hexdigest()


def train_learned_codecs(
    out_dir,
    classifier_dir,
    *,
    sample_fn: Callable,
    data_seed: int,
    image_size: int = 96,
    config: LearnedBaselineConfig = LearnedBaselineConfig(),
    seed: int = 0,
    log_every: int = 50,
) -> LearnedBaselines:
    """Train (or load from ``out_dir``) the MSE and the task codec at every λ of ``config``.

    Args:
        out_dir: the cache; one folder per model (``mse/lambda=…``, ``task/lambda=…``).
        classifier_dir: the frozen classifier of the task loss (``save_pretrained`` of a transformers image
            classifier and its image processor); only read when a task model must be trained.
        sample_fn: the toy world's ``samples(n, seed=, size=, start=)``.
        data_seed: the toy-world seed of the training images; never the test seed.
        seed: weight initialisation and batch order.
    """
    out_dir = Path(out_dir)
    result = LearnedBaselines(models={MSE_NAME: {}, TASK_NAME: {}})
    pool, classifier = None, None

    def get_pool():
        nonlocal pool
        if pool is None:
            t0 = time.perf_counter()
            pool = TrainingPool(sample_fn, config.num_train_images, data_seed, image_size)
            result.timings_s["render training images"] = round(time.perf_counter() - t0, 1)
        return pool

    common = dict(architecture=ARCHITECTURE, N=config.N, M=config.M, image_size=image_size, data_seed=data_seed,
                  num_train_images=config.num_train_images, seed=seed, aux_lr=config.aux_lr,
                  clip_max_norm=config.clip_max_norm)

    def stage(key: str, lam: float, recipe: dict, start: Optional[Path], train_kwargs: Callable[[], dict]) -> Path:
        """Train one model unless ``out_dir`` holds it, trained the same way from the same weights."""
        path = out_dir / key.split("/")[0] / rate_point_label(lam)
        cfg = {**common, **recipe, "lambda": lam, "start": None if start is None else _sha256(start / WEIGHTS_NAME)}
        name = f"{key} λ={lam:g}"
        if not _finished(path, cfg):
            # a different random stream per model, fixed by its place in the schedule
            model_seed = seed * 1_000_003 + int(hashlib.sha256(f"{key}|{lam!r}".encode()).hexdigest()[:6], 16)
            torch.manual_seed(model_seed)
            model = build_model(config.N, config.M) if start is None else load_model(start)
            t0, cpu0 = time.perf_counter(), time.process_time()
            last = train_codec(model, get_pool(), lam=lam, steps=recipe["steps"], batch=recipe["batch"],
                               lr=recipe["lr"], seed=model_seed, config=config, name=name, log_every=log_every,
                               **train_kwargs())
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
            save_model(model, path, cfg)
            # CPU seconds as well: on a shared machine they tell what the wall time would be on an idle one
            done = {"config": cfg, "seconds": seconds, "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
                    "last": last}
            done = json.dumps(done, indent=2).encode()
            write_atomically(path / DONE_NAME, done)  # last: marks the model finished
            result.timings_s[name] = round(seconds, 1)
            result.trained.append(name)
        result.info[name] = json.loads((path / DONE_NAME).read_text())
        return path

    steps, batch, lr = config.base
    base = stage("mse/base", config.base_lambda, dict(stage="mse", steps=steps, batch=batch, lr=lr), None, dict)
    mse_paths = {config.base_lambda: base}
    # a chain away from the base, one λ step at a time: each fine-tune moves the rate by one rate point only
    steps, batch, lr = config.finetune
    ordered = sorted(config.lambdas)
    b = ordered.index(config.base_lambda)
    for chain in (ordered[b::-1], ordered[b:]):
        for previous, lam in zip(chain, chain[1:]):
            recipe = dict(stage="mse", steps=steps, batch=batch, lr=lr, from_lambda=previous)
            mse_paths[lam] = stage("mse", lam, recipe, mse_paths[previous], dict)

    def task_kwargs() -> dict:
        nonlocal classifier
        if classifier is None:
            classifier = _load_classifier(Path(classifier_dir))
        return dict(mse_weight=config.task_mse_weight, task_weight=config.task_weight, classifier=classifier[0],
                    processor=classifier[1])

    steps, batch, lr = config.task
    digest = _weights_digest(Path(classifier_dir))  # a retrained classifier invalidates the task models
    task_paths = {}
    for lam in config.lambdas:
        recipe = dict(stage="task", steps=steps, batch=batch, lr=lr, task_weight=config.task_weight,
                      task_mse_weight=config.task_mse_weight, classifier=digest)
        task_paths[lam] = stage("task", lam, recipe, mse_paths[lam], task_kwargs)

    for lam in sorted(config.lambdas):
        result.models[MSE_NAME][lam] = load_model(mse_paths[lam])
        result.models[TASK_NAME][lam] = load_model(task_paths[lam])
    return result


def learned_codecs(out_dir, classifier_dir, *, sample_fn: Callable, data_seed: int, image_size: int = 96,
                   config: LearnedBaselineConfig = LearnedBaselineConfig(), seed: int = 0) -> list:
    """``[CompressAICodec("bmshj2018 MSE"), CompressAICodec("bmshj2018 task")]`` for the harness, training
    whatever ``out_dir`` does not hold yet."""
    return train_learned_codecs(out_dir, classifier_dir, sample_fn=sample_fn, data_seed=data_seed,
                                image_size=image_size, config=config, seed=seed).codecs()


# ------------------------------------------------------------------------------------------------ measure
def measure(codecs: Sequence, items, classifier_dir) -> Dict[str, Dict[str, dict]]:
    """bpp (from the bytes ``encode`` returns), PSNR and classifier top-1 of each codec's rate points."""
    from slim_diffusers.evaluation.harness import Classifier

    classifier = Classifier.from_pretrained(str(classifier_dir))
    report = {}
    for codec in codecs:
        report[codec.name] = {}
        for point in codec.rate_points:
            bpp, psnr, correct, t_enc, t_dec = [], [], 0, 0.0, 0.0
            for s in items:
                t0 = time.perf_counter()
                data = codec.encode(s.image, point)
                t1 = time.perf_counter()
                decoded = codec.decode(data, point)
                t_dec += time.perf_counter() - t1
                t_enc += t1 - t0
                a = np.asarray(s.image.convert("RGB"), np.float64)
                mse = np.mean((a - np.asarray(decoded, np.float64)) ** 2)
                psnr.append(10 * math.log10(255**2 / max(mse, 1e-10)))
                bpp.append(8 * len(data) / (a.shape[0] * a.shape[1]))
                correct += int(classifier.top5(decoded)[0] == s.label)
            report[codec.name][point] = dict(bpp=float(np.mean(bpp)), psnr_db=float(np.mean(psnr)),
                                             top1=100.0 * correct / len(items), encode_s=t_enc / len(items),
                                             decode_s=t_dec / len(items))
            print(f"[learned/measure] {codec.name} {point}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in report[codec.name][point].items()), flush=True)
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, required=True, help="cache of trained models and the report")
    parser.add_argument("--classifier", type=Path, required=True, help="save_pretrained folder of the toy classifier")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--data-seed", type=int, default=2, help="toy-world seed of the training images")
    parser.add_argument("--test-seed", type=int, default=3, help="toy-world seed of the held-out images")
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override LearnedBaselineConfig fields, e.g. base=600,8,1e-3 lambdas=0.002,0.004")
    parser.add_argument("--tiny", action="store_true", help="the smoke configuration: seconds, numbers meaningless")
    args = parser.parse_args(argv)
    from slim_diffusers import toy_world

    torch.set_num_threads(args.threads)
    config = SMOKE if args.tiny else LearnedBaselineConfig()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        default = getattr(config, key)
        if isinstance(default, tuple):
            overrides[key] = tuple(type(d)(v) for d, v in zip(default, value.split(","))) if key != "lambdas" \
                else tuple(float(v) for v in value.split(","))
        else:
            overrides[key] = type(default)(value)
    config = replace(config, **overrides)
    t0 = time.perf_counter()
    result = train_learned_codecs(args.work_dir, args.classifier, sample_fn=toy_world.samples,
                                  data_seed=args.data_seed, image_size=args.image_size, config=config)
    train_s = time.perf_counter() - t0
    items = toy_world.samples(2 if args.tiny else args.num_test, seed=args.test_seed, size=args.image_size)
    report = {"config": asdict(config), "train_s": train_s, "timings_s": result.timings_s,
              "trained": result.trained, "results": measure(result.codecs(), items, args.classifier)}
    (args.work_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
