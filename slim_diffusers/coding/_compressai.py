"""The one place that relies on CompressAI internals (checked against compressai 1.2.8).

SLIM writes every symbol of an image into one rANS stream, where CompressAI's entropy models each write a
stream of their own; sharing one stream needs a few things CompressAI keeps private. They are all here, and
``tests/test_compressai_adapter.py`` checks each assumption against the installed CompressAI, so an upgrade
that changes one fails there, by name, instead of silently changing the bytes.
"""

import math
from typing import List, Sequence, Tuple

import torch
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
from compressai.latent_codecs import GaussianConditionalLatentCodec

CHECKED_COMPRESSAI_VERSION = "1.2.8"

# CDF-table buffers of an entropy model, as they are named in state dicts
CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def hyper_medians(entropy_bottleneck: EntropyBottleneck) -> torch.Tensor:
    """The medians the factorized prior centres its symbols on, shaped ``(C, 1, 1)``
    (``EntropyBottleneck._get_medians``)."""
    return entropy_bottleneck._get_medians().detach()


def gaussian_params(codec: GaussianConditionalLatentCodec, params: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scales, means)`` from an entropy-parameter output, split the way the codec's own forward splits it
    (``GaussianConditionalLatentCodec._chunk``), so coding and training read the same channels."""
    return codec._chunk(params)


def scale_indexes(gaussian_conditional: GaussianConditional, scales: torch.Tensor) -> torch.Tensor:
    """``GaussianConditional.build_indexes`` in one op: a scale's CDF is the count of table entries (all but the
    last) strictly below the lower-bounded scale. CompressAI counts with one comparison per table entry, which
    dominates coding time at small sizes."""
    scales = gaussian_conditional.lower_bound_scale(scales)
    table = gaussian_conditional.scale_table[:-1].to(scales)
    return torch.searchsorted(table, scales.contiguous(), right=False).int()


def has_cdf_tables(model: EntropyModel) -> bool:
    return model.quantized_cdf.numel() > 0


def cdf_tables(model: EntropyModel) -> Tuple[List[List[int]], List[int], List[int]]:
    """``(cdfs, cdf lengths, offsets)`` as the Python lists CompressAI's rANS coder takes.

    Converting the tables on every call costs more than coding a small image, so the lists are kept on the
    model until one of its tables changes (``update()``, ``load_state_dict``).
    """
    tables = (model.quantized_cdf, model.cdf_length, model.offset)
    key = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tables)
    cached = model.__dict__.get("_slim_cdf_lists")
    if cached is None or cached[0] != key:
        lists = (tables[0].tolist(), tables[1].reshape(-1).int().tolist(), tables[2].reshape(-1).int().tolist())
        cached = (key, lists)
        model.__dict__["_slim_cdf_lists"] = cached
    return cached[1]


def resize_cdf_buffers_on_load(module: torch.nn.Module, state_dict, prefix: str, *args, **kwargs) -> None:
    """Load-state-dict pre-hook of an entropy model: CDF tables change size with the learned densities, so the
    empty buffers are sized to what is being loaded (what ``compressai.models.utils.update_registered_buffers``
    does for a ``CompressionModel``)."""
    for name in CDF_BUFFERS:
        key = prefix + name
        if key in state_dict and hasattr(module, name):
            buffer = getattr(module, name)
            if buffer.shape != state_dict[key].shape:
                module.register_buffer(name, torch.zeros_like(state_dict[key], device=buffer.device))


# ------------------------------------------------------------------------------------ the rANS coder
# CompressAI's coder (cpp_exts/rans/rans_interface.cpp over ryg_rans' rans64.h): 16-bit frequencies; the
# escape entry (the last of a table) is followed by at least one 4-bit bypass field; a 64-bit state that
# starts at 2^31, stays below 2^63, is renormalised 32 bits at a time and is flushed as 8 bytes.
RANS_PRECISION = 16
RANS_BYPASS_BITS = 4
RANS_STATE_START_BITS = 31


def min_symbol_bits(model: EntropyModel) -> float:
    """The fewest bits one symbol coded with ``model``'s CDF tables can cost: ``-log2(f / 2^16)`` for the largest
    frequency ``f`` of any entry of any table, counting an escape entry with its 4 bypass bits."""
    key = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in (model.quantized_cdf, model.cdf_length))
    cached = model.__dict__.get("_slim_min_symbol_bits")
    if cached is not None and cached[0] == key:
        return cached[1]
    cdf, lengths = model.quantized_cdf.long().cpu(), model.cdf_length.reshape(-1, 1).long().cpu()
    freqs = cdf[:, 1:] - cdf[:, :-1]
    entry = torch.arange(freqs.shape[1]).view(1, -1)
    # a table of length n has n - 1 entries: n - 2 symbols, then the escape
    regular = freqs[entry < lengths - 2]
    escape = freqs[entry == lengths - 2]
    bits = [RANS_PRECISION - math.log2(int(regular.max()))] if regular.numel() else []
    bits += [RANS_PRECISION - math.log2(int(escape.max())) + RANS_BYPASS_BITS] if escape.numel() else []
    value = min(bits)
    model.__dict__["_slim_min_symbol_bits"] = (key, value)
    return value


def min_rans_stream_bytes(symbol_counts: Sequence[Tuple[EntropyModel, int]]) -> int:
    """A lower bound on the length of any rANS stream holding ``count`` symbols of each ``(model, count)``.

    Follow ``log2`` of the encoder's state plus the 32 bits of every word it has written. It starts at 31.
    Coding a symbol of frequency ``f`` takes the state from ``x`` to ``floor(x / f)·2^16 + (x mod f) + start``,
    at least ``x·2^16/f − (f−1)(2^16−f)/f``, and ``x ≥ 2^15·f`` after renormalisation, so the sum grows by at
    least ``(1 − 2^-14)`` of the symbol's cost ``log2(2^16/f)``; a bypass field grows it by exactly its bits.
    Writing a word (the state is then ≥ 2^47) loses under 2^-14 bits. The stream ends with the 8-byte state
    (below 2^63), so ``8·bytes ≥ 31 + (1 − 2^-14)·Σ cost − 2^-14·bytes``. Shorter streams cannot come from the
    encoder; the tests check the bound against real streams of the cheapest symbols.
    """
    cost = sum(count * min_symbol_bits(model) for model, count in symbol_counts)
    slack = 2.0**-14
    return max(8, math.floor((RANS_STATE_START_BITS + (1 - slack) * cost) / (8 + slack)))
