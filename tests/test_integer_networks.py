"""Integer networks: the same integers on every evaluation path, close to the float networks they replace."""

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slim_diffusers.coding import integer_networks
from slim_diffusers.coding.integer_networks import (
    ExactGaussianParameters,
    ExactSequential,
    IntegerConfig,
    IntegerRangeError,
    IntegerSequential,
    fake_quantize,
    int8_gemm_available,
    reconstruct,
    to_fixed_point,
)
from slim_diffusers.coding.latent_codec import scale_table
from slim_diffusers.testing import tiny_codec

REPO_ROOT = Path(__file__).resolve().parents[1]


def _inputs(name: str, batch: int, seed: int) -> torch.Tensor:
    """Inputs shaped and scaled like what each network sees in coding (tiny config: M=32, N=16, g=4)."""
    gen = torch.Generator().manual_seed(seed)
    if name == "h_s":  # ẑ = symbol + median
        return torch.round(torch.randn(batch, 16, 3, 4, generator=gen) * 4) + 0.37
    if name in ("cc", "ctx"):  # ŷ = symbol + exact mean
        symbols = torch.round(torch.randn(batch, 4, 6, 8, generator=gen) * 3)
        y = reconstruct(symbols, torch.randn(batch, 4, 6, 8, generator=gen).mul(4096).round() / 4096)
        if name == "ctx":
            anchor = (torch.arange(6).view(-1, 1) + torch.arange(8)) % 2 == 0
            y = y * anchor
        return y
    return torch.randn(batch, 80, 24, 1, generator=gen) * 2  # parameter aggregation: ctx, channel context, hyper


def _float_networks():
    _, dec = tiny_codec(seed=0)
    cb = dec.latent_codec.latent_codec["y1"]
    return dec, {
        "h_s": dec.hyper_codec.h_s,
        "cc": dec.latent_codec.channel_context["y1"],
        "ctx": cb.context_prediction,
        "ep": cb.entropy_parameters,
    }


def _convert(config=IntegerConfig()):
    dec, nets = _float_networks()
    head = ExactGaussianParameters.from_gaussian_conditional(
        dec.latent_codec.latent_codec["y1"].latent_codec["y"].gaussian_conditional
    )
    qat, exact = {}, {}
    for name, net in nets.items():
        kwargs = {"output_frac_bits": head.output_frac_bits(8)} if name == "ep" else {}
        calibration = [_inputs(name, 2, s) for s in range(3)]
        qat[name] = IntegerSequential.from_float(net, config, **kwargs).calibrate(calibration)
        exact[name] = qat[name].to_exact()
    return nets, qat, exact, head


@pytest.fixture(scope="module")
def converted():
    return _convert()


NAMES = ("h_s", "cc", "ctx", "ep")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.long().contiguous().numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", NAMES)
def test_same_integers_across_threads_batches_layouts_and_onednn(converted, name):
    exact = converted[2][name]
    x = _inputs(name, 3, seed=7)
    ref = exact(x, return_integers=True)
    torch.set_num_threads(1)
    assert torch.equal(exact(x, return_integers=True), ref)
    torch.set_num_threads(2)
    items = torch.cat([exact(x[i : i + 1], return_integers=True) for i in range(3)])
    assert torch.equal(items, ref)
    assert torch.equal(exact(x.contiguous(memory_format=torch.channels_last), return_integers=True), ref)
    with torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(exact(x, return_integers=True), ref)


WIDE = IntegerConfig(weight_bits=12, activation_bits=12)


@pytest.fixture(scope="module")
def converted_wide():
    return _convert(WIDE)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("widths", ["default", "12-bit"])
def test_int8_float64_and_int64_evaluation_agree(converted, converted_wide, name, widths):
    exact = (converted if widths == "default" else converted_wide)[2][name]
    x = _inputs(name, 2, seed=11)
    reference = exact(x, backend="int64", return_integers=True)
    assert torch.equal(exact(x, backend="float64", return_integers=True), reference)
    if int8_gemm_available():
        assert torch.equal(exact(x, backend="int8", return_integers=True), reference)
    values = exact(x)
    assert values.dtype == torch.float64
    assert torch.equal(values * torch.exp2(exact.output_frac_bits.double()).view(1, -1, 1, 1), reference.double())


@pytest.mark.skipif(not int8_gemm_available(), reason="needs oneDNN's int8 GEMM")
def test_an_inexact_int8_gemm_is_caught_and_replaced_by_float64(converted, monkeypatch):
    # a kernel that saturates like int16 pair sums without VNNI: the per-shape check must refuse it
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: int_mm(a, b).clamp(-(2**20), 2**20))
    monkeypatch.setattr(integer_networks, "_INT8_VERIFIED", {})
    exact = converted[2]["h_s"]
    x = _inputs("h_s", 2, seed=12)
    with pytest.warns(UserWarning, match="not exact on this machine"):
        got = exact(x, backend="int8", return_integers=True)
    assert torch.equal(got, exact(x, backend="int64", return_integers=True))
    # only the shapes whose sums can exceed the clamp are refused (and only they are computed in float64)
    assert False in integer_networks._INT8_VERIFIED.values()


def test_default_size_layers_are_exact_beyond_float32():
    # h_s of the default model (N=192, M=320) on a 4×4 hyper-latent: accumulators far beyond float32's
    # 2^24, multithreaded BLAS blocking; float64 must still agree with int64 to the last integer
    from compressai.models.utils import conv, deconv

    torch.manual_seed(0)
    h_s = torch.nn.Sequential(
        deconv(192, 192, 5, 2), torch.nn.ReLU(), deconv(192, 288, 5, 2), torch.nn.ReLU(), conv(288, 640, 3, 1)
    )
    z = torch.round(torch.randn(2, 192, 4, 4) * 3) + 0.25
    exact = IntegerSequential.from_float(h_s).calibrate([z]).to_exact()
    assert max(exact.check_bounds()) > 30
    ref = exact(z, backend="int64", return_integers=True)
    backends = ("float64", "int8") if int8_gemm_available() else ("float64",)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for backend in backends:
            assert torch.equal(exact(z, backend=backend, return_integers=True), ref)
            assert torch.equal(exact(z[1:], backend=backend, return_integers=True), ref[1:])
    torch.set_num_threads(2)


def test_checkerboard_context_at_positions_equals_full_convolution(converted):
    exact = converted[2]["ctx"]
    x = _inputs("ctx", 2, seed=3)
    non_anchor = (torch.arange(6).view(-1, 1) + torch.arange(8)) % 2 == 1
    full = exact(x, return_integers=True)[:, :, non_anchor]
    assert torch.equal(exact.forward_at(x, non_anchor, return_integers=True), full)
    assert torch.equal(exact.forward_at(x, non_anchor, backend="int64", return_integers=True), full)
    assert torch.equal(exact.forward_at(x, non_anchor, backend="float64", return_integers=True), full)
    anchors = exact(x, return_integers=True)[:, :, ~non_anchor]
    assert torch.equal(exact.forward_at(x, ~non_anchor, return_integers=True), anchors)


def test_fresh_process_computes_the_same_integers(converted):
    expected = {name: _digest(converted[2][name](_inputs(name, 2, seed=5), return_integers=True)) for name in NAMES}
    script = textwrap.dedent(
        """
        import torch
        from tests.test_integer_networks import NAMES, _convert, _digest, _inputs
        torch.set_num_threads(1)
        exact = _convert()[2]
        for name in NAMES:
            print(name, _digest(exact[name](_inputs(name, 2, seed=5), return_integers=True)))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    got = dict(line.split() for line in out.stdout.strip().splitlines())
    assert got == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_computes_the_same_integers(converted, name):
    exact = converted[2][name]
    x = _inputs(name, 2, seed=13)
    ref = exact(x, return_integers=True)
    on_gpu = exact.to("cuda")(x.cuda(), return_integers=True).cpu()
    exact.to("cpu")
    assert torch.equal(on_gpu, ref)


def test_state_dict_round_trip(converted):
    nets, _, exact, _ = converted
    for name in NAMES:
        fresh = ExactSequential.empty_like(nets[name])
        fresh.load_state_dict(exact[name].state_dict())
        x = _inputs(name, 1, seed=2)
        assert torch.equal(fresh(x), exact[name](x))
        assert all(not t.is_floating_point() for t in exact[name].state_dict().values())


def test_accumulator_bounds_are_checked():
    bounds = _convert()[2]["cc"].check_bounds()
    assert all(b < 53 for b in bounds)
    wide = IntegerConfig(weight_bits=24, activation_bits=24, input_bits=24, output_bits=24)
    with pytest.raises(IntegerRangeError, match="2\\^53"):
        _convert(wide)


def test_negative_shifts_multiply_exactly():
    # an output format finer than the accumulator forces a left shift; both backends must agree
    _, nets = _float_networks()
    net = IntegerSequential.from_float(nets["cc"], output_frac_bits=torch.full((8,), 40))
    net.calibrate([_inputs("cc", 2, 0)])
    exact = net.to_exact()
    assert (exact.layers[-1].shift < 0).any()
    x = _inputs("cc", 2, seed=1)
    assert torch.equal(exact(x, return_integers=True), exact(x, backend="int64", return_integers=True))


# ------------------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("widths, tolerance", [("default", 2e-2), ("12-bit", 3e-3)])
def test_conversion_stays_close_to_the_float_network(converted, converted_wide, name, widths, tolerance):
    nets, qat, exact, _ = converted if widths == "default" else converted_wide
    x = _inputs(name, 2, seed=21)
    with torch.no_grad():
        reference = nets[name](x.float()).double()
        fake = qat[name](x.float()).double()
    integer = exact[name](x)
    scale = reference.abs().max()
    rel = float((integer - reference).abs().max() / scale)
    print(f"{widths} {name}: max |integer - float| / max |float| = {rel:.2e}")
    assert rel < tolerance
    # the quantization-aware forward is the integer network, up to float32 rounding flipping a rounding
    assert float((fake - integer).abs().max() / scale) < tolerance / 4


def test_quantization_aware_training_has_gradients(converted):
    qat = converted[1]["cc"]
    x = _inputs("cc", 2, seed=4).float().requires_grad_()
    qat.zero_grad()
    qat(x).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in qat.parameters())
    assert x.grad.abs().sum() > 0


def test_float_checkpoint_loads_into_the_quantization_aware_twin():
    _, nets = _float_networks()
    qat = IntegerSequential.from_float(nets["h_s"])
    missing, unexpected = qat.load_state_dict(nets["h_s"].state_dict(), strict=False)
    assert not unexpected and all(k.endswith(("frac_bits", "_min", "_max", ".min", ".max")) for k in missing)


def test_fake_quantize_rounds_half_up_and_saturates():
    x = torch.tensor([-2.5, -0.5, 0.5, 2.5, 100.0, -100.0])
    q = fake_quantize(x, torch.tensor(0), torch.tensor(-8), torch.tensor(7))
    assert q.tolist() == [-2.0, 0.0, 1.0, 3.0, 7.0, -8.0]


# ---------------------------------------------------------------------------------- entropy parameters
def test_indexes_match_compressai_semantics():
    table = scale_table()
    head = ExactGaussianParameters(table, 0.11, mean_frac_bits=12, scale_frac_bits=12)
    gen = torch.Generator().manual_seed(0)
    q = torch.cat([torch.randint(-100, 2**21, (5000,), generator=gen), head.thresholds, head.thresholds - 1])
    scales = q.double() / 4096
    bounded = torch.maximum(scales, torch.tensor(0.11, dtype=torch.float32).double())
    reference = (table[:-1].double().view(1, -1) < bounded.view(-1, 1)).sum(1)  # exact comparisons in float64
    assert torch.equal(head.indexes(scales).long(), reference)


def test_gaussian_head_splits_means_and_scales(converted):
    _, _, exact, head = converted
    params = exact["ep"](_inputs("ep", 1, seed=9))
    indexes, means = head(params)
    assert indexes.dtype == torch.int32 and indexes.shape == means.shape == (1, 4, 24, 1)
    assert 0 <= int(indexes.min()) and int(indexes.max()) <= 63
    fixed = to_fixed_point(means, 12)
    assert torch.equal(fixed.double() / 4096, means)
    y_hat = reconstruct(torch.tensor([3, -7]), means.reshape(-1)[:2])
    assert torch.equal(y_hat - means.reshape(-1)[:2], torch.tensor([3.0, -7.0], dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ golden
def _golden_network() -> ExactSequential:
    """Integer weights, biases and shifts drawn from a seeded integer generator (no float anywhere)."""
    gen = torch.Generator().manual_seed(2019)
    first = integer_networks.ExactConv(4, 8, 3, padding=1)
    second = integer_networks.ExactConv(8, 6, 1)
    for layer, (low, high) in ((first, (0, 2**16 - 1)), (second, (-(2**23), 2**23 - 1))):
        layer.weight.copy_(torch.randint(-127, 128, layer.weight.shape, generator=gen))
        layer.bias.copy_(torch.randint(-5000, 5000, layer.bias.shape, generator=gen))
        layer.shift.copy_(torch.randint(-2, 9, layer.shift.shape, generator=gen))
        layer.out_min.fill_(low)
        layer.out_max.fill_(high)
    net = ExactSequential([first, second])
    net.input_frac_bits.fill_(3)
    net.input_min.fill_(-(2**15))
    net.input_max.fill_(2**15 - 1)
    return net


def test_integer_semantics_match_the_golden_digest():
    # rounding half up, shifts both ways, clamps, input quantization: a change to any of them changes which
    # symbols a payload decodes to, so it must show up here (and bump the format version)
    net = _golden_network()
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(-40_000, 40_000, (2, 4, 5, 7), generator=gen).double() / 9
    outputs = {backend: net(x, backend=backend, return_integers=True) for backend in ("float64", "int64")}
    if int8_gemm_available():
        outputs["int8"] = net(x, backend="int8", return_integers=True)
    digests = {backend: _digest(out) for backend, out in outputs.items()}
    assert set(digests.values()) == {GOLDEN_DIGEST}, digests


GOLDEN_DIGEST = "66df062d1f0b5796442985ad6d98606225e7476a543b30abc74667b963bce435"
