"""Integer entropy model probe: what exact integer networks cost in rate and in decoding time.

Converts the networks that give the entropy parameters (hyper synthesis ``h_s``, channel-group context,
checkerboard context, parameter aggregation) into :mod:`slim_diffusers.coding.integer_networks` and codes with
them through a stand-alone copy of the coding loop (``code_item``'s order: z, then per channel group the
checkerboard anchors and non-anchors, one rANS stream). The codec itself is not touched.

(a) Rate, by post-training conversion at several bit widths: payload bytes (the rANS streams actually
    written) and estimated bits of y, integer networks against the float entropy model, for
    - the tiny test codec briefly trained on latent-like tensors made from the Kodak photographs
      (a realistic rate: about 1 kB per latent), and
    - the bundled trained toy SLIM on held-out toy images (a very low rate: about 20 bytes per image);
    then quantization-aware fine-tuning at the narrowest widths (8-bit weights and activations). Also
    checks that integer payloads decode to the encoder's ŷ with another thread count and with oneDNN off
    (which also switches the backend from int8 GEMM to float64).
(b) Speed: the default-size decompressor (random weights, M=320, N=192) on a 4×64×64 latent (y 320×16×16):
    the entropy networks alone in coding order, and whole decodes (rANS + g_s), today's float codec
    against integer networks at several widths and backends; wall and CPU time, runs interleaved.

    python benchmarks/integer_entropy_probe.py                   # both parts (several minutes on 2 cores)
    python benchmarks/integer_entropy_probe.py --skip-rate       # (b) only, 2 threads
    python benchmarks/integer_entropy_probe.py --tiny            # CI smoke run: tiny models, few repeats

Targets (issue: integer entropy model): payload within 1% of the float entropy model; decoding on 2 CPU
cores at most 1.25× today's.
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from compressai.ans import BufferedRansEncoder, RansDecoder
from slim_diffusers import SLIMCompressor, SLIMDecompressor
from slim_diffusers.coding import _compressai
from slim_diffusers.coding.latents import compress_latents, decompress_latents, pad_latents
from slim_diffusers.coding.integer_networks import (
    ExactGaussianParameters,
    IntegerConfig,
    IntegerSequential,
    int8_gemm_available,
    reconstruct,
)
from slim_diffusers.testing import structured_latents, tiny_codec

TOY = Path(__file__).resolve().parents[1] / "slim_diffusers" / "assets" / "toy" / "slim"

CONFIGS = {  # inputs 16 bits, outputs 24 bits throughout
    "w8a8i16": IntegerConfig(weight_bits=8, activation_bits=8),
    "w8a16i16 (default)": IntegerConfig(),
    "w12a12i16": IntegerConfig(weight_bits=12, activation_bits=12),
    "w16a16i16": IntegerConfig(weight_bits=16, activation_bits=16),
}


# ------------------------------------------------------------------------------------- the two models
class FloatNets:
    """Today's entropy model: the decompressor's float networks, as ``code_item`` calls them."""

    dtype = torch.float32

    def __init__(self, dec: SLIMDecompressor):
        self.dec = dec

    def hyper(self, z_sym, medians):
        return self.dec.hyper_codec.h_s(z_sym + medians)

    def channel_context(self, k, y_prev):
        return self.dec.latent_codec.channel_context[f"y{k}"](y_prev)

    def context_at(self, k, y_hat, mask):
        return self.dec.latent_codec.latent_codec[f"y{k}"].context_prediction(y_hat)[:, :, mask]

    def entropy_parameters(self, k, features):
        cb = self.dec.latent_codec.latent_codec[f"y{k}"]
        scales, means = cb.latent_codec["y"]._chunk(cb.entropy_parameters(features.unsqueeze(-1)).squeeze(-1))
        return _compressai.scale_indexes(cb.latent_codec["y"].gaussian_conditional, scales), means, scales


def quantization_aware_networks(dec, calibration, config: IntegerConfig) -> Dict[str, IntegerSequential]:
    """Fake-quantized twins of the entropy networks, formats calibrated on ``calibration`` (post-training)."""
    lc, nets = dec.latent_codec, {}
    nets["h_s"] = IntegerSequential.from_float(dec.hyper_codec.h_s, config)
    for k, g in enumerate(dec.config.groups):
        cb = lc.latent_codec[f"y{k}"]
        if k > 0:
            nets[f"cc{k}"] = IntegerSequential.from_float(lc.channel_context[f"y{k}"], config)
        nets[f"ctx{k}"] = IntegerSequential.from_float(cb.context_prediction, config)
        head = ExactGaussianParameters.from_gaussian_conditional(cb.latent_codec["y"].gaussian_conditional)
        nets[f"ep{k}"] = IntegerSequential.from_float(
            cb.entropy_parameters, config, output_frac_bits=head.output_frac_bits(2 * g)
        )
    return {name: net.calibrate(calibration[name]) for name, net in nets.items()}


class IntegerNets:
    """The same networks as exact integer networks: post-training conversion of the float networks
    calibrated on ``calibration``, or the conversion of given quantization-aware networks (``qat``)."""

    dtype = torch.float64

    def __init__(self, dec: SLIMDecompressor, calibration=None, config: IntegerConfig = IntegerConfig(),
                 backend: str = "auto", qat: Dict[str, IntegerSequential] = None):
        self.dec, self.backend = dec, backend
        qat = qat or quantization_aware_networks(dec, calibration, config)
        exact = {name: net.to_exact() for name, net in qat.items()}
        groups = range(len(dec.config.groups))
        self.h_s = exact["h_s"]
        self.cc = {k: exact[f"cc{k}"] for k in groups if k > 0}
        self.ctx = {k: exact[f"ctx{k}"] for k in groups}
        self.ep = {k: exact[f"ep{k}"] for k in groups}
        self.heads = {
            k: ExactGaussianParameters.from_gaussian_conditional(
                dec.latent_codec.latent_codec[f"y{k}"].latent_codec["y"].gaussian_conditional
            )
            for k in groups
        }

    def accumulator_bits(self) -> float:
        nets = [self.h_s, *self.cc.values(), *self.ctx.values(), *self.ep.values()]
        return max(max(n.check_bounds()) for n in nets)

    def hyper(self, z_sym, medians):
        # exact: an integer plus a float32 value
        return self.h_s(z_sym.double() + medians.double(), backend=self.backend)

    def channel_context(self, k, y_prev):
        return self.cc[k](y_prev, backend=self.backend)

    def context_at(self, k, y_hat, mask):
        return self.ctx[k].forward_at(y_hat, mask, backend=self.backend)

    def entropy_parameters(self, k, features):
        params = self.ep[k](features.unsqueeze(-1), backend=self.backend).squeeze(-1)
        indexes, means = self.heads[k](params)
        scales = params.chunk(2, 1)[1]
        return indexes, means, scales


def calibration_inputs(dec: SLIMDecompressor, items) -> Dict[str, List[torch.Tensor]]:
    """The inputs each float network sees while the float model codes ``items`` (``(y, z)`` pairs)."""
    lc, store, handles = dec.latent_codec, {}, []

    def hook(name):
        return lambda module, args: store.setdefault(name, []).append(args[0].detach().clone())

    handles.append(dec.hyper_codec.h_s.register_forward_pre_hook(hook("h_s")))
    for k in range(len(dec.config.groups)):
        if k > 0:
            handles.append(lc.channel_context[f"y{k}"].register_forward_pre_hook(hook(f"cc{k}")))
        cb = lc.latent_codec[f"y{k}"]
        handles.append(cb.context_prediction.register_forward_pre_hook(hook(f"ctx{k}")))
        handles.append(cb.entropy_parameters.register_forward_pre_hook(hook(f"ep{k}")))
    try:
        with torch.no_grad():
            for y, z in items:
                dec.entropy_coder(y, z)  # eval mode: codes as compress does
    finally:
        for h in handles:
            h.remove()
    return store


# ------------------------------------------------------------------------------------------ coding loop
@torch.no_grad()
def code_item(dec, nets, y=None, z=None, *, encoder=None, decoder=None, sizes=None, estimate=True):
    """``SLIMDecompressor.code_item``'s coding order with either model. Returns ``(y_hat, y_bits_estimate)``;
    the estimate is ``-Σ log2 p`` of the symbols with the continuous scales (``None`` unless estimating)."""
    decoding = decoder is not None
    estimating = not decoding and encoder is None and estimate
    eb = dec.hyper_codec.entropy_bottleneck
    medians = eb._get_medians().detach()
    if decoding:
        y_size, z_size = sizes
        shape = (1, dec.config.hyper_channels, *z_size)
        z_sym = decoder.decode_stream(eb._build_indexes(shape).reshape(-1).tolist(), *_compressai.cdf_tables(eb))
        z_sym = torch.tensor(z_sym, dtype=torch.float32).view(shape)
    else:
        y_size = tuple(y.shape[-2:])
        z_sym = torch.round(z - medians)
        if encoder is not None:
            indexes = eb._build_indexes(z.shape).reshape(-1).tolist()
            encoder.encode_with_indexes(z_sym.int().reshape(-1).tolist(), indexes, *_compressai.cdf_tables(eb))
    hyper = nets.hyper(z_sym, medians)

    groups, bits = dec.config.groups, 0.0
    anchor = (torch.arange(y_size[0]).view(-1, 1) + torch.arange(y_size[1]).view(1, -1)) % 2 == 0
    y_parts = y.split(groups, dim=1) if not decoding else [None] * len(groups)
    y_hats = []
    for k, g in enumerate(groups):
        side = hyper if k == 0 else torch.cat([nets.channel_context(k, torch.cat(y_hats, dim=1)), hyper], dim=1)
        gc = dec.latent_codec.latent_codec[f"y{k}"].latent_codec["y"].gaussian_conditional
        cdfs = _compressai.cdf_tables(gc)
        y_hat = torch.zeros((1, g, *y_size), dtype=nets.dtype)
        for step, mask in enumerate((anchor, ~anchor)):
            if step == 0:
                ctx = hyper.new_zeros((1, 2 * g, int(mask.sum())))
            else:
                ctx = nets.context_at(k, y_hat, mask)
            features = torch.cat([ctx, side[:, :, mask]], dim=1)
            indexes, means, scales = nets.entropy_parameters(k, features)
            indexes = indexes.reshape(-1).tolist()
            if decoding:
                sym = torch.tensor(decoder.decode_stream(indexes, *cdfs), dtype=nets.dtype).view(means.shape)
            else:
                sym = torch.round(y_parts[k][:, :, mask].to(nets.dtype) - means)
                if encoder is not None:
                    encoder.encode_with_indexes(sym.int().reshape(-1).tolist(), indexes, *cdfs)
                if estimating:
                    scales = gc.lower_bound_scale(scales.float())
                    lik = gc._likelihood(sym.float() + means.float(), scales, means=means.float())
                    bits += float(-torch.log2(gc.likelihood_lower_bound(lik)).sum())
            y_hat[:, :, mask] = (reconstruct(sym, means) if nets.dtype == torch.float64 else sym + means).to(nets.dtype)
        y_hats.append(y_hat)
    return torch.cat(y_hats, dim=1), (bits if estimating else None)


def encode(dec, nets, y, z) -> bytes:
    encoder = BufferedRansEncoder()
    code_item(dec, nets, y, z, encoder=encoder)
    return encoder.flush()


def decode(dec, nets, payload: bytes, sizes):
    decoder = RansDecoder()
    decoder.set_stream(payload + bytes(4096))
    return code_item(dec, nets, decoder=decoder, sizes=sizes)[0]


# ------------------------------------------------------------------------------------------ (a) rate
KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


def toy_model_items(n: int, start: int, seed: int = 2024):
    """The bundled trained toy SLIM and ``(y, z)`` of ``n`` held-out toy images (64², its training size)."""
    from diffusers import AutoencoderKL

    from slim_diffusers import toy_world

    vae = AutoencoderKL.from_pretrained(TOY / "vae").eval()
    comp = SLIMCompressor.from_pretrained(TOY / "compressor").eval()
    dec = SLIMDecompressor.from_pretrained(TOY / "decompressor").eval()
    if not dec.is_ready_to_code:
        dec.update(force=True)
    items = []
    rate = comp.num_rate_levels - 1 if comp.num_rate_levels else None  # a variable-rate model: its highest level
    with torch.no_grad():
        for s in toy_world.samples(n, seed=seed, size=64, start=start):
            pixels = torch.from_numpy(np.asarray(s.image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            latent = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
            out = comp(pad_latents(latent, dec.total_stride), rate)
            items.append((out.y, out.z))
    return dec, items


def trained_tiny_codec(steps: int, image_dir, seed: int = 0, lmbda: float = 4.0):
    """The tiny codec briefly trained on latent-like tensors made from photographs (as the rate tests do)."""
    from slim_diffusers.coding.latents import run_codec

    comp, dec = tiny_codec(seed)
    latents = structured_latents(batch=8, height=32, width=48, seed=seed, image_dir=image_dir)
    aux = [p for n, p in dec.named_parameters() if n.endswith("quantiles")]
    main = [p for n, p in dec.named_parameters() if not n.endswith("quantiles")] + list(comp.parameters())
    opt, aux_opt = torch.optim.Adam(main, lr=2e-3), torch.optim.Adam(aux, lr=1e-2)
    comp.train(), dec.train()
    torch.manual_seed(seed)
    for _ in range(steps):
        out = run_codec(comp, dec, latents)
        loss = out.bits() / latents.numel() + lmbda * torch.nn.functional.mse_loss(out.latents, latents)
        opt.zero_grad(), aux_opt.zero_grad()
        loss.backward()
        opt.step()
        dec.aux_loss().backward()
        aux_opt.step()
    comp.eval(), dec.eval()
    dec.update(force=True)
    return comp, dec


def latent_items(comp, dec, n, start, height, width, image_dir):
    with torch.no_grad():
        latents = [structured_latents(1, height, width, seed=start + i, image_dir=image_dir) for i in range(n)]
        outs = [comp(pad_latents(latent, dec.total_stride)) for latent in latents]
    return [(o.y, o.z) for o in outs]


def rate_table(dec, cal, test):
    """Payload bytes and estimated y bits over ``test``, float model vs integer networks at each width."""
    calibration = calibration_inputs(dec, cal)
    sizes = (tuple(test[0][0].shape[-2:]), tuple(test[0][1].shape[-2:]))
    float_nets = FloatNets(dec)
    float_bytes = sum(len(encode(dec, float_nets, y, z)) for y, z in test)
    float_bits = sum(code_item(dec, float_nets, y, z)[1] for y, z in test)
    print(f"{'entropy model':<20}{'payload bytes':>14}{'Δ payload':>11}{'y bits (est.)':>15}{'Δ est.':>9}"
          f"{'max acc.':>10}")
    print(f"{'float32 (today)':<20}{float_bytes:>14}{'':>11}{float_bits:>15.0f}{'':>9}{'':>10}")
    default = None
    for name, config in CONFIGS.items():
        nets = IntegerNets(dec, calibration, config)
        payloads = [encode(dec, nets, y, z) for y, z in test]
        nbytes = sum(len(p) for p in payloads)
        nbits = sum(code_item(dec, nets, y, z)[1] for y, z in test)
        if config == IntegerConfig():
            default = (nets, payloads)
        print(f"{name:<20}{nbytes:>14}{100 * (nbytes / float_bytes - 1):>+10.2f}%{nbits:>15.0f}"
              f"{100 * (nbits / float_bits - 1):>+8.2f}%{'2^%.1f' % nets.accumulator_bits():>10}")

    # the default networks' payloads decode to the encoder's ŷ whatever the thread count or oneDNN
    nets, payloads = default
    y_enc = [code_item(dec, nets, y, z)[0] for y, z in test]
    threads, same = torch.get_num_threads(), True
    for setting in ("2 threads", "oneDNN off"):
        torch.set_num_threads(2 if setting == "2 threads" else threads)
        with torch.backends.mkldnn.flags(enabled=setting != "oneDNN off"):
            same &= all(torch.equal(decode(dec, nets, p, sizes), ref) for p, ref in zip(payloads, y_enc))
    torch.set_num_threads(threads)
    print(f"round trip       default-width payloads (encoded with 1 thread) decode to the encoder's ŷ with 2 threads "
          f"and with oneDNN off: {same}")


def rate_part(args):
    torch.set_num_threads(1)  # the machine's cores are shared; (b) times with args.threads
    print("== (a) rate: float entropy model vs integer networks (post-training conversion) ==")
    image_dir = str(KODAK) if KODAK.is_dir() else None
    steps = 20 if args.tiny else args.train_steps
    comp, dec = trained_tiny_codec(steps, image_dir)
    n_test, n_cal = (2, 2) if args.tiny else (16, 8)
    height, width = (16, 24) if args.tiny else (64, 96)
    test = latent_items(comp, dec, n_test, 8, height, width, image_dir)
    cal = latent_items(comp, dec, n_cal, 0, 32, 48, image_dir)
    print(f"\nmodel            tiny test codec (M=32, N=16) trained {steps} steps on latent-like tensors from "
          f"{'Kodak' if image_dir else 'smooth noise'}")
    print(f"data             {n_test} latents 4×{height}×{width} (y {tuple(test[0][0].shape[1:])}), "
          f"calibration on {n_cal} others at 4×32×48")
    rate_table(dec, cal, test)
    qat_table(dec, cal, test, 5 if args.tiny else args.qat_steps)
    if args.tiny:
        return
    dec, cal = toy_model_items(args.calibration_images, start=10_000)
    test = toy_model_items(args.test_images, start=0)[1]
    print(f"\nmodel            bundled trained toy SLIM (M={dec.config.latent_codec_channels}, "
          f"N={dec.config.hyper_channels}, groups={list(dec.config.groups)}, λr=2: a very low rate)")
    print(f"data             {len(test)} held-out toy images 64² (y {tuple(test[0][0].shape[1:])}), "
          f"calibration on {len(cal)} others")
    rate_table(dec, cal, test)


def float_networks(dec) -> Dict[str, torch.nn.Module]:
    lc, nets = dec.latent_codec, {"h_s": dec.hyper_codec.h_s}
    for k in range(len(dec.config.groups)):
        if k > 0:
            nets[f"cc{k}"] = lc.channel_context[f"y{k}"]
        nets[f"ctx{k}"] = lc.latent_codec[f"y{k}"].context_prediction
        nets[f"ep{k}"] = lc.latent_codec[f"y{k}"].entropy_parameters
    return nets


def _distance(name, student, teacher):
    if name.startswith("ep"):  # what the coder sees: means, and scales on a log axis above the bound
        (ms, ss), (mt, st) = student.chunk(2, 1), teacher.chunk(2, 1)
        log = lambda s: torch.log(s.clamp(min=0.11))
        return ((ms - mt) / mt.std().clamp(min=1e-3)).square().mean() + (log(ss) - log(st)).square().mean()
    return ((student - teacher) / teacher.std().clamp(min=1e-3)).square().mean()


def quantization_aware_finetune(dec, calibration, config: IntegerConfig, steps: int, lr: float = 1e-4):
    """Fake-quantized twins trained to reproduce the float networks on the calibration inputs.

    A full QAT run trains the twins inside the codec on its rate-distortion loss; here, with no training
    set at hand, each twin learns from its float network (teacher) on the inputs it sees while coding, so
    that the measured change is the quantization error alone and not the effect of more training."""
    qat = quantization_aware_networks(dec, calibration, config)
    teachers = float_networks(dec)
    torch.manual_seed(0)
    for name, net in qat.items():
        inputs = [x.float() for x in calibration[name]]
        with torch.no_grad():
            targets = [teachers[name](x) for x in inputs]
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        net.train()
        for step in range(steps):
            i = step % len(inputs)
            loss = _distance(name, net(inputs[i]), targets[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
    return qat


def qat_table(dec, cal, test, steps: int):
    """Post-training conversion vs quantization-aware fine-tuning at 8-bit widths."""
    calibration = calibration_inputs(dec, cal)
    config = CONFIGS["w8a8i16"]
    rows = [
        ("float32 (today)", FloatNets(dec)),
        ("w8a8i16 post-training", IntegerNets(dec, calibration, config)),
        ("w8a8i16 QAT", IntegerNets(dec, qat=quantization_aware_finetune(dec, calibration, config, steps))),
    ]
    print(f"\nquantization-aware fine-tuning at w8a8i16 (the narrowest): {steps} Adam steps (lr 1e-4) per network, "
          "the float network as teacher on the calibration inputs")
    print(f"{'entropy model':<24}{'payload bytes':>14}{'Δ payload':>11}{'y bits (est.)':>15}{'Δ est.':>9}")
    base = None
    for name, nets in rows:
        nbytes = sum(len(encode(dec, nets, y, z)) for y, z in test)
        nbits = sum(code_item(dec, nets, y, z)[1] for y, z in test)
        if base is None:
            base = (nbytes, nbits)
            print(f"{name:<24}{nbytes:>14}{'':>11}{nbits:>15.0f}")
        else:
            print(f"{name:<24}{nbytes:>14}{100 * (nbytes / base[0] - 1):>+10.2f}%{nbits:>15.0f}"
                  f"{100 * (nbits / base[1] - 1):>+8.2f}%")


# ------------------------------------------------------------------------------------------ (b) speed
def speed_part(args):
    print(f"\n== (b) speed: default-size entropy model, {args.threads} threads ==")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.tiny:
        comp, dec = tiny_codec()
        size = 16
    else:
        comp, dec = SLIMCompressor().eval(), SLIMDecompressor().eval()
        dec.update(force=True)
        size = args.size
    latents = structured_latents(1, size, size, seed=1)
    with torch.no_grad():
        coded = comp(pad_latents(latents, dec.total_stride))
        cal = [(coded.y, coded.z)]
        cal += [(o.y, o.z) for o in [comp(structured_latents(1, size, size, seed=s)) for s in (2, 3)]]
    calibration = calibration_inputs(dec, cal)
    float_nets = FloatNets(dec)
    int8 = int8_gemm_available()
    variants = {  # name: (config, backend)
        "w8a16 (default), int8 GEMM": (IntegerConfig(), "int8"),
        "w8a16 (default), float64": (IntegerConfig(), "float64"),
        "w8a8, int8 GEMM": (CONFIGS["w8a8i16"], "int8"),
        "w12a12, int8 GEMM": (CONFIGS["w12a12i16"], "int8"),
    }
    if not int8:
        variants = {k: v for k, v in variants.items() if v[1] != "int8"}
    int_nets = {k: IntegerNets(dec, calibration, cfg, backend) for k, (cfg, backend) in variants.items()}
    y, z = coded.y, coded.z
    sizes = (tuple(y.shape[-2:]), tuple(z.shape[-2:]))
    float_payload = encode(dec, float_nets, y, z)
    # the stand-alone loop codes exactly as the codec does
    assert float_payload == compress_latents(comp, dec, latents)[0], "the probe's coding loop drifted from code_item"
    int_payloads = {k: encode(dec, nets, y, z) for k, nets in int_nets.items()}

    def decode_full(nets, payload):
        return dec.synthesize(decode(dec, nets, payload, sizes).float())

    runs = {"networks, float32 (today)": lambda: code_item(dec, float_nets, y, z, estimate=False)}
    for k, nets in int_nets.items():
        runs[f"networks, {k}"] = lambda nets=nets: code_item(dec, nets, y, z, estimate=False)
    runs["decode, codec today"] = lambda: decompress_latents(dec, [float_payload], latents.shape)
    for k, nets in int_nets.items():
        runs[f"decode, {k}"] = lambda nets=nets, k=k: decode_full(nets, int_payloads[k])
    times = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up: allocator, oneDNN kernels, int8 shape checks, CDF list cache
            fn()
        for _ in range(args.repeats):  # interleaved, so that load from other work hits all alike
            for k, fn in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    cpu_med = {k: 1000 * statistics.median(v) for k, v in cpu.items()}
    print(f"config           M={dec.config.latent_codec_channels}, N={dec.config.hyper_channels}, "
          f"groups={list(dec.config.groups)}; latent 4×{size}×{size}, y {tuple(y.shape[1:])}; random weights")
    print(f"machine          {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} threads, n={args.repeats} interleaved, int8 GEMM: {int8}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'':<38}{'wall median':>12}{'min':>9}{'÷ today':>9}{'CPU median':>12}{'÷ today':>9}")
    for k, v in med.items():
        base = "networks, float32 (today)" if k.startswith("networks") else "decode, codec today"
        print(f"{k:<38}{v:>10.1f}ms{1000 * min(times[k]):>7.1f}ms{v / med[base]:>8.2f}×"
              f"{cpu_med[k]:>10.1f}ms{cpu_med[k] / cpu_med[base]:>8.2f}×")
    print("(CPU time is the process's: with one thread it does not count time taken by other work; with more")
    print(" it also counts the threads' spin-waits)")
    print(f"payload bytes    float {len(float_payload)}, "
          + ", ".join(f"{k} {len(p)}" for k, p in int_payloads.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model, few repeats (CI smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--size", type=int, default=64, help="latent height and width for (b) (64 = 512² image)")
    parser.add_argument("--train-steps", type=int, default=300, help="training of the tiny codec for (a)")
    parser.add_argument("--qat-steps", type=int, default=200, help="quantization-aware fine-tuning steps in (a)")
    parser.add_argument("--test-images", type=int, default=32, help="toy images for (a)")
    parser.add_argument("--calibration-images", type=int, default=16, help="toy images to calibrate on")
    parser.add_argument("--skip-rate", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.repeats = min(args.repeats, 3)
    if not args.skip_rate:
        rate_part(args)
    if not args.skip_speed:
        speed_part(args)


if __name__ == "__main__":
    main()
