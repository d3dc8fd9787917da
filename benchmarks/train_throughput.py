"""Training throughput: optimisation steps per second and peak memory of SLIM stage 1 and stage 2.

Full size (GPU): the SD 2.1-base architecture from ``benchmarks/pipeline_cost.py`` with random weights,
512² images, batch 4, bf16 autocast for the frozen parts. Without a GPU: the tiny test pipeline on CPU
(what CI can run), 64² images, batch 4, float32.

    python benchmarks/train_throughput.py                 # tiny, CPU
    python benchmarks/train_throughput.py --full --device cuda

Each step is the real objective from ``slim_diffusers.training.losses`` (stage 2 with a frozen ResNet classifier
and LPIPS built in code, random weights) + backward + AdamW on the trainable modules.
"""

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from slim_diffusers.training.losses import LossWeights, slim_losses
from slim_diffusers.testing import tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))


def peak_cpu_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="SD 2.1-base architecture at 512²")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    import lpips
    from transformers import ResNetConfig, ResNetForImageClassification

    if args.full:
        from pipeline_cost import sd21_base_pipeline

        pipe, size = sd21_base_pipeline(), 512
        classifier = ResNetForImageClassification(ResNetConfig(num_labels=1000))  # ResNet-50 layout
        dtype = torch.bfloat16
    else:
        pipe, size = tiny_pipeline(), 64
        classifier = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10))
        dtype = torch.float32
    lpips_model = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False).to(device).eval()
    classifier.to(device).eval().requires_grad_(False)
    lpips_model.requires_grad_(False)
    for frozen in (pipe.vae, pipe.unet, pipe.text_encoder):
        frozen.to(device, dtype).requires_grad_(False).eval()
    trainable = [pipe.compressor, pipe.decompressor, pipe.controlnet]
    for m in trainable:
        m.to(device).train()
    params = [p for m in trainable for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    pixels = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    masks = torch.rand(args.batch, 1, size, size, device=device)
    labels = torch.randint(0, classifier.config.num_labels, (args.batch,), device=device)
    embeds = pipe.encode_prompt(["a photo"] * args.batch, device, False)[0].to(dtype)
    preprocess = lambda x: torch.nn.functional.interpolate(x, size=(224, 224) if args.full else (64, 64), mode="bilinear")
    print(f"{'full SD 2.1-base architecture, 512²' if args.full else 'tiny pipeline, 64²'}, batch {args.batch}, "
          f"{args.device}, {args.threads} CPU threads, random weights")
    for stage in (1, 2):
        times = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for step in range(args.steps + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.full):
                terms = slim_losses(pipe, pixels.to(dtype), masks, embeds, LossWeights(), stage=stage, labels=labels,
                                    classifier=classifier, classifier_preprocess=preprocess, lpips_model=lpips_model,
                                    generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            (terms["loss"] + pipe.decompressor.aux_loss()).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t0)
        memory = (f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda"
                  else f"peak process RSS {peak_cpu_mb():.0f} MiB")
        print(f"stage {stage}: {1 / statistics.median(times):.2f} steps/s (median of {args.steps}), {memory}")


if __name__ == "__main__":
    main()
