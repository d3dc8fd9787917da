"""Compute cost of SLIM at 512²: GFLOPs (torch's flop counter) and latency of encode and decode.

Builds the full-size Stable Diffusion 2.1-base architecture from configs written here (random weights:
nothing is downloaded; cost does not depend on the weights) with the default SLIM compressor,
decompressor and control module. Encode = VAE encoder + compressor + entropy coding to bytes. Decode =
entropy decoding + latent synthesis + caption encoding + N × (control module + UNet) + VAE decoder.

    python benchmarks/pipeline_cost.py                      # full size on CPU (minutes)
    python benchmarks/pipeline_cost.py --device cuda --dtype bf16
    python benchmarks/pipeline_cost.py --tiny               # the tiny test pipeline (CI smoke run)

Paper, Table 3 (RTX 4090): encode 575.61 GFLOPs / 50.60 ms, decode 1082.22 GFLOPs / 212.95 ms.
"""

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from slim_diffusers import SLIMControlNet, SLIMPipeline
from slim_diffusers.models.controlnet import controlled_noise_prediction
from slim_diffusers.testing import sd21_base_codec, sd21_base_components, tiny_pipeline


def sd21_base_pipeline() -> SLIMPipeline:
    # v-prediction as SD 2.1 (768) uses; SD 2.1-base predicts ε. The cost is the same.
    sd = sd21_base_components(prediction_type="v_prediction")
    compressor, decompressor = sd21_base_codec()
    return SLIMPipeline(**sd, controlnet=SLIMControlNet.from_unet(sd["unet"]), compressor=compressor,
                        decompressor=decompressor)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    pipe = tiny_pipeline() if args.tiny else sd21_base_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # the diffusion parts run in the requested precision; the codec stays float32 (entropy coding needs
    # bit-identical parameters on both sides)
    for name in ("vae", "text_encoder", "unet", "controlnet"):
        getattr(pipe, name).to(device=device, dtype=dtype).eval()
    for name in ("compressor", "decompressor"):
        getattr(pipe, name).to(device=device).eval()
    image = torch.rand(3, args.size, args.size)
    caption = "a photo of a dog on grass"
    (bitstream,) = pipe.compress(image, caption)
    z_hat = pipe.decode_latents_from_bitstreams([bitstream])[0]
    latent = pipe.encode_images([image])[0]

    def encode():
        pipe.compress(image, caption)

    def denoise_step_only():
        t = torch.tensor(500, device=device)
        x = z_hat.to(device, dtype)
        controlled_noise_prediction(pipe.unet, pipe.controlnet, x, t, emb_cached, x)

    emb_cached = pipe.encode_prompt([caption], device, False)[0].to(dtype)

    def decode():
        pipe.decompress(bitstream, num_inference_steps=args.steps, output_type="pt")

    with torch.inference_mode():
        # the rANS coder is not a torch op: its cost is in the latency, not in the FLOPs
        results = {
            "encode GFLOPs": flops(encode),
            "decode GFLOPs / step (control module + UNet)": flops(denoise_step_only),
            f"decode GFLOPs total ({args.steps} steps)": flops(decode),
            "encode latency ms": 1000 * timed(encode, device, args.repeats),
            "decode latency ms / step": 1000 * timed(denoise_step_only, device, args.repeats),
            f"decode latency ms total ({args.steps} steps)": 1000 * timed(decode, device, args.repeats),
        }
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    print(f"pipeline      {'tiny' if args.tiny else 'SD 2.1-base architecture, random weights'}, {args.size}², "
          f"{args.device} {args.dtype}, {args.threads} CPU threads")
    print(f"parameters    unet {count(pipe.unet):.1f}M, control module {count(pipe.controlnet):.1f}M, "
          f"vae {count(pipe.vae):.1f}M, text encoder {count(pipe.text_encoder):.1f}M, "
          f"compressor {count(pipe.compressor):.1f}M, decompressor {count(pipe.decompressor):.1f}M")
    print(f"latent        {tuple(latent.shape)}, bitstream {bitstream.num_bytes} bytes ({bitstream.bits_per_pixel:.4f} bpp)")
    for key, value in results.items():
        print(f"{key:<46}{value:>12.2f}")


if __name__ == "__main__":
    main()
