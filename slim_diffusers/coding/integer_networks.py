"""Integer networks for the entropy model: CDF indexes and means that are bit-identical on every device.

A range coder desynchronises when sender and receiver compute a different CDF index or mean for even one
symbol, and floating-point networks differ by an ulp between CPUs, GPUs, thread counts and kernel choices
(CompressAI issue #279, tensorflow/compression issue #44). Following Ballé, Johnston and Minnen,
*Integer networks for data compression with latent-variable models* (ICLR 2019), the networks that turn
the hyper-latent and the decoded symbols into entropy parameters compute here in integers:

- weights are integers of ``weight_bits`` bits (symmetric, one power-of-two scale per output channel);
- biases are integers at the accumulator's scale;
- activations are integers: a network input is ``clamp(⌊x·2^f + ½⌋, ±2^(input_bits-1))``, a hidden
  activation is the quantized ReLU ``clamp(⌊acc·2^-s + ½⌋, 0, 2^activation_bits - 1)``;
- rescaling is by powers of two only, rounding half up (``⌊a/2^s + ½⌋``, an arithmetic shift), so it is
  exact in any number format that holds the integers;
- the last layer writes fixed-point numbers (``value = int·2^-f`` per channel); for the Gaussian
  conditional, means at ``mean_frac_bits`` and scales at ``scale_frac_bits``, and the scale becomes a CDF
  index by comparing integers with thresholds derived once from the scale table
  (:class:`ExactGaussianParameters`).

Why the result is exact everywhere: every product and partial sum is an integer whose magnitude is at
most ``Σ|w|·max|x| + |b|`` per output channel, which :meth:`ExactSequential.check_bounds` computes from the
stored integer weights and asserts below 2^53. Three evaluations of the same integers:

- ``float64`` (any device): float64 holds every integer below 2^53 exactly, so a direct or GEMM
  convolution returns the exact integer whatever the summation order, blocking, thread count, batch size
  or memory layout; it is rounded to the nearest integer before rescaling, which also absorbs the error of
  transform-domain algorithms (Winograd, FFT) while that stays below ½;
- ``int8`` (CPU with oneDNN, the default there): weights and activations split into balanced base-256
  digits, one int8 GEMM with int32 accumulation per layer (``torch._int_mm``), digits recombined in
  float64. int32 sums of at most 2^17 digit products cannot overflow; that the kernel really accumulates
  in int32 (no int16 saturation, as on pre-VNNI x86) is checked once per GEMM shape with extreme and
  random operands, and a shape that fails (or runs far slower than float64, as without int8 kernels) is
  computed in float64 instead;
- ``int64`` (CPU): the reference.

Power-of-two scaling and ``floor`` are exact in IEEE arithmetic, so the requantized activations, and hence
the indexes and means, are the same integers on every IEEE-754 device and every backend; the tests check
the backends agree, across threads, batch splits, channels-last layouts, oneDNN off and a fresh process.

Two ways to obtain an integer network from a float one (``nn.Sequential`` of ``Conv2d``,
``ConvTranspose2d``, checkerboard-masked ``Conv2d`` and ``ReLU``):

- post-training conversion: :meth:`IntegerSequential.from_float`, :meth:`IntegerSequential.calibrate`
  on representative inputs, :meth:`IntegerSequential.to_exact`;
- quantization-aware fine-tuning: train the :class:`IntegerSequential` itself (a float path with fake
  quantization and straight-through gradients), then :meth:`~IntegerSequential.to_exact`.

How the exact entropy model uses them: :mod:`slim_diffusers.coding.latent_codec`. Rate of the conversion:
``benchmarks/exact_entropy_rate.py``; decoding time beside the float model: ``benchmarks/codec_speed.py``; rate
and speed at several widths, and quantization-aware fine-tuning: ``benchmarks/integer_entropy_probe.py``.
"""

import time
import warnings
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# every integer of magnitude below this is exact in float64
FLOAT64_EXACT_LIMIT = 2**53


class IntegerRangeError(ValueError):
    """An integer network whose accumulators could leave the exactly representable range."""


@dataclass(frozen=True)
class IntegerConfig:
    """Bit widths of an integer network.

    Args:
        weight_bits: signed weights, ``|w| ≤ 2^(weight_bits-1) - 1``.
        activation_bits: quantized-ReLU outputs, ``0 … 2^activation_bits - 1``.
        input_bits: signed network inputs.
        output_bits: signed fixed-point outputs of the last layer.
        headroom_bits: calibration leaves this many bits above the largest activation seen.

    The defaults (8-bit weights, 16-bit activations) make every weight one int8 digit and every
    activation two, so the ``int8`` backend runs about as fast as the float network, and post-training
    conversion costs about 0.25% of the rate. 8-bit activations halve the GEMM work for about 0.5% of the
    rate (quantization-aware fine-tuning recovers it); 12-bit weights cost <0.1% of the rate without
    fine-tuning, at about 1.2× the decoding time.
    """

    weight_bits: int = 8
    activation_bits: int = 16
    input_bits: int = 16
    output_bits: int = 24
    headroom_bits: int = 1

    def __post_init__(self):
        for name in ("weight_bits", "activation_bits", "input_bits", "output_bits"):
            bits = getattr(self, name)
            if not 2 <= bits <= 32:
                raise ValueError(f"{name} must be between 2 and 32, got {bits}")
        if not 0 <= self.headroom_bits <= 8:
            raise ValueError(f"headroom_bits must be between 0 and 8, got {self.headroom_bits}")


# ------------------------------------------------------------------------------------------ fixed point
def _exponent(x: Tensor) -> Tensor:
    """``E`` with ``x = m·2^E``, ``m ∈ [½, 1)`` (0 for ``x = 0``): exact, so every machine derives the same
    formats from the same float weights."""
    return torch.frexp(x.detach().double())[1].long()


def channel_weight_exponents(max_abs: Tensor, bits: int) -> Tensor:
    """Per-channel ``e`` such that ``round(w·2^e)`` fills ``bits`` signed bits:
    ``max|w|·2^e ∈ [2^(bits-2), 2^(bits-1))``."""
    e = (bits - 1) - _exponent(max_abs)
    # a (nearly) dead channel gets no finer grid than 2^-20 of a unit weight: bounds the bias integers
    return torch.where(max_abs > 0, e.clamp(max=bits - 1 + 20), torch.zeros_like(e))


def activation_frac_bits(max_abs: float, magnitude_bits: int, headroom_bits: int) -> int:
    """Fractional bits ``f`` with ``max_abs·2^f < 2^(magnitude_bits - headroom_bits)``."""
    if not max_abs > 0:
        return 0
    return magnitude_bits - headroom_bits - int(_exponent(torch.tensor(float(max_abs))))


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    return t.reshape((1, -1) + (1,) * (ndim - 2)) if t.ndim else t


def fake_quantize(x: Tensor, frac_bits: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``clamp(⌊x·2^f + ½⌋, low, high)·2^-f`` with straight-through gradients inside ``[low, high]·2^-f``.

    ``frac_bits`` is a scalar or one value per channel (dimension 1)."""
    scale = torch.exp2(_channel_view(frac_bits, x.ndim).to(x.dtype))
    low, high = low.to(x.dtype), high.to(x.dtype)
    clipped = torch.minimum(torch.maximum(x, low / scale), high / scale)
    q = torch.floor(x * scale + 0.5).clamp(low, high) / scale
    return clipped + (q - clipped).detach()


def _round_ste(x: Tensor, frac_bits: Tensor) -> Tensor:
    scale = torch.exp2(frac_bits.to(x.dtype))
    return x + (torch.round(x * scale) / scale - x).detach()


def to_fixed_point(x: Tensor, frac_bits: int) -> Tensor:
    """``x`` (exact dyadic values, e.g. the means of :class:`ExactGaussianParameters`) as int64 ``x·2^f``."""
    scaled = x.double() * 2.0**frac_bits
    if not torch.equal(scaled, scaled.round()):
        raise ValueError(f"values are not multiples of 2^-{frac_bits}")
    return scaled.long()


def reconstruct(symbols: Tensor, means: Tensor) -> Tensor:
    """``ŷ = symbol + μ`` in float64: exact for exact dyadic means (|ŷ|·2^mean_frac_bits < 2^53).

    Cast the result to float32 for the synthesis transform (a single, correctly rounded conversion, the
    same everywhere); feed the float64 tensor to the integer networks."""
    return symbols.double() + means.double()


# ---------------------------------------------------------------------------- quantization-aware layers
class _FakeQuantizedConv:
    """What the fake-quantized convolutions share: an input quantizer and per-channel weight exponents.

    Buffers ``input_frac_bits``, ``input_min`` and ``input_max`` hold this layer's input format (set by
    :meth:`IntegerSequential.calibrate`); the weight exponents follow the weights, as they will at
    conversion."""

    weight_out_dim = 0

    def _setup(self, config: IntegerConfig):
        self.config = config
        self.register_buffer("input_frac_bits", torch.zeros((), dtype=torch.long))
        self.register_buffer("input_min", torch.tensor(-(2 ** (config.input_bits - 1)), dtype=torch.long))
        self.register_buffer("input_max", torch.tensor(2 ** (config.input_bits - 1) - 1, dtype=torch.long))
        self.fake_quant = True
        self.observed_input_max = 0.0
        self.observing = False

    def effective_weight(self) -> Tensor:
        return self.weight

    def weight_exponents(self) -> Tensor:
        w = self.effective_weight().detach()
        dims = [d for d in range(w.ndim) if d != self.weight_out_dim]
        return channel_weight_exponents(w.abs().amax(dim=dims), self.config.weight_bits)

    def _weight_view(self, t: Tensor) -> Tensor:
        shape = [1] * self.weight.ndim
        shape[self.weight_out_dim] = -1
        return t.reshape(shape)

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observed_input_max = max(self.observed_input_max, float(x.detach().abs().max()))
        weight, bias = self.effective_weight(), self.bias
        if self.fake_quant:
            x = fake_quantize(x, self.input_frac_bits, self.input_min, self.input_max)
            e = self.weight_exponents()
            qmax = torch.tensor(2 ** (self.config.weight_bits - 1) - 1)
            scale = torch.exp2(self._weight_view(e).to(weight.dtype))
            weight = fake_quantize(weight * scale, torch.zeros(()), -qmax, qmax) / scale
            if bias is not None:
                bias = _round_ste(bias, e + self.input_frac_bits)
        return self._conv(x, weight, bias)


class FakeQuantizedConv2d(_FakeQuantizedConv, nn.Conv2d):
    """``nn.Conv2d`` evaluated as its integer counterpart will be (fake quantization, straight-through)."""

    def __init__(self, *args, config: IntegerConfig = IntegerConfig(), **kwargs):
        super().__init__(*args, **kwargs)
        self._setup(config)

    def _conv(self, x, weight, bias):
        return self._conv_forward(x, weight, bias)


class FakeQuantizedMaskedConv2d(FakeQuantizedConv2d):
    """A masked convolution (``weight * mask``, e.g. CompressAI's checkerboard context), fake-quantized."""

    def __init__(self, *args, mask: Tensor, config: IntegerConfig = IntegerConfig(), **kwargs):
        super().__init__(*args, config=config, **kwargs)
        self.register_buffer("mask", mask.detach().clone().float())

    def effective_weight(self) -> Tensor:
        return self.weight * self.mask


class FakeQuantizedConvTranspose2d(_FakeQuantizedConv, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` evaluated as its integer counterpart will be."""

    weight_out_dim = 1

    def __init__(self, *args, config: IntegerConfig = IntegerConfig(), **kwargs):
        super().__init__(*args, **kwargs)
        self._setup(config)

    def _conv(self, x, weight, bias):
        return F.conv_transpose2d(
            x, weight, bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )


class OutputQuantizer(nn.Module):
    """The fixed-point format of a network's output: ``clamp(⌊x·2^f + ½⌋, ±2^(output_bits-1))·2^-f``, ``f``
    per channel. ``fixed=True`` keeps ``frac_bits`` through calibration (the Gaussian parameters)."""

    def __init__(self, channels: int, config: IntegerConfig = IntegerConfig(), frac_bits: Optional[Tensor] = None):
        super().__init__()
        self.fixed = frac_bits is not None
        if frac_bits is None:
            frac_bits = torch.zeros(channels, dtype=torch.long)
        if frac_bits.shape != (channels,):
            raise ValueError(f"output frac_bits must have shape ({channels},), got {tuple(frac_bits.shape)}")
        self.register_buffer("frac_bits", frac_bits.detach().clone().long())
        self.register_buffer("min", torch.tensor(-(2 ** (config.output_bits - 1)), dtype=torch.long))
        self.register_buffer("max", torch.tensor(2 ** (config.output_bits - 1) - 1, dtype=torch.long))
        self.fake_quant = True
        self.observing = False
        self.observed_max = 0.0

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observed_max = max(self.observed_max, float(x.detach().abs().max()))
        if not self.fake_quant:
            return x
        return fake_quantize(x, self.frac_bits, self.min, self.max)


_CONVS = (FakeQuantizedConv2d, FakeQuantizedConvTranspose2d)


class IntegerSequential(nn.Sequential):
    """Quantization-aware twin of a float ``nn.Sequential``: conv, (ReLU, conv)*, then an output quantizer.

    Parameters keep the float network's names (``"0.weight"``, ``"2.bias"``, …), so a float checkpoint
    loads into it with ``load_state_dict(..., strict=False)``. In training it is a drop-in replacement
    whose forward is the integer network's up to float rounding, with straight-through gradients.
    """

    @classmethod
    def from_float(
        cls, module: nn.Module, config: IntegerConfig = IntegerConfig(), output_frac_bits: Optional[Tensor] = None
    ) -> "IntegerSequential":
        """Copy ``module`` (an ``nn.Sequential`` of convolutions and ReLUs, or one convolution).

        ``output_frac_bits`` fixes the output format per channel (see
        :meth:`ExactGaussianParameters.output_frac_bits`); otherwise calibration chooses it."""
        modules = list(module) if isinstance(module, nn.Sequential) else [module]
        layers: List[nn.Module] = []
        for i, m in enumerate(modules):
            expect_conv = i % 2 == 0
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and expect_conv:
                if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros":
                    raise ValueError(f"layer {i}: only groups=1, dilation=1, zero padding are supported")
                kwargs = dict(stride=m.stride, padding=m.padding, bias=m.bias is not None, config=config)
                if isinstance(m, nn.ConvTranspose2d):
                    q = FakeQuantizedConvTranspose2d(
                        m.in_channels, m.out_channels, m.kernel_size, output_padding=m.output_padding, **kwargs
                    )
                elif getattr(m, "mask", None) is not None:
                    q = FakeQuantizedMaskedConv2d(m.in_channels, m.out_channels, m.kernel_size, mask=m.mask, **kwargs)
                else:
                    q = FakeQuantizedConv2d(m.in_channels, m.out_channels, m.kernel_size, **kwargs)
                q.load_state_dict({k: v for k, v in m.state_dict().items() if k in ("weight", "bias")}, strict=False)
                q.to(m.weight.device)
            elif isinstance(m, nn.ReLU) and not expect_conv:
                q = nn.ReLU()
            else:
                raise ValueError(
                    f"layer {i} is {type(m).__name__}: integer networks take conv, (ReLU, conv)* with Conv2d, "
                    "ConvTranspose2d or a masked Conv2d"
                )
            layers.append(q)
        if not isinstance(layers[-1], _CONVS):
            raise ValueError("the network must end with a convolution")
        if output_frac_bits is not None:
            output_frac_bits = output_frac_bits.to(layers[-1].weight.device)
        out = OutputQuantizer(layers[-1].out_channels, config, output_frac_bits).to(layers[-1].weight.device)
        net = cls(*layers, out)
        net.config = config
        for conv in net.convs()[1:]:  # after a ReLU: unsigned activations
            conv.input_min.fill_(0)
            conv.input_max.fill_(2**config.activation_bits - 1)
        return net

    def convs(self) -> List[_FakeQuantizedConv]:
        return [m for m in self if isinstance(m, _CONVS)]

    @property
    def output_quantizer(self) -> OutputQuantizer:
        return self[-1]

    def set_fake_quant(self, enabled: bool) -> "IntegerSequential":
        """``False`` evaluates the float network (what calibration observes)."""
        for m in self:
            if hasattr(m, "fake_quant"):
                m.fake_quant = enabled
        return self

    @torch.no_grad()
    def calibrate(self, inputs: Iterable[Tensor]) -> "IntegerSequential":
        """Choose the activation and output formats from the float network's ranges on ``inputs``.

        Each format is a power of two that fits the largest magnitude seen with ``headroom_bits`` to spare;
        larger values saturate (deterministically) at inference."""
        cfg = self.config
        observers = [m for m in self if hasattr(m, "observing")]
        for m in observers:
            m.observing, m.fake_quant = True, False
        for conv in self.convs():
            conv.observed_input_max = 0.0
        self.output_quantizer.observed_max = 0.0
        dtype = self.convs()[0].weight.dtype
        try:
            for x in inputs:
                self(x.to(dtype))
        finally:
            for m in observers:
                m.observing, m.fake_quant = False, True
        for i, conv in enumerate(self.convs()):
            bits = cfg.input_bits - 1 if i == 0 else cfg.activation_bits
            conv.input_frac_bits.fill_(activation_frac_bits(conv.observed_input_max, bits, cfg.headroom_bits))
        out = self.output_quantizer
        if not out.fixed:
            out.frac_bits.fill_(activation_frac_bits(out.observed_max, cfg.output_bits - 1, cfg.headroom_bits))
        return self

    @torch.no_grad()
    def to_exact(self) -> "ExactSequential":
        """The integer network: integer weights and biases, shifts, clamps; bounds checked."""
        convs = self.convs()
        layers = []
        for i, conv in enumerate(convs):
            e = conv.weight_exponents()
            qmax = 2 ** (conv.config.weight_bits - 1) - 1
            w = conv.effective_weight().detach().double()
            # ⌊x + ½⌋ as in the fake quantization (round(), half to even, could differ on exact ties)
            w_int = torch.floor(w * torch.exp2(conv._weight_view(e).double()) + 0.5).clamp(-qmax, qmax)
            acc_frac = e + conv.input_frac_bits
            if conv.bias is not None:
                b_int = torch.round(conv.bias.detach().double() * torch.exp2(acc_frac.double()))
            else:
                b_int = torch.zeros(conv.out_channels, dtype=torch.float64)
            if i + 1 < len(convs):
                nxt = convs[i + 1]
                out_frac = nxt.input_frac_bits.expand(conv.out_channels)
                out_min, out_max = nxt.input_min, nxt.input_max
            else:
                out = self.output_quantizer
                out_frac, out_min, out_max = out.frac_bits, out.min, out.max
            transposed = isinstance(conv, nn.ConvTranspose2d)
            layer = ExactConv(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                output_padding=conv.output_padding if transposed else 0, transposed=transposed,
            ).to(conv.weight.device)
            layer.weight.copy_(w_int.long())
            layer.bias.copy_(b_int.long())
            layer.shift.copy_(acc_frac - out_frac)
            layer.out_min.copy_(out_min)
            layer.out_max.copy_(out_max)
            layers.append(layer)
        first = convs[0]
        exact = ExactSequential(layers).to(first.weight.device)
        exact.input_frac_bits.copy_(first.input_frac_bits)
        exact.input_min.copy_(first.input_min)
        exact.input_max.copy_(first.input_max)
        exact.output_frac_bits.copy_(self.output_quantizer.frac_bits)
        exact.check_bounds()
        return exact


# ----------------------------------------------------------------------------------- int8 GEMM backend
# Any integer splits into balanced base-256 digits in [-128, 127]; a product of digit matrices accumulated
# in int32 is exact while K·128² < 2^31 (K < 2^17). oneDNN's int8 GEMM (``torch._int_mm`` on CPU) runs
# 4-10× faster than float32 GEMM, so even weights and activations of two digits each beat float32.
# Its exactness is a property of the kernel (int32 accumulation without int16 saturation, as with VNNI or
# AMX), not of the format: it is verified once per GEMM shape with extreme and random operands, and a
# shape that fails falls back to float64.
_INT8_VERIFIED: Dict[tuple, bool] = {}


def int8_gemm_available(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether ``backend="int8"`` can run on ``device``: CPU, oneDNN enabled, ``torch._int_mm`` present."""
    return (
        torch.device(device).type == "cpu"
        and hasattr(torch, "_int_mm")
        and torch.backends.mkldnn.is_available()
        and torch._C._get_mkldnn_enabled()
    )


def _digit_plan(low: int, high: int) -> Tuple[int, int]:
    """``(offset, n)``: ``x - offset`` has ``n`` balanced base-256 digits for every ``x`` in ``[low, high]``."""
    n = 1
    while True:
        span = (256**n - 1) // 255  # n digits reach [-128·span, 127·span]
        first, last = int(high) - 127 * span, int(low) + 128 * span  # admissible offsets
        if first <= last:
            return min(max((int(low) + int(high) + 1) // 2, first), last), n
        n += 1


def _weight_digits(w: Tensor) -> int:
    """Digits of symmetric integer weights without an offset."""
    n, top = 1, int(w.abs().max()) if w.numel() else 0
    while top > 127 * (256**n - 1) // 255:
        n += 1
    return n


def _balanced_digits(v: Tensor, n: int) -> Tensor:
    """``v = Σ_j d_j·256^j``, ``d_j ∈ [-128, 127]``, for integer-valued ``v`` below 2^31; stacked as int8."""
    v = v.to(torch.int32) if n > 1 else v
    digits = []
    for _ in range(n - 1):
        d = ((v + 128) & 255) - 128
        digits.append(d)
        v = (v - d) >> 8  # exact: v - d is a multiple of 256
    digits.append(v)
    return torch.stack(digits).to(torch.int8)


def _int8_gemm_is_exact(m: int, k: int, n: int) -> bool:
    """Whether the int8 GEMM of this shape is exact here (and not grossly slower than float64, as a
    kernel without int8 support would be). Which backend runs a shape never changes the integers."""
    key = (m, k, n, torch.get_num_threads())
    ok = _INT8_VERIFIED.get(key)
    if ok is None:
        exact = True
        for va, vb in ((127, 127), (-128, 127), (127, -128), (-128, -128)):
            a = torch.full((m, k), va, dtype=torch.int8)
            got = torch._int_mm(a, torch.full((k, n), vb, dtype=torch.int8))
            exact &= bool((got == k * va * vb).all())
        gen = torch.Generator().manual_seed(m * 1_000_003 + k * 1009 + n)
        a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
        b = torch.randint(-128, 128, (k, n), generator=gen, dtype=torch.int8)
        t0 = time.perf_counter()
        got = torch._int_mm(a, b)
        t1 = time.perf_counter()
        reference = a.double() @ b.double()  # float64: exact below 2^53
        t2 = time.perf_counter()
        exact &= torch.equal(got.double(), reference)
        ok = exact and (t1 - t0) <= 2 * (t2 - t1) + 1e-4
        _INT8_VERIFIED[key] = ok
        if not exact:
            warnings.warn(f"int8 GEMM of shape {m}×{k}×{n} is not exact on this machine; using float64 for it")
    return ok


def _int8_product(a_digits: Tensor, b_digits: Tensor, nw: int, nx: int, batch: int) -> Optional[Tensor]:
    """``Σ_ij 256^(i+j)·A_i·B_j`` as float64 ``(batch, M, L)``.

    ``a_digits``: ``(nw·M, K)`` int8, weight digits stacked along rows; ``b_digits``: ``(K, nx·batch·L)``
    int8, activation digits and batch items stacked along columns. ``None`` when the GEMM is not exact."""
    (mm, k), nn_ = a_digits.shape, b_digits.shape[1]
    if k >= 2**17 or not _int8_gemm_is_exact(mm, k, nn_):
        return None
    p = torch._int_mm(a_digits, b_digits).double().view(nw, mm // nw, nx, batch, -1)
    acc = None
    for i in range(nw):
        for j in range(nx):
            term = p[i, :, j] if i + j == 0 else p[i, :, j] * float(256 ** (i + j))
            acc = term if acc is None else acc + term
    return acc.transpose(0, 1)  # (batch, M, L)


# ----------------------------------------------------------------------------------------- exact layers
def _pair(v) -> Tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


class ExactConv(nn.Module):
    """One integer layer: ``y = clamp(⌊(W∗x + b)·2^-s + ½⌋, out_min, out_max)`` with ``s`` per channel.

    Buffers (all integer): ``weight`` (int32, ``nn.Conv2d``/``nn.ConvTranspose2d`` layout), ``bias`` and
    ``shift`` (int64 per output channel; a negative shift multiplies), ``out_min``/``out_max``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, transposed=False):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.output_padding, self.transposed = _pair(output_padding), bool(transposed)
        shape = (in_channels, out_channels) if transposed else (out_channels, in_channels)
        self.register_buffer("weight", torch.zeros(shape + self.kernel_size, dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(out_channels, dtype=torch.long))
        self.register_buffer("shift", torch.zeros(out_channels, dtype=torch.long))
        self.register_buffer("out_min", torch.zeros((), dtype=torch.long))
        self.register_buffer("out_max", torch.zeros((), dtype=torch.long))
        self._cache = {}

    def extra_repr(self) -> str:
        kind = "transposed, " if self.transposed else ""
        return f"{self.in_channels}, {self.out_channels}, {kind}kernel_size={self.kernel_size}, stride={self.stride}"

    @property
    def pointwise(self) -> bool:
        return not self.transposed and self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def _derived(self, dtype: torch.dtype, device: torch.device):
        """Weights and rescaling constants in the evaluation dtype, cached until a buffer changes."""
        bufs = (self.weight, self.bias, self.shift, self.out_min, self.out_max)
        key = (dtype, device, tuple((b.data_ptr(), b._version) for b in bufs))
        hit = self._cache.get((dtype, device))
        if hit is not None and hit[0] == key:
            return hit[1]
        s = self.shift.to(device)
        w = self.weight.to(device=device, dtype=dtype)
        d = dict(
            weight=w,
            weight2d=w.reshape(self.out_channels, -1) if self.pointwise else None,
            bias=self.bias.to(device=device, dtype=dtype).view(1, -1, 1),
            low=int(self.out_min),
            high=int(self.out_max),
        )
        if dtype == torch.float64:
            # (acc + b)·2^-s + ½ = acc·2^-s + (b·2^-s + ½): every term a multiple of 2^-s below 2^53 of them
            d["scale"] = torch.exp2(-s.double()).view(1, -1, 1)  # exact powers of two
            d["offset"] = (self.bias.to(device).double() * d["scale"].view(-1) + (s > 0).double() * 0.5).view(1, -1, 1)
        else:
            d["left"] = (-s).clamp(min=0).view(1, -1, 1)
            d["right"] = s.clamp(min=0).view(1, -1, 1)
            half = torch.where(s > 0, torch.ones_like(s) << (s - 1).clamp(min=0), torch.zeros_like(s))
            d["half"] = half.view(1, -1, 1)
        self._cache[(dtype, device)] = (key, d)
        return d

    def accumulate(self, x: Tensor) -> Tensor:
        """``W∗x`` (without bias) as an exact integer tensor in ``x``'s dtype (float64 or int64)."""
        d = self._derived(x.dtype, x.device)
        if self.pointwise:
            b, _, h, w = x.shape
            acc = torch.matmul(d["weight2d"], x.reshape(b, self.in_channels, h * w)).reshape(b, self.out_channels, h, w)
        elif self.transposed:
            acc = F.conv_transpose2d(x, d["weight"], None, self.stride, self.padding, self.output_padding)
        else:
            acc = F.conv2d(x, d["weight"], None, self.stride, self.padding)
        if acc.is_floating_point():
            acc = acc.round()  # identity for exact kernels; repairs transform-domain kernels' sub-½ error
        return acc

    def _int8_weights(self):
        """Weight digits as GEMM operands (cached): rows ``(digit, out)`` for a convolution, ``(digit, out,
        tap)`` for a transposed one, and each row's weight sum (for the input offset)."""
        d = self._derived(torch.float64, self.weight.device)
        if "int8" not in d:
            w = self.weight.double()
            nw = _weight_digits(w)
            if self.transposed:  # (Cin, Cout, kh, kw) → rows (Cout·kh·kw), columns Cin
                mat = w.permute(1, 2, 3, 0).reshape(-1, self.in_channels)
            else:
                mat = w.reshape(self.out_channels, -1)
            d["int8"] = (_balanced_digits(mat, nw).reshape(-1, mat.shape[1]).contiguous(), nw, mat.sum(1))
        return d["int8"]

    def _offset_with_input_offset(self, offset: int) -> Tensor:
        """The float64 requantization offset when the GEMM saw ``x - offset``: ``W∗x = W∗(x - c) + c·ΣW``
        folds into the bias (exact: integers far below 2^53, times a power of two)."""
        d = self._derived(torch.float64, self.weight.device)
        key = ("offset", offset)
        if key not in d:
            d[key] = d["offset"] + (offset * self._int8_weights()[2] * d["scale"].view(-1)).view(1, -1, 1)
        return d[key]

    def forward_int8(self, x: Tensor, low: int, high: int) -> Optional[Tensor]:
        """The layer with int8 digit GEMMs, for float64 ``x`` with values in ``[low, high]``; ``None`` where
        that is not possible or not verified exact (the caller then uses float64)."""
        if x.dtype != torch.float64 or not int8_gemm_available(x.device) or max(-low, high) >= 2**30:
            return None
        a, nw, row_sums = self._int8_weights()
        offset, nx = _digit_plan(low, high)
        b, c = x.shape[:2]
        if self.transposed:
            h, w = x.shape[-2:]
            digits = _balanced_digits(x - offset, nx)  # (nx, B, C, H, W)
            acc = _int8_product(a, digits.permute(2, 0, 1, 3, 4).reshape(c, -1), nw, nx, b)
            if acc is None:
                return None
            acc = acc + offset * row_sums.view(1, -1, 1)
            (kh, kw), (sh, sw), (ph, pw), (oh, ow) = self.kernel_size, self.stride, self.padding, self.output_padding
            size = ((h - 1) * sh - 2 * ph + kh + oh, (w - 1) * sw - 2 * pw + kw + ow)
            return self.requantize(F.fold(acc, size, self.kernel_size, stride=self.stride, padding=self.padding))
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        hp, wp = xp.shape[-2:]
        ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        digits = _balanced_digits(xp - offset, nx)  # padding becomes -offset, as it should
        digits = digits.reshape(nx * b, c, hp, wp).transpose(0, 1)  # (C, nx·B, Hp, Wp)
        if self.pointwise:
            cols = digits.reshape(c, -1)
        else:  # im2col: (C, nx·B, Ho, Wo, kh, kw) view → rows (C, kh, kw), columns (nx·B, Ho, Wo)
            cols = digits.unfold(2, kh, sh).unfold(3, kw, sw).permute(0, 4, 5, 1, 2, 3).reshape(c * kh * kw, -1)
        acc = _int8_product(a, cols.contiguous(), nw, nx, b)
        if acc is None:
            return None
        return self.requantize(acc, self._offset_with_input_offset(offset)).view(b, self.out_channels, ho, wo)

    def requantize(self, acc: Tensor, offset: Optional[Tensor] = None) -> Tensor:
        """Add the bias, rescale by ``2^-shift`` rounding half up, clamp. ``acc``: ``(B, C, …)``.

        ``offset`` (float64 only) replaces the folded bias-and-rounding term (see ``forward_int8``)."""
        d = self._derived(acc.dtype, acc.device)
        shape = acc.shape
        acc = acc.reshape(shape[0], shape[1], -1)
        if acc.is_floating_point():
            out = torch.addcmul(d["offset"] if offset is None else offset, acc, d["scale"]).floor_()
        else:
            out = (((acc + d["bias"]) << d["left"]) + d["half"]) >> d["right"]
        return out.clamp_(d["low"], d["high"]).reshape(shape)

    def forward(self, x: Tensor, backend: str = "float64", in_range: Optional[Tuple[int, int]] = None) -> Tensor:
        if backend == "int8":
            out = self.forward_int8(x, *in_range)
            if out is not None:
                return out
        return self.requantize(self.accumulate(x))

    def accumulator_bound(self, input_max_abs: int) -> int:
        """Largest magnitude any partial sum, and the rescaling, can reach for inputs ``|x| ≤ input_max_abs``."""
        w = self.weight.long().abs()
        per_out = w.sum(dim=(0, 2, 3)) if self.transposed else w.sum(dim=(1, 2, 3))
        worst = 0
        for s_w, b, s in zip(per_out.tolist(), self.bias.abs().tolist(), self.shift.tolist()):
            acc = s_w * int(input_max_abs) + b
            worst = max(worst, acc * 2 ** max(-s, 0), acc + (2 ** (s - 1) if s > 0 else 0))
        return worst


class ExactSequential(nn.Module):
    """An integer network: input quantizer, :class:`ExactConv` layers, fixed-point output.

    ``forward`` takes real values (any float dtype; what matters is that both sides pass bit-identical
    values, e.g. ``ŷ`` from :func:`reconstruct`, or float32 ``ẑ``) and returns exact dyadic values in
    float64 (``int·2^-output_frac_bits``); ``return_integers=True`` returns the integers themselves.
    """

    def __init__(self, layers: Sequence[ExactConv]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.register_buffer("input_frac_bits", torch.zeros((), dtype=torch.long))
        self.register_buffer("input_min", torch.zeros((), dtype=torch.long))
        self.register_buffer("input_max", torch.zeros((), dtype=torch.long))
        self.register_buffer("output_frac_bits", torch.zeros(layers[-1].out_channels, dtype=torch.long))
        self._checked = None

    @classmethod
    def empty_like(cls, module: nn.Module) -> "ExactSequential":
        """An all-zero integer network shaped like float ``module``, to ``load_state_dict`` into."""
        modules = module if isinstance(module, nn.Sequential) else [module]
        convs = [m for m in modules if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        layers = [
            ExactConv(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                      output_padding=getattr(m, "output_padding", 0), transposed=isinstance(m, nn.ConvTranspose2d))
            for m in convs
        ]
        return cls(layers)

    def check_bounds(self) -> List[float]:
        """log2 of each layer's worst accumulator; raises :class:`IntegerRangeError` at 2^53 or above."""
        bound_bits = []
        in_max = max(abs(int(self.input_min)), abs(int(self.input_max)))
        for i, layer in enumerate(self.layers):
            bound = layer.accumulator_bound(in_max)
            if bound >= FLOAT64_EXACT_LIMIT:
                raise IntegerRangeError(
                    f"layer {i} of the integer network can accumulate |{bound}| ≥ 2^53, which float64 does not "
                    "hold exactly; convert with fewer weight, activation or input bits"
                )
            bound_bits.append(float(torch.tensor(float(max(bound, 1))).log2()))
            in_max = max(abs(int(layer.out_min)), abs(int(layer.out_max)))
        return bound_bits

    def _ensure_checked(self):
        key = tuple((b.data_ptr(), b._version) for b in self.buffers())
        if self._checked != key:
            self.check_bounds()
            self._checked = key

    def quantize_input(self, x: Tensor, backend: str = "float64") -> Tensor:
        """``clamp(⌊x·2^f + ½⌋, input_min, input_max)``: one exact operation per element."""
        if x.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32):
            raise TypeError(f"unsupported input dtype {x.dtype}")
        q = torch.floor(x.double() * 2.0 ** int(self.input_frac_bits) + 0.5)
        q = q.clamp_(int(self.input_min), int(self.input_max))
        return q.long() if backend == "int64" else q  # int8 computes on float64 activations

    def _output(self, q: Tensor, return_integers: bool) -> Tensor:
        if return_integers:
            return q.long()
        scale = torch.exp2(-self.output_frac_bits.to(q.device).double())
        return q.double() * _channel_view(scale, q.ndim) + 0.0  # + 0.0 turns -0.0 into 0.0

    def _backend(self, backend: str, device: torch.device) -> str:
        if backend == "auto":
            return "int8" if int8_gemm_available(device) else "float64"
        if backend not in ("float64", "int64", "int8"):
            raise ValueError(f"backend must be 'auto', 'int8', 'float64' or 'int64', got {backend!r}")
        return backend

    def _input_ranges(self) -> List[Tuple[int, int]]:
        ranges = [(int(self.input_min), int(self.input_max))]
        ranges += [(int(layer.out_min), int(layer.out_max)) for layer in self.layers[:-1]]
        return ranges

    def forward(self, x: Tensor, *, backend: str = "auto", return_integers: bool = False) -> Tensor:
        """Evaluate exactly; every backend gives the same integers.

        ``backend``: ``"auto"`` (``"int8"`` where available, else ``"float64"``), ``"int8"`` (CPU: int8
        digit GEMMs with int32 accumulation, verified per shape), ``"float64"`` (any device) or ``"int64"``
        (reference, CPU)."""
        backend = self._backend(backend, x.device)
        self._ensure_checked()
        q = self.quantize_input(x, backend)
        for layer, in_range in zip(self.layers, self._input_ranges()):
            q = layer(q, backend, in_range)
        return self._output(q, return_integers)

    def forward_at(self, x: Tensor, mask: Tensor, *, backend: str = "auto", return_integers: bool = False) -> Tensor:
        """Outputs at the positions where ``mask`` (``H × W``, bool) is true, as ``(B, C, P)``.

        For one stride-1 convolution (the checkerboard context): only the taps with a non-zero weight and
        only the requested positions are computed, e.g. 12 of 25 taps at half of the positions. Exact
        integers, so the same as ``forward(x)[:, :, mask]``."""
        backend = self._backend(backend, x.device)
        if len(self.layers) != 1:
            q = self.forward(x, backend=backend, return_integers=True)[:, :, mask]
            return self._output(q, return_integers)
        layer = self.layers[0]
        if layer.transposed or layer.stride != (1, 1):
            raise ValueError("forward_at needs a stride-1 convolution")
        self._ensure_checked()
        q = self.quantize_input(x, backend)
        (ph, pw), low, high = layer.padding, int(self.input_min), int(self.input_max)
        d = layer._derived(torch.float64 if backend == "int8" else q.dtype, q.device)
        if "taps" not in d:  # the taps some weight uses, and their weights as one matrix
            taps = (layer.weight != 0).any(dim=1).any(dim=0).nonzero().tolist() or [[0, 0]]
            w = torch.stack([d["weight"][:, :, i, j] for i, j in taps], dim=2)  # (Cout, C, T)
            d["taps"], d["tap_weight"] = torch.tensor(taps), w.reshape(layer.out_channels, -1)
        b, c, h, w = q.shape
        t = len(d["taps"])
        taps = d["taps"].tolist()
        if backend == "int8" and int8_gemm_available(q.device) and max(-low, high) < 2**30:
            # every position with the used taps, then the requested outputs: gathers cost more than
            # twice the (cheap) int8 GEMM
            if "int8_taps" not in d:
                nw = _weight_digits(d["tap_weight"])
                digits = _balanced_digits(d["tap_weight"], nw).reshape(-1, d["tap_weight"].shape[1])
                d["int8_taps"] = (digits, nw)
            a, nw = d["int8_taps"]
            offset, nx = _digit_plan(low, high)
            digits = _balanced_digits(F.pad(q, (pw, pw, ph, ph)) - offset, nx)  # (nx, B, C, Hp, Wp)
            digits = digits.reshape(nx * b, c, h + 2 * ph, w + 2 * pw).transpose(0, 1)  # (C, nx·B, Hp, Wp)
            cols = torch.stack([digits[:, :, i : i + h, j : j + w] for i, j in taps], dim=1).reshape(c * t, -1)
            acc = _int8_product(a, cols, nw, nx, b)
            if acc is not None:
                acc = acc[:, :, mask.to(q.device).reshape(-1)]
                out = layer.requantize(acc, layer._offset_with_input_offset(offset))
                return self._output(out, return_integers)
            q = q.double()
        wp = w + 2 * pw
        rows, cols = mask.to(q.device).nonzero(as_tuple=True)
        ti, tj = d["taps"][:, 0:1].to(q.device), d["taps"][:, 1:2].to(q.device)
        index = ((rows + ti) * wp + cols + tj).reshape(-1)  # (tap, position)-major into the padded map
        padded = F.pad(q, (pw, pw, ph, ph)).reshape(b, c, -1).index_select(2, index)  # (B, C, T·P)
        acc = torch.matmul(d["tap_weight"].to(q.dtype), padded.view(b, c * t, rows.numel()))
        if acc.is_floating_point():
            acc = acc.round()
        return self._output(layer.requantize(acc), return_integers)


# ------------------------------------------------------------------------------------ entropy parameters
class ExactGaussianParameters(nn.Module):
    """Means and CDF indexes from an integer entropy-parameter network, by integer comparisons only.

    The network's last layer writes means with ``mean_frac_bits`` and scales with ``scale_frac_bits``
    fractional bits (build it with ``output_frac_bits=head.output_frac_bits(channels)``). The index is
    CompressAI's: the number of scale-table entries (all but the last) strictly below
    ``max(scale, scale_bound)``. For ``scale = q·2^-f`` this is the number of thresholds
    ``T_j = ⌊t_j·2^f⌋ + 1`` with ``q ≥ T_j``, raised to the count of entries below the bound. The
    thresholds are computed once, exactly, from the stored float32 table.
    """

    def __init__(
        self,
        scale_table: Tensor,
        scale_bound: Union[float, Tensor],
        mean_frac_bits: int = 12,
        scale_frac_bits: int = 12,
        chunks: Tuple[str, str] = ("means", "scales"),
    ):
        super().__init__()
        if tuple(chunks) not in (("means", "scales"), ("scales", "means")):
            raise ValueError(f"chunks must be ('means', 'scales') or ('scales', 'means'), got {chunks}")
        self.chunks = tuple(chunks)
        self.mean_frac_bits, self.scale_frac_bits = int(mean_frac_bits), int(scale_frac_bits)
        table = scale_table.detach().to("cpu", torch.float32).double()  # float32 values, exact in float64
        bound = torch.as_tensor(scale_bound).detach().to("cpu", torch.float32).double().reshape(())
        thresholds = torch.floor(table[:-1] * 2.0**self.scale_frac_bits).long() + 1
        self.register_buffer("thresholds", thresholds)
        self.register_buffer("min_index", (table[:-1] < bound).sum().reshape(()))

    @classmethod
    def from_gaussian_conditional(cls, gaussian_conditional, **kwargs) -> "ExactGaussianParameters":
        """From a CompressAI ``GaussianConditional`` whose scale table is built (``update_scale_table``)."""
        gc = gaussian_conditional
        if gc.scale_table.numel() < 2:
            raise ValueError("the GaussianConditional has no scale table: call update_scale_table() first")
        return cls(gc.scale_table, gc.lower_bound_scale.bound, **kwargs)

    def output_frac_bits(self, channels: int) -> Tensor:
        """The per-channel output format for an entropy-parameter network with ``channels`` outputs."""
        half = channels // 2
        mean, scale = torch.full((half,), self.mean_frac_bits), torch.full((half,), self.scale_frac_bits)
        return torch.cat([mean, scale] if self.chunks == ("means", "scales") else [scale, mean]).long()

    def indexes(self, scales: Tensor) -> Tensor:
        """CDF indexes (int32) of exact fixed-point ``scales``."""
        q = (scales.double() * 2.0**self.scale_frac_bits).long()
        t = self.thresholds.to(q.device)
        idx = torch.searchsorted(t, q.reshape(-1).contiguous(), right=True).reshape(q.shape)
        return idx.clamp_(min=int(self.min_index)).int()

    def forward(self, params: Tensor) -> Tuple[Tensor, Tensor]:
        """``params``: an :class:`ExactSequential`'s float64 output. Returns ``(indexes, means)``: int32
        indexes and float64 means, exact multiples of ``2^-mean_frac_bits``."""
        first, second = params.chunk(2, 1)
        means, scales = (first, second) if self.chunks == ("means", "scales") else (second, first)
        return self.indexes(scales), means.double()


class ExactCheckerboardContext(ExactSequential):
    """The checkerboard context (one stride-1 masked convolution) as an integer network.

    CompressAI's checkerboard coding asks for the context of the anchors from an all-zero latent and then
    discards it; a zero input gives the (requantized) bias everywhere, computed here from one position."""

    def forward(self, x: Tensor, *, backend: str = "auto", return_integers: bool = False) -> Tensor:
        if not x.any():
            layer = self.layers[0]
            if layer.transposed or layer.stride != (1, 1):
                raise ValueError("the checkerboard context is a stride-1 convolution")
            one = super().forward(x.new_zeros((x.shape[0], x.shape[1], 1, 1)), backend=backend,
                                  return_integers=return_integers)
            return one.expand(-1, -1, *x.shape[-2:]).contiguous()
        return super().forward(x, backend=backend, return_integers=return_integers)
