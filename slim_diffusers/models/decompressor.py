"""The shared entropy model and the receiver's synthesis transform of the SLIM latent codec.

Ownership: :class:`SLIMDecompressor` holds every module whose output must be identical on both sides of
the link — the factorized prior of the hyper-latent (``hyper_codec.entropy_bottleneck``), the hyper
synthesis (``hyper_codec.h_s``), the ELIC space-channel context model (``latent_codec``: channel-group
context networks, checkerboard spatial context, parameter aggregation, Gaussian conditionals) and the CDF
tables built from them — plus the latent synthesis ``g_s``. A sender loads it too (it needs the entropy
model to write symbols); a receiver needs nothing from :class:`~slim_diffusers.SLIMCompressor`.

The coding modules are CompressAI's own latent codecs (``HyperLatentCodec``, ``ChannelGroupsLatentCodec``,
``CheckerboardLatentCodec``, ``GaussianConditionalLatentCodec``), composed as in
``compressai.models.sensetime.Elic2022Official``; the hyper analysis is applied by the compressor, so the
hyper codec here gets an identity ``h_a``.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d
from compressai.models.utils import conv, deconv
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .layers import conv1x1, synthesis_transform

# CompressAI's default table of Gaussian scales for the conditional entropy model.
SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256, 64
_CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def scale_table() -> torch.Tensor:
    return torch.exp(torch.linspace(torch.log(torch.tensor(SCALES_MIN)), torch.log(torch.tensor(SCALES_MAX)), SCALES_LEVELS))


@dataclass
class SLIMDecompressorOutput(BaseOutput):
    """
    Args:
        latents (`torch.Tensor`): the reconstructed (RoI-focused) diffusion latent ẑ, still padded.
        likelihoods (`Dict[str, torch.Tensor]`): per-symbol likelihoods of ``y`` and ``z``; the rate in bits
            is ``-sum(log2(likelihoods))``.
        y_hat (`torch.Tensor`): the quantized latent code.
    """

    latents: torch.Tensor
    likelihoods: Dict[str, torch.Tensor]
    y_hat: torch.Tensor


def _resize_cdf_buffers_on_load(module, state_dict, prefix, *args, **kwargs):
    # CDF tables change size with the learned densities: size the empty buffers to what is being loaded
    # (the same thing compressai.models.utils.update_registered_buffers does for CompressionModel).
    for name in _CDF_BUFFERS:
        key = prefix + name
        if key in state_dict and hasattr(module, name):
            buf = getattr(module, name)
            if buf.shape != state_dict[key].shape:
                module.register_buffer(name, torch.zeros_like(state_dict[key], device=buf.device))


class _CheckerboardContext(CheckerboardMaskedConv2d):
    """CompressAI's checkerboard-masked convolution, masking a copy of the weight in each forward.

    The parent masks ``weight.data`` in place on every call, which rewrites parameters during inference and
    would change the model's fingerprint between the first call and the rest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


def _scale_indexes(gc: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """``GaussianConditional.build_indexes`` in one op: the index of the CDF for each scale is the count of
    table entries (all but the last) strictly below the lower-bounded scale. CompressAI computes the same
    count with one comparison per table entry, which dominates coding time at small sizes."""
    scales = gc.lower_bound_scale(scales)
    return torch.searchsorted(gc.scale_table[:-1].to(scales), scales.contiguous(), right=False).int()


class SLIMDecompressor(ModelMixin, ConfigMixin):
    r"""
    Entropy model (hyperprior + ELIC checkerboard/channel-group context) and latent synthesis ``g_s``.

    Parameters:
        latent_channels (`int`, defaults to 4): channels of the diffusion latent.
        hidden_channels (`int`, defaults to 128): width of the residual synthesis transform.
        latent_codec_channels (`int`, defaults to 320): channels of ``y`` (M).
        hyper_channels (`int`, defaults to 192): channels of ``z`` (N).
        groups (`Tuple[int]`, defaults to `(16, 16, 32, 64, 192)`): ELIC's uneven channel groups; sum is M.
        num_upsamples (`int`, defaults to 2): stride-2 stages of ``g_s``; must match the compressor.
        num_res_blocks (`int`, defaults to 1): residual bottleneck blocks after each upsampling.
        channel_context_channels (`Tuple[int, int]`, defaults to `(128, 96)`): hidden widths of the
            channel-group context networks.
    """

    # the hyper transforms always resample by 4 (two stride-2 convs), as in ELIC
    hyper_stride = 4

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        hidden_channels: int = 128,
        latent_codec_channels: int = 320,
        hyper_channels: int = 192,
        groups: Sequence[int] = (16, 16, 32, 64, 192),
        num_upsamples: int = 2,
        num_res_blocks: int = 1,
        channel_context_channels: Sequence[int] = (128, 96),
    ):
        super().__init__()
        groups = [int(g) for g in groups]
        M, N = latent_codec_channels, hyper_channels
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
        self.hyper_codec = HyperLatentCodec(
            entropy_bottleneck=EntropyBottleneck(N), h_a=nn.Identity(), h_s=h_s, quantizer="ste"
        )

        # g_ch^(k) in ELIC: every earlier group conditions group k
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
        checkerboard = {
            f"y{k}": CheckerboardLatentCodec(
                latent_codec={
                    "y": GaussianConditionalLatentCodec(
                        gaussian_conditional=GaussianConditional(None), quantizer="ste", chunks=("means", "scales")
                    )
                },
                context_prediction=_CheckerboardContext(g, g * 2, kernel_size=5, stride=1, padding=2),
                # parameter aggregation (pointwise, as CheckerboardLatentCodec requires)
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
        self.latent_codec = ChannelGroupsLatentCodec(
            groups=groups, channel_context=channel_context, latent_codec=checkerboard
        )
        self.g_s = synthesis_transform(M, hidden_channels, latent_channels, num_upsamples, num_res_blocks)

        for module in self.entropy_models():
            module._register_load_state_dict_pre_hook(_resize_cdf_buffers_on_load, with_module=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # CompressAI's entropy models set parameters through `.data` in __init__, which diffusers'
        # meta-device fast path cannot do, and their CDF tables change size with training: load the
        # ordinary way (the model is small).
        kwargs["low_cpu_mem_usage"] = False
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ----------------------------------------------------------------------------------------------- shapes
    @property
    def total_stride(self) -> int:
        """Latent height and width are padded to a multiple of this before coding."""
        return 2 ** self.config.num_upsamples * self.hyper_stride

    @property
    def y_stride(self) -> int:
        """Latent positions per position of ``y`` along each side (the stride of ``g_a`` and ``g_s``)."""
        return 2**self.config.num_upsamples

    def code_shapes(self, height: int, width: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """Spatial sizes of ``y`` and ``z`` for a latent of ``height × width`` (before padding)."""
        s = self.total_stride
        ph, pw = -(-height // s) * s, -(-width // s) * s
        return (ph // self.y_stride, pw // self.y_stride), (ph // s, pw // s)

    # --------------------------------------------------------------------------------------- CDF tables
    def entropy_models(self) -> List[EntropyModel]:
        return [m for m in self.modules() if isinstance(m, EntropyModel)]

    def update(self, force: bool = False) -> bool:
        """Build the CDF tables used for entropy coding (CompressAI's ``update``). Call after training."""
        updated = False
        for m in self.entropy_models():
            if isinstance(m, GaussianConditional):
                updated |= m.update_scale_table(scale_table().to(m.scale_table.device), force=force)
            elif isinstance(m, EntropyBottleneck):
                updated |= m.update(force=force)
        return updated

    @property
    def is_ready_to_code(self) -> bool:
        return all(m._quantized_cdf.numel() > 0 for m in self.entropy_models())

    def aux_loss(self) -> torch.Tensor:
        """CompressAI's auxiliary loss that fits the hyper-latent prior's quantiles (train it with the rest)."""
        return sum(m.loss() for m in self.modules() if isinstance(m, EntropyBottleneck))

    # ---------------------------------------------------------------------------------------- training
    def forward(self, y: torch.Tensor, z: torch.Tensor, return_dict: bool = True):
        """Quantize ``y`` and ``z``, return their likelihoods and the synthesized latent.

        In training mode this is CompressAI's differentiable path (straight-through rounding, two-pass
        checkerboard). In eval mode it runs :meth:`code_item` and :meth:`synthesize` per item, so ``y_hat``,
        the likelihoods and the latent are exactly those that coding the same item gives.
        """
        if self.training:
            hyper = self.hyper_codec(z)
            y_out = self.latent_codec(y, hyper["params"])
            y_hat = y_out["y_hat"]
            likelihoods = {"y": y_out["likelihoods"]["y"], "z": hyper["likelihoods"]["z"]}
            latents = self.g_s(y_hat)
        else:
            items = [self.code_item(y[i : i + 1], z[i : i + 1]) for i in range(y.shape[0])]
            y_hat = torch.cat([y_hat for y_hat, _ in items])
            likelihoods = {key: torch.cat([lik[key] for _, lik in items]) for key in ("y", "z")}
            latents = self.synthesize(y_hat)
        if not return_dict:
            return (latents, likelihoods, y_hat)
        return SLIMDecompressorOutput(latents=latents, likelihoods=likelihoods, y_hat=y_hat)

    # --------------------------------------------------------------------------------------- inference
    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        """``g_s`` one item at a time: CPU convolutions round differently at different batch sizes, and a
        decoded image must not depend on what else was in the batch."""
        return torch.cat([self.g_s(y_hat[i : i + 1]) for i in range(y_hat.shape[0])])

    def _cdf_lists(self, module: EntropyModel) -> Tuple[List[List[int]], List[int], List[int]]:
        # the rANS coder takes Python lists; converting the tables on every call costs more than coding
        key = tuple((b.data_ptr(), b._version) for b in (module._quantized_cdf, module._cdf_length, module._offset))
        cached = self._cdf_cache.get(id(module))
        if cached is None or cached[0] != key:
            lists = (
                module._quantized_cdf.tolist(),
                module._cdf_length.reshape(-1).int().tolist(),
                module._offset.reshape(-1).int().tolist(),
            )
            cached = (key, lists)
            self._cdf_cache[id(module)] = cached
        return cached[1]

    @property
    def _cdf_cache(self) -> dict:
        if "_cdf_cache_store" not in self.__dict__:
            self.__dict__["_cdf_cache_store"] = {}
        return self.__dict__["_cdf_cache_store"]

    @staticmethod
    def _anchor_masks(height: int, width: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
        ii = torch.arange(height, device=device).view(-1, 1)
        jj = torch.arange(width, device=device).view(1, -1)
        anchor = (ii + jj) % 2 == 0  # CheckerboardLatentCodec's "even" anchor parity
        return anchor, ~anchor

    def code_item(self, y=None, z=None, *, encoder=None, decoder=None, sizes=None, with_likelihoods=False):
        """Run the entropy model over one item (batch of 1) in decoding order.

        This one routine serves three purposes so that they cannot drift apart:

        - estimate (``y``, ``z`` given, no coder): returns ``y_hat`` and the likelihoods of the exact
          symbols that would be written — the eval-mode forward;
        - encode (``y``, ``z`` and a ``compressai.ans.BufferedRansEncoder``): writes every symbol, the
          hyper-latent first, then the anchors and non-anchors of each channel group, into one rANS stream;
        - decode (a ``compressai.ans.RansDecoder`` and ``sizes=(y_size, z_size)``): reads them back.

        Returns ``(y_hat, likelihoods)``; likelihoods are ``None`` unless estimating or ``with_likelihoods``
        (then, when decoding, they are those of the decoded symbols: the bits each position cost).
        """
        decoding = decoder is not None
        estimating = encoder is None and not decoding
        want_likelihoods = estimating or with_likelihoods
        eb = self.hyper_codec.entropy_bottleneck
        medians = eb._get_medians().detach()
        device = medians.device

        # hyper-latent z with the factorized prior
        if decoding:
            y_size, z_size = sizes
            shape = (1, self.config.hyper_channels, *z_size)
            indexes = eb._build_indexes(shape)
            z_sym = decoder.decode_stream(indexes.reshape(-1).tolist(), *self._cdf_lists(eb))
            z_hat = torch.tensor(z_sym, dtype=torch.float32, device=device).view(shape) + medians
        else:
            y_size = tuple(y.shape[-2:])
            z_sym = torch.round(z - medians)
            z_hat = z_sym + medians
            if encoder is not None:
                indexes = eb._build_indexes(z.shape)
                encoder.encode_with_indexes(
                    z_sym.int().reshape(-1).tolist(), indexes.reshape(-1).tolist(), *self._cdf_lists(eb)
                )
        likelihoods = {"z": eb(z_hat if decoding else z)[1]} if want_likelihoods else None
        hyper_params = self.hyper_codec.h_s(z_hat)

        # y in ELIC's order: channel groups, each as checkerboard anchors then non-anchors
        groups = self.config.groups
        channel_groups = self.latent_codec
        masks = self._anchor_masks(*y_size, device)
        y_parts = y.split(groups, dim=1) if not decoding else [None] * len(groups)
        y_hats, y_liks = [], []
        for k, g in enumerate(groups):
            side = hyper_params
            if k > 0:
                side = torch.cat([channel_groups.channel_context[f"y{k}"](torch.cat(y_hats, dim=1)), side], dim=1)
            cb = channel_groups.latent_codec[f"y{k}"]
            gc_codec = cb.latent_codec["y"]
            gc = gc_codec.gaussian_conditional
            y_hat = hyper_params.new_zeros((1, g, *y_size))
            scales_all = torch.zeros_like(y_hat)
            means_all = torch.zeros_like(y_hat)
            for step, mask in enumerate(masks):
                if step == 0:
                    ctx = hyper_params.new_zeros((1, 2 * g, *y_size))
                else:
                    ctx = cb.context_prediction(y_hat)
                # parameter aggregation is pointwise: run it on this step's positions only
                features = torch.cat([ctx, side], dim=1)[:, :, mask].unsqueeze(-1)
                scales, means = gc_codec._chunk(cb.entropy_parameters(features).squeeze(-1))
                indexes = _scale_indexes(gc, scales).reshape(-1).tolist()
                if decoding:
                    sym = decoder.decode_stream(indexes, *self._cdf_lists(gc))
                    sym = torch.tensor(sym, dtype=torch.float32, device=device).view(means.shape)
                else:
                    sym = torch.round(y_parts[k][:, :, mask] - means)
                    if encoder is not None:
                        encoder.encode_with_indexes(sym.int().reshape(-1).tolist(), indexes, *self._cdf_lists(gc))
                y_hat[:, :, mask] = sym + means
                if want_likelihoods:
                    scales_all[:, :, mask] = scales
                    means_all[:, :, mask] = means
            y_hats.append(y_hat)
            if want_likelihoods:
                source = y_hat if decoding else y_parts[k]  # y_hat re-quantises to its own symbols
                y_liks.append(gc(source, scales_all, means=means_all, training=False)[1])
        if want_likelihoods:
            likelihoods["y"] = torch.cat(y_liks, dim=1)
        return torch.cat(y_hats, dim=1), likelihoods

    def fingerprint(self) -> bytes:
        """4-byte identity of everything that decides how a payload decodes: weights and CDF tables.

        Written into every ``.slim`` file so that decoding with other weights fails loudly instead of
        producing a wrong image. Cached until any parameter or buffer changes (optimizer steps,
        ``load_state_dict`` and ``update()`` all bump tensor versions or replace tensors).
        """
        tensors = sorted(self.state_dict(keep_vars=True).items())
        key = tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for name, t in tensors)
        cached = self.__dict__.get("_fingerprint_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps(
            {k: v for k, v in self.config.items() if not k.startswith("_")}, sort_keys=True, default=list
        ).encode())
        for name, t in tensors:
            t = t.detach().to("cpu").contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        value = digest.digest()[:4]
        self.__dict__["_fingerprint_cache"] = (key, value)
        return value


# model_index.json records where a component's class lives; recording the package (not this file) keeps
# saved pipelines loadable when the code moves. diffusers then finds the class and its base classes
# (ModelMixin, ...) as attributes of `slim_diffusers`.
SLIMDecompressor.__module__ = "slim_diffusers"
