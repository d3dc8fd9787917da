"""The shared entropy model and the receiver's synthesis transform of the SLIM latent codec.

Ownership: :class:`SLIMDecompressor` holds every module whose output must be identical on both sides of
the link — the latent codec (:class:`~slim_diffusers.coding.latent_codec.SLIMLatentCodec`: the factorized
prior of the hyper-latent, the hyper synthesis ``h_s``, the ELIC space-channel context model and the CDF
tables built from them) — plus the latent synthesis ``g_s``. A sender loads it too (it needs the entropy
model to write symbols); a receiver needs nothing from :class:`~slim_diffusers.SLIMCompressor`.

With ``exact_entropy_model=True`` the entropy parameters come from integer networks, so a payload decodes to
the same ``ŷ`` on every device (:mod:`slim_diffusers.coding.latent_codec`); such a model is obtained from a
trained float one by :meth:`SLIMDecompressor.convert_to_exact_entropy_model`.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from compressai.entropy_models import EntropyBottleneck, EntropyModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..coding.integer_networks import IntegerConfig
from ..coding.latent_codec import SLIMLatentCodec
from .layers import synthesis_transform
from .rate_gains import RateGains

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
        exact_entropy_model (`bool`, defaults to `False`): the entropy parameters (``h_s``, channel and
            checkerboard contexts, parameter aggregation) are computed by integer networks, bit-identically on
            every device; files it writes are ``.slim`` version 2 (3 for a variable-rate model), flag bit 0.
            Build one from a trained float model with
            :meth:`convert_to_exact_entropy_model`; it does not train.
        num_rate_levels (`int`, defaults to 0): ``0`` for a model trained at one rate; ``L ≥ 2`` for a variable-rate
            model (the compressor's must match), whose inverse gains
            (:class:`~slim_diffusers.models.rate_gains.RateGains`) scale ``ŷ`` before ``g_s`` at the rate each
            ``.slim`` file names (version 3 files).
    """

    hyper_stride = SLIMLatentCodec.hyper_stride

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
        exact_entropy_model: bool = False,
        num_rate_levels: int = 0,
    ):
        super().__init__()
        codec = SLIMLatentCodec.elic(
            latent_codec_channels, hyper_channels, groups, channel_context_channels, exact_entropy_model=exact_entropy_model
        )
        # The codec's modules are registered here under their own names, `hyper_codec` and `latent_codec`: those
        # names are in every saved checkpoint and in the model fingerprint of every .slim file. The codec object
        # itself is not a second registration of them (that would store every weight twice).
        self.hyper_codec = codec.hyper_codec
        self.latent_codec = codec.latent_codec
        self.__dict__["_entropy_coder"] = codec
        self.g_s = synthesis_transform(latent_codec_channels, hidden_channels, latent_channels, num_upsamples, num_res_blocks)
        # only variable-rate models have inverse gains: a fixed-rate model's weights and fingerprint are what they were
        self.rate_inverse_gains = (
            RateGains(num_rate_levels, latent_codec_channels, inverse=True) if num_rate_levels else None
        )

    @property
    def entropy_coder(self) -> SLIMLatentCodec:
        """The latent codec (``forward`` / ``compress`` / ``decompress``) over this model's entropy-model modules."""
        return self.__dict__["_entropy_coder"]

    def train(self, mode: bool = True):
        super().train(mode)
        self.entropy_coder.train(mode)  # not a registered child (see __init__): its own flag follows ours
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``, always loading the ordinary way: CompressAI's entropy models set
        parameters through ``.data`` in ``__init__``, which the meta-device fast path cannot replay, and their
        CDF tables change size with training. ``device_map`` places the whole (small) model on one device."""
        device = _single_device(kwargs.pop("device_map", None))
        kwargs["low_cpu_mem_usage"] = False
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return model.to(device) if device is not None else model

    @property
    def num_rate_levels(self) -> int:
        """Trained rate levels (0: a fixed-rate model)."""
        return int(self.config.get("num_rate_levels", 0) or 0)

    def check_rate(self, rate) -> None:
        """Refuse a rate this model cannot decode at (``None`` for a variable-rate model, any rate for a fixed one,
        a rate outside its levels) with :class:`ValueError`."""
        if self.rate_inverse_gains is None:
            if rate is not None:
                raise ValueError("this decompressor codes at one rate (trained for one λr); a rate needs a variable-rate model")
            return
        if rate is None:
            raise ValueError(f"this is a variable-rate decompressor ({self.num_rate_levels} levels): pass a rate")
        self.rate_inverse_gains.check_rate(rate)

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
        return self.entropy_coder.entropy_models()

    def update(self, force: bool = False) -> bool:
        """Build the CDF tables used for entropy coding (CompressAI's ``update``). Call after training."""
        return self.entropy_coder.update(force=force)

    @property
    def is_ready_to_code(self) -> bool:
        return self.entropy_coder.is_ready_to_code

    # -------------------------------------------------------------------------------- exact entropy model
    @property
    def exact_entropy_model(self) -> bool:
        """Whether the entropy parameters are computed by integer networks (``.slim`` flag bit 0)."""
        return bool(self.config.get("exact_entropy_model", False))

    @torch.no_grad()
    def convert_to_exact_entropy_model(
        self, calibration: Iterable[Tuple[torch.Tensor, torch.Tensor]], config: Optional[IntegerConfig] = None
    ) -> "SLIMDecompressor":
        """A copy of this trained float model whose entropy networks are integer networks (post-training
        conversion, :meth:`SLIMLatentCodec.convert_to_exact`); ``g_s``, the hyper-latent prior and the CDF
        tables are this model's. ``calibration``: ``(y, z)`` pairs, the compressor's outputs for representative
        latents (:func:`slim_diffusers.coding.latents.convert_to_exact_entropy_model` takes latents). The result
        is in eval mode, ready to code, and saves and loads like any decompressor."""
        if self.exact_entropy_model:
            raise ValueError("this decompressor's entropy model is already exact")
        if not self.is_ready_to_code:
            raise RuntimeError("the entropy model has no CDF tables yet: call `update()` before converting")
        was_training = self.training
        self.eval()
        try:
            networks = self.entropy_coder.convert_to_exact(calibration, config or IntegerConfig())
        finally:
            self.train(was_training)
        options = {k: v for k, v in self.config.items() if not k.startswith("_")}
        exact = type(self)(**{**options, "exact_entropy_model": True}).to(self.device)
        if self.dtype != exact.dtype:
            exact.to(self.dtype)
        state = self.state_dict()
        shared = {k: v for k, v in state.items() if k in exact.state_dict()}
        missing, _ = exact.load_state_dict(shared, strict=False)
        for path, network in networks.items():
            exact.entropy_coder.get_submodule(path).load_state_dict(network.state_dict())
        converted = set(f"{path}.{name}" for path, network in networks.items() for name in network.state_dict())
        # the leaves' exact heads are derived from the scale table when the model is built
        left = [k for k in missing if k not in converted and ".exact_parameters." not in k]
        if left:
            raise RuntimeError(f"conversion left parameters of the exact model unset: {left[:5]}")
        return exact.eval()

    def aux_loss(self) -> torch.Tensor:
        """CompressAI's auxiliary loss that fits the hyper-latent prior's quantiles (train it with the rest)."""
        return sum(m.loss() for m in self.modules() if isinstance(m, EntropyBottleneck))

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, y: torch.Tensor, z: torch.Tensor, rate: Optional[Union[float, torch.Tensor]] = None,
                return_dict: bool = True):
        """Quantize ``y`` and ``z``, return their likelihoods and the synthesized latent.

        In training mode this is CompressAI's differentiable path; in eval mode ``y_hat`` and the likelihoods
        are exactly those that coding the same items gives (:class:`SLIMLatentCodec`), and ``g_s`` runs item
        by item (:meth:`synthesize`). ``rate``: the level ``y`` was gained at (variable-rate models only); ``y_hat``
        is returned in the gained domain, as it is coded.
        """
        self.check_rate(rate)
        out = self.entropy_coder(y, z)
        if self.training:
            latents = self.g_s(self._ungain(out["y_hat"], rate))
        else:
            latents = self.synthesize(out["y_hat"], rate)
        if not return_dict:
            return (latents, out["likelihoods"], out["y_hat"])
        return SLIMDecompressorOutput(latents=latents, likelihoods=out["likelihoods"], y_hat=out["y_hat"])

    # ------------------------------------------------------------------------------------------ coding
    # Pipelines call these rather than `forward`; `apply_forward_hook` lets model CPU offload move the model
    # to the execution device first, as it does for AutoencoderKL.encode/decode.
    @apply_forward_hook
    def entropy_encode(self, y: torch.Tensor, z: torch.Tensor) -> List[bytes]:
        """One rANS payload per item of the compressor's ``y`` and ``z`` (:meth:`SLIMLatentCodec.compress`)."""
        return self.entropy_coder.compress(y.to(self.device, self.dtype), z.to(self.device, self.dtype))["strings"][0]

    @apply_forward_hook
    def decode(self, payloads: Sequence[bytes], latent_size: Tuple[int, int], rate: Optional[float] = None) -> torch.Tensor:
        """ẑ of each payload, at ``latent_size`` (the unpadded latent's height and width); ``rate``: the level the
        payloads were coded at (variable-rate models; the ``.slim`` header carries it)."""
        self.check_rate(rate)
        h, w = int(latent_size[0]), int(latent_size[1])
        _, z_size = self.code_shapes(h, w)
        y_hat = self.entropy_coder.decompress([list(payloads)], z_size)["y_hat"]
        return self.synthesize(y_hat, rate)[..., :h, :w]

    def _ungain(self, y_hat: torch.Tensor, rate) -> torch.Tensor:
        """``ŷ`` times the inverse gains of ``rate`` (variable-rate models); unchanged otherwise."""
        if self.rate_inverse_gains is None:
            return y_hat
        return y_hat * self.rate_inverse_gains(rate, batch=y_hat.shape[0]).to(y_hat.dtype)

    def synthesize(self, y_hat: torch.Tensor, rate: Optional[Union[float, torch.Tensor]] = None) -> torch.Tensor:
        """``g_s`` one item at a time: CPU convolutions round differently at different batch sizes, and a
        decoded image must not depend on what else was in the batch. An exact model's float64 ``ŷ`` enters
        ``g_s`` in its dtype (one correctly rounded conversion, the same everywhere); a variable-rate model's is
        first multiplied by the inverse gains of ``rate``, in the model's dtype."""
        y_hat = self._ungain(y_hat.to(self.dtype), rate)
        return torch.cat([self.g_s(y_hat[i : i + 1]) for i in range(y_hat.shape[0])])

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
        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        # models without these options keep the fingerprints they had before the options existed
        for option in ("exact_entropy_model", "num_rate_levels"):
            if not config.get(option):
                config.pop(option, None)
        digest.update(json.dumps(config, sort_keys=True, default=list).encode())
        for name, t in tensors:
            t = t.detach().to("cpu").contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        value = digest.digest()[:4]
        self.__dict__["_fingerprint_cache"] = (key, value)
        return value


def _single_device(device_map):
    """The one device a ``device_map`` names (``"cpu"``, ``"cuda:0"``, ``{"": "cpu"}``), or ``None``."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError(f"SLIMDecompressor is placed on one device; got the device_map {device_map}")
        (device_map,) = devices
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return None  # a pipeline-level strategy: diffusers decides placement, the model stays where it loads
    return torch.device(device_map)


# model_index.json records where a component's class lives; recording the package (not this file) keeps
# saved pipelines loadable when the code moves. diffusers then finds the class and its base classes
# (ModelMixin, ...) as attributes of `slim_diffusers`.
SLIMDecompressor.__module__ = "slim_diffusers"
