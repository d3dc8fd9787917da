"""SLIM's latent codec: ELIC's space-channel context model over a hyperprior, one rANS stream per image.

One object with CompressAI's three verbs (:class:`compressai.latent_codecs.LatentCodec`):

- ``forward(y, z)``: in training, CompressAI's differentiable path (straight-through rounding, two-pass
  checkerboard) giving ``y_hat`` and the likelihoods; in eval mode, the exact symbols ``compress`` writes and
  their likelihoods, so a rate estimate or a bit map describes the bytes and not an approximation of them;
- ``compress(y, z)``: ``{"strings": [[payload, ...]], "shape": z's size}``, one payload per image;
- ``decompress(strings, shape)``: payloads → ``y_hat`` and ``z_hat``.

The payload is one rANS stream (CompressAI's coder) holding every symbol of one image in decoding order: the
hyper-latent ``z`` with its factorized prior, then for each channel group the checkerboard anchors, then the
non-anchors. The groups and the checkerboard are traversed by CompressAI's own ``ChannelGroupsLatentCodec``
and ``CheckerboardLatentCodec`` (their ``compress``/``decompress``), so the context model exists once; only
the leaves differ from CompressAI's: they write into and read from the image's stream instead of opening a
stream each. One stream instead of one per group and step saves the coder's flush each time, which matters
at a few hundred bytes per image. Every tensor shape follows from the latent size, so the payload carries
no shapes.

Images are coded one at a time, so a batch gives exactly the bytes of the same images coded one by one.

An *exact* codec (``elic(..., exact_entropy_model=True)``, or :meth:`SLIMLatentCodec.convert_to_exact` of a
trained float one) computes the entropy parameters with integer networks
(:mod:`slim_diffusers.coding.integer_networks`) in the same places of the same structure: ``h_s``, the channel
context, the checkerboard context and the parameter aggregation are :class:`~.integer_networks.ExactSequential`
modules, and each Gaussian leaf turns their fixed-point output into CDF indexes by integer comparisons
(:class:`~.integer_networks.ExactGaussianParameters`). ``ẑ = symbol + median`` and ``ŷ = symbol + μ`` are
then exact float64 values, so the CDF indexes, the means and ``ŷ`` are bit-identical on every device, thread
count, batch split and memory layout; only what comes after ``ŷ`` (the latent synthesis) is floating point.
"""

import contextvars
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    LatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d
from compressai.models.utils import conv, deconv
from torch import nn

from ..errors import SLIMBitstreamError
from ..models.layers import conv1x1
from . import _compressai
from .integer_networks import (
    ExactCheckerboardContext,
    ExactGaussianParameters,
    ExactSequential,
    IntegerConfig,
    IntegerSequential,
)

# CompressAI's default table of Gaussian scales for the conditional entropy model
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256, 64


def scale_table() -> torch.Tensor:
    return torch.exp(torch.linspace(torch.log(torch.tensor(SCALES_MIN)), torch.log(torch.tensor(SCALES_MAX)), SCALES_LEVELS))


# ------------------------------------------------------------------------------------------------ streams
class _Stream:
    """Where the symbols of one image go while the codec traverses it: written, read, or only counted."""

    def put(self, symbols: torch.Tensor, indexes: torch.Tensor, model: EntropyModel) -> None:
        """Write the symbols (a stream that only counts writes nothing)."""

    def take(self, indexes: torch.Tensor, model: EntropyModel, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise RuntimeError("this stream is not being decoded")

    def observe(self, model: EntropyModel, values: torch.Tensor, scales=None, means=None) -> None:
        """See the values and their distribution as they are coded (only a counting stream records them)."""


class _RansWriter(_Stream):
    def __init__(self):
        self.encoder = BufferedRansEncoder()

    def put(self, symbols, indexes, model):
        self.encoder.encode_with_indexes(
            symbols.int().reshape(-1).tolist(), indexes.reshape(-1).tolist(), *_compressai.cdf_tables(model)
        )

    def flush(self) -> bytes:
        return self.encoder.flush()


class _RansReader(_Stream):
    def __init__(self, payload: bytes, num_symbols: int):
        payload = bytes(payload)
        if len(payload) < 8 or len(payload) % 4:
            raise SLIMBitstreamError(
                f"corrupt payload: {len(payload)} bytes is not a whole rANS stream (a multiple of 4, at least 8)"
            )
        # CompressAI's rANS decoder does not check the end of its buffer: on a corrupt stream it keeps reading.
        # Zeros after the payload bound what it can read (at most one 32-bit word per symbol, plus escape codes
        # that stop at the first zero nibble), so a bad file decodes to garbage instead of reading foreign memory.
        margin = 4 * (num_symbols + 16) + 16 * len(payload)
        self.decoder = RansDecoder()
        self.decoder.set_stream(payload + bytes(margin))

    def take(self, indexes, model, dtype=torch.float32):
        symbols = self.decoder.decode_stream(indexes.reshape(-1).tolist(), *_compressai.cdf_tables(model))
        return torch.tensor(symbols, dtype=dtype, device=indexes.device).view(indexes.shape)


class _Estimator(_Stream):
    """Writes nothing; keeps the likelihood of every symbol, in coding order."""

    def __init__(self):
        self.likelihoods: List[torch.Tensor] = []

    def observe(self, model, values, scales=None, means=None):
        # an exact codec's float64 values: estimated in the entropy model's own dtype
        if isinstance(model, GaussianConditional):
            dtype = model.scale_table.dtype
            values, scales, means = (t.to(dtype) for t in (values, scales, means))
            self.likelihoods.append(model(values, scales, means=means, training=False)[1])
        else:
            self.likelihoods.append(model(values.to(model.quantiles.dtype), training=False)[1])


# the stream of the image being coded; a context variable, so that threads coding at once do not mix
_ACTIVE_STREAM: contextvars.ContextVar[Optional[_Stream]] = contextvars.ContextVar("slim_active_stream", default=None)


def _active_stream() -> _Stream:
    stream = _ACTIVE_STREAM.get()
    if stream is None:
        raise RuntimeError("SLIM's Gaussian conditionals code through SLIMLatentCodec.compress/decompress only")
    return stream


# ------------------------------------------------------------------------------------------------ modules
class StreamGaussianConditionalLatentCodec(GaussianConditionalLatentCodec):
    """CompressAI's Gaussian-conditional latent codec whose ``compress``/``decompress`` code into the stream of
    the image being coded (see the module docstring). Training (``forward``) is CompressAI's, unchanged.

    ``exact_parameters`` (exact codecs): the CDF index of each fixed-point scale by integer comparisons, in
    place of the float comparison with the scale table; the means are the network's exact fixed-point values."""

    def __init__(self, *args, exact_parameters: Optional[ExactGaussianParameters] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.exact_parameters = exact_parameters

    def _coding_params(self, ctx_params: torch.Tensor):
        scales, means = _compressai.gaussian_params(self, self.entropy_parameters(ctx_params))
        if self.exact_parameters is not None:
            return scales, means, self.exact_parameters.indexes(scales)
        return scales, means, _compressai.scale_indexes(self.gaussian_conditional, scales)

    def compress(self, y: torch.Tensor, ctx_params: torch.Tensor) -> Dict[str, Any]:
        stream = _active_stream()
        scales, means, indexes = self._coding_params(ctx_params)
        symbols = torch.round(y - means)
        stream.put(symbols, indexes, self.gaussian_conditional)
        y_hat = symbols + means
        stream.observe(self.gaussian_conditional, y_hat, scales, means)
        return {"strings": [[b""] * y.shape[0]], "shape": y.shape[2:4], "y_hat": y_hat}

    def decompress(self, strings, shape, ctx_params: torch.Tensor, **kwargs) -> Dict[str, Any]:
        stream = _active_stream()
        scales, means, indexes = self._coding_params(ctx_params)
        y_hat = stream.take(indexes, self.gaussian_conditional, dtype=means.dtype) + means
        stream.observe(self.gaussian_conditional, y_hat, scales, means)
        return {"y_hat": y_hat}


class CheckerboardContext(CheckerboardMaskedConv2d):
    """CompressAI's checkerboard-masked convolution, masking a copy of the weight in each call.

    The parent masks ``weight.data`` in place on every call, which rewrites parameters during inference and
    would change the model's fingerprint between the first call and the rest.

    CompressAI's checkerboard coding asks for the context of the anchors from an all-zero latent and then
    discards it; the convolution of zeros is the bias alone, so it is not computed (the largest group's 5×5
    convolution is a sizeable share of coding time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and self.stride == (1, 1) and not x.any():
            out = x.new_zeros((x.shape[0], self.out_channels, *x.shape[-2:]))
            return out + self.bias.view(1, -1, 1, 1) if self.bias is not None else out
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SLIMChannelGroupsLatentCodec(ChannelGroupsLatentCodec):
    """CompressAI's ``ChannelGroupsLatentCodec``, decoding into a latent of the side parameters' dtype.

    CompressAI's ``decompress`` allocates ``ŷ`` in the default dtype (float32) while ``compress`` uses the
    latent's; an exact codec keeps ``ŷ`` in float64 (exact fixed point) on both ends."""

    def decompress(self, strings, shape, side_params: torch.Tensor, **kwargs) -> Dict[str, Any]:
        n = len(strings[0])
        y_hat = side_params.new_zeros((n, sum(s[0] for s in shape), *shape[0][1:]))
        y_hat_ = y_hat.split(self.groups, dim=1)
        per_group = len(strings) // len(self.groups)
        for k in range(len(self.groups)):
            params = self._get_ctx_params(k, side_params, y_hat_)
            group = strings[per_group * k : per_group * (k + 1)]
            y_hat_[k][:] = self.latent_codec[f"y{k}"].decompress(group, shape[k], params)["y_hat"]
        return {"y_hat": y_hat}


class SLIMLatentCodec(LatentCodec):
    r"""
    Hyperprior + ELIC space-channel context model, coded as one rANS stream per image (see the module docstring).

    Args:
        hyper_codec: CompressAI ``HyperLatentCodec`` of ``z`` (the hyper analysis runs in the compressor, so its
            ``h_a`` is the identity); ``h_s`` gives the side parameters of ``y``.
        latent_codec: CompressAI ``ChannelGroupsLatentCodec`` of ``y`` whose groups are
            ``CheckerboardLatentCodec``\ s over :class:`StreamGaussianConditionalLatentCodec` leaves.

    Build the ELIC layout with :meth:`elic`; an exact codec (see the module docstring) with
    ``elic(..., exact_entropy_model=True)`` (all-zero integer networks, to load weights into) or by converting
    a trained float codec (:meth:`convert_to_exact`).
    """

    # the hyper transforms resample by 4 (two stride-2 convolutions), as in ELIC
    hyper_stride = 4

    def __init__(self, hyper_codec: HyperLatentCodec, latent_codec: ChannelGroupsLatentCodec):
        super().__init__()
        self.hyper_codec = hyper_codec
        self.latent_codec = latent_codec
        for model in self.entropy_models():
            model.register_load_state_dict_pre_hook(_compressai.resize_cdf_buffers_on_load)

    @classmethod
    def elic(
        cls,
        latent_codec_channels: int = 320,
        hyper_channels: int = 192,
        groups: Sequence[int] = (16, 16, 32, 64, 192),
        channel_context_channels: Sequence[int] = (128, 96),
        exact_entropy_model: bool = False,
    ) -> "SLIMLatentCodec":
        """The layout of CompressAI's ``Elic2022Official``: uneven channel groups, each conditioned on the earlier
        ones (``channel_context``) and coded as a checkerboard (``context_prediction``), with pointwise
        parameter aggregation (``entropy_parameters``) over the checkerboard context, the channel context and
        the hyperprior's side parameters."""
        M, N, groups = latent_codec_channels, hyper_channels, [int(g) for g in groups]
        if sum(groups) != M:
            raise ValueError(f"channel groups {groups} must add up to latent_codec_channels={M}")
        c1, c2 = channel_context_channels
        h_s = nn.Sequential(
            deconv(N, N, kernel_size=5, stride=2),
            nn.ReLU(inplace=True),
            deconv(N, N * 3 // 2, kernel_size=5, stride=2),
            nn.ReLU(inplace=True),
            conv(N * 3 // 2, M * 2, kernel_size=3, stride=1),
        )
        hyper_codec = HyperLatentCodec(entropy_bottleneck=EntropyBottleneck(N), h_a=nn.Identity(), h_s=h_s, quantizer="ste")
        channel_context = {
            f"y{k}": nn.Sequential(
                conv(sum(groups[:k]), c1, kernel_size=5, stride=1),
                nn.ReLU(inplace=True),
                conv(c1, c2, kernel_size=5, stride=1),
                nn.ReLU(inplace=True),
                conv(c2, groups[k] * 2, kernel_size=5, stride=1),
            )
            for k in range(1, len(groups))
        }
        def leaf():
            gaussian_conditional = GaussianConditional(None)
            exact_parameters = None
            if exact_entropy_model:
                exact_parameters = ExactGaussianParameters(
                    scale_table(), gaussian_conditional.lower_bound_scale.bound, chunks=("means", "scales")
                )
            return StreamGaussianConditionalLatentCodec(
                gaussian_conditional=gaussian_conditional, quantizer="ste", chunks=("means", "scales"),
                exact_parameters=exact_parameters,
            )

        checkerboards = {
            f"y{k}": CheckerboardLatentCodec(
                latent_codec={"y": leaf()},
                context_prediction=CheckerboardContext(g, g * 2, kernel_size=5, stride=1, padding=2),
                entropy_parameters=nn.Sequential(
                    conv1x1(g * 2 + (k > 0) * g * 2 + M * 2, M),
                    nn.ReLU(inplace=True),
                    conv1x1(M, M // 2),
                    nn.ReLU(inplace=True),
                    conv1x1(M // 2, g * 2),
                ),
            )
            for k, g in enumerate(groups)
        }
        codec = cls(
            hyper_codec, SLIMChannelGroupsLatentCodec(groups=groups, channel_context=channel_context, latent_codec=checkerboards)
        )
        if exact_entropy_model:
            for path, network in codec.entropy_networks().items():
                kind = ExactCheckerboardContext if path.endswith("context_prediction") else ExactSequential
                codec._replace(path, kind.empty_like(network))
        return codec

    # ------------------------------------------------------------------------------- exact entropy model
    def entropy_networks(self) -> Dict[str, nn.Module]:
        """The networks that compute the entropy parameters, by their path in this codec: ``h_s``, the channel
        contexts, the checkerboard contexts and the parameter aggregations (in coding order)."""
        networks = {"hyper_codec.h_s": self.hyper_codec.h_s}
        for k in range(len(self.groups)):
            if k > 0:
                networks[f"latent_codec.channel_context.y{k}"] = self.latent_codec.channel_context[f"y{k}"]
            checkerboard = self.latent_codec.latent_codec[f"y{k}"]
            networks[f"latent_codec.latent_codec.y{k}.context_prediction"] = checkerboard.context_prediction
            networks[f"latent_codec.latent_codec.y{k}.entropy_parameters"] = checkerboard.entropy_parameters
        return networks

    def _replace(self, path: str, module: nn.Module) -> None:
        parent, _, name = path.rpartition(".")
        setattr(self.get_submodule(parent), name, module)

    def _leaf(self, k: int) -> StreamGaussianConditionalLatentCodec:
        return self.latent_codec.latent_codec[f"y{k}"].latent_codec["y"]

    @property
    def is_exact(self) -> bool:
        """Whether the entropy parameters come from integer networks (see the module docstring)."""
        return isinstance(self.hyper_codec.h_s, ExactSequential)

    @torch.no_grad()
    def calibration_inputs(self, items: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, List[torch.Tensor]]:
        """What each entropy network (:meth:`entropy_networks`) sees while this codec codes ``items``, pairs
        ``(y, z)`` of the compressor's outputs for one image each."""
        store: Dict[str, List[torch.Tensor]] = {}
        handles = [
            network.register_forward_pre_hook(
                lambda module, args, path=path: store.setdefault(path, []).append(args[0].detach().clone())
            )
            for path, network in self.entropy_networks().items()
        ]
        try:
            for y, z in items:
                for i in range(y.shape[0]):
                    self._code_item(_Estimator(), y[i : i + 1], z[i : i + 1])
        finally:
            for handle in handles:
                handle.remove()
        return store

    @torch.no_grad()
    def convert_to_exact(
        self, items: Iterable[Tuple[torch.Tensor, torch.Tensor]], config: IntegerConfig = IntegerConfig()
    ) -> Dict[str, ExactSequential]:
        """Post-training conversion of this (float) codec's entropy networks into integer networks.

        ``items``: ``(y, z)`` pairs of representative latents (the compressor's outputs); each network's input and
        output formats are calibrated on what it sees while they are coded (:meth:`IntegerSequential.calibrate`),
        the parameter aggregations write means and scales in the formats of the Gaussian leaves' exact heads.
        Returns the integer networks by path (:meth:`entropy_networks`), to load into an exact codec."""
        if self.is_exact:
            raise ValueError("this codec's entropy model is already exact")
        self._require_tables()
        inputs = self.calibration_inputs(items)
        exact = {}
        for path, network in self.entropy_networks().items():
            if path not in inputs:
                raise ValueError(f"the calibration latents never reached {path}")
            output_frac_bits = None
            if path.endswith("entropy_parameters"):
                k = int(path.split(".")[2][1:])
                gc = self._leaf(k).gaussian_conditional
                head = ExactGaussianParameters(scale_table(), gc.lower_bound_scale.bound, chunks=("means", "scales"))
                output_frac_bits = head.output_frac_bits(2 * self.groups[k])
            twin = IntegerSequential.from_float(network, config, output_frac_bits=output_frac_bits)
            exact[path] = twin.calibrate(inputs[path]).to_exact()
        return exact

    # ------------------------------------------------------------------------------------------ tables
    @property
    def groups(self) -> List[int]:
        return list(self.latent_codec.groups)

    def entropy_models(self) -> List[EntropyModel]:
        return [m for m in self.modules() if isinstance(m, EntropyModel)]

    def update(self, force: bool = False) -> bool:
        """Build the CDF tables used for entropy coding (CompressAI's ``update``); call after training."""
        updated = False
        for model in self.entropy_models():
            if isinstance(model, GaussianConditional):
                updated |= model.update_scale_table(scale_table().to(model.scale_table.device), force=force)
            elif isinstance(model, EntropyBottleneck):
                updated |= model.update(force=force)
        return updated

    @property
    def is_ready_to_code(self) -> bool:
        return all(_compressai.has_cdf_tables(m) for m in self.entropy_models())

    def _require_tables(self) -> None:
        if not self.is_ready_to_code:
            raise RuntimeError("the entropy model has no CDF tables yet: call `update()` after training")

    def num_symbols(self, z_size: Tuple[int, int]) -> int:
        """Symbols in one payload for a hyper-latent of spatial size ``z_size``."""
        zh, zw = z_size
        s = self.hyper_stride
        y_channels = sum(self.groups)
        return y_channels * zh * s * zw * s + self.hyper_codec.entropy_bottleneck.channels * zh * zw

    def min_payload_bytes(self, z_size: Tuple[int, int]) -> int:
        """The fewest bytes a payload written by :meth:`compress` can have for a hyper-latent of size ``z_size``:
        every symbol costs at least the bits of the likeliest entry of its model's tables
        (:func:`_compressai.min_rans_stream_bytes` derives the bound). ``decompress`` refuses shorter payloads
        before decoding anything, so a file of a few bytes cannot make the decoder work through a large image."""
        zh, zw = z_size
        yh, yw = zh * self.hyper_stride, zw * self.hyper_stride
        eb = self.hyper_codec.entropy_bottleneck
        counts = [(eb, eb.channels * zh * zw)]
        for k, g in enumerate(self.groups):
            counts.append((self.latent_codec.latent_codec[f"y{k}"].latent_codec["y"].gaussian_conditional, g * yh * yw))
        return _compressai.min_rans_stream_bytes(counts)

    # ------------------------------------------------------------------------------------------- verbs
    def forward(self, y: torch.Tensor, z: torch.Tensor) -> Dict[str, Any]:
        """``{"y_hat", "z_hat", "likelihoods": {"y", "z"}}``; see the module docstring for the two modes."""
        if self.training and self.is_exact:
            raise RuntimeError(
                "an exact (integer) entropy model does not train: train the float model, then convert it "
                "(SLIMDecompressor.convert_to_exact_entropy_model)"
            )
        if self.training:
            hyper = self.hyper_codec(z)
            y_out = self.latent_codec(y, hyper["params"])
            return {
                "y_hat": y_out["y_hat"],
                "likelihoods": {"y": y_out["likelihoods"]["y"], "z": hyper["likelihoods"]["z"]},
            }
        items = [self._code_item(_Estimator(), y[i : i + 1], z[i : i + 1]) for i in range(y.shape[0])]
        return {
            "y_hat": torch.cat([item["y_hat"] for item in items]),
            "z_hat": torch.cat([item["z_hat"] for item in items]),
            "likelihoods": {key: torch.cat([item["likelihoods"][key] for item in items]) for key in ("y", "z")},
        }

    @torch.no_grad()
    def compress(self, y: torch.Tensor, z: torch.Tensor) -> Dict[str, Any]:
        self._require_tables()
        payloads, y_hats = [], []
        for i in range(y.shape[0]):
            writer = _RansWriter()
            y_hats.append(self._code_item(writer, y[i : i + 1], z[i : i + 1])["y_hat"])
            payloads.append(writer.flush())
        return {"strings": [payloads], "shape": tuple(z.shape[-2:]), "y_hat": torch.cat(y_hats)}

    @torch.no_grad()
    def decompress(self, strings: List[List[bytes]], shape: Tuple[int, int], **kwargs) -> Dict[str, Any]:
        """Decode ``strings = [[payload, ...]]`` for a hyper-latent of spatial size ``shape``; a malformed
        payload raises :class:`~slim_diffusers.SLIMBitstreamError`."""
        self._require_tables()
        (payloads,) = strings
        z_size = (int(shape[0]), int(shape[1]))
        num_symbols = self.num_symbols(z_size)
        min_bytes = self.min_payload_bytes(z_size)
        for payload in payloads:
            if len(payload) < min_bytes:
                raise SLIMBitstreamError(
                    f"corrupt payload: {len(payload)} bytes cannot hold the {num_symbols} symbols of a "
                    f"{z_size[0]}×{z_size[1]} hyper-latent (this model writes at least {min_bytes}); the file is "
                    "damaged or does not belong to this model"
                )
        items = [self._code_item(_RansReader(payload, num_symbols), z_size=z_size) for payload in payloads]
        return {"y_hat": torch.cat([i["y_hat"] for i in items]), "z_hat": torch.cat([i["z_hat"] for i in items])}

    # -------------------------------------------------------------------------------------- traversal
    def _code_item(self, stream: _Stream, y=None, z=None, z_size=None) -> Dict[str, Any]:
        """Every symbol of one image in coding order through ``stream``; ``y``/``z`` are ``None`` when decoding."""
        token = _ACTIVE_STREAM.set(stream)
        try:
            eb = self.hyper_codec.entropy_bottleneck
            medians = _compressai.hyper_medians(eb)
            device = medians.device
            if z is not None:
                z_size = tuple(z.shape[-2:])
            indexes = torch.arange(eb.channels, device=device, dtype=torch.int32).view(1, -1, 1, 1)
            indexes = indexes.expand(1, -1, *z_size)
            exact = self.is_exact
            if z is None:
                if exact:  # ẑ = symbol + median exactly: an integer plus a float32 value, in float64
                    z_hat = stream.take(indexes, eb, dtype=torch.float64) + medians.double()
                else:
                    z_hat = stream.take(indexes, eb) + medians
            else:
                symbols = torch.round(z - medians)
                stream.put(symbols, indexes, eb)
                z_hat = symbols.double() + medians.double() if exact else symbols + medians
            stream.observe(eb, z_hat)
            params = self.hyper_codec.h_s(z_hat)

            if y is None:
                y_size = (z_size[0] * self.hyper_stride, z_size[1] * self.hyper_stride)
                shapes = [(g, *y_size) for g in self.groups]
                placeholders = [[b""]] * (2 * len(self.groups))  # the symbols are in `stream`, not in strings
                y_hat = self.latent_codec.decompress(placeholders, shapes, params)["y_hat"]
            else:
                y_hat = self.latent_codec.compress(y.double() if exact else y, params)["y_hat"]
        finally:
            _ACTIVE_STREAM.reset(token)
        out = {"y_hat": y_hat, "z_hat": z_hat}
        if isinstance(stream, _Estimator):
            z_likelihoods, y_steps = stream.likelihoods[0], stream.likelihoods[1:]
            checkerboards = [self.latent_codec.latent_codec[f"y{k}"] for k in range(len(self.groups))]
            y_likelihoods = [cb.embed(torch.stack(y_steps[2 * k : 2 * k + 2])) for k, cb in enumerate(checkerboards)]
            out["likelihoods"] = {"y": torch.cat(y_likelihoods, dim=1), "z": z_likelihoods}
        return out
