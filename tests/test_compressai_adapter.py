"""Every CompressAI internal that slim_diffusers/coding/_compressai.py relies on, checked against the installed
CompressAI: an upgrade that changes one fails here, by name, before it can change a byte."""

import math

import compressai
import pytest
import torch
from compressai.ans import RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import GaussianConditionalLatentCodec

from slim_diffusers.coding import _compressai
from slim_diffusers.coding.latent_codec import scale_table


def test_version_the_adapter_was_checked_against_is_recorded():
    # informative, not a pin: the behavioural tests below decide whether a newer CompressAI is safe
    print(f"adapter checked against compressai {_compressai.CHECKED_COMPRESSAI_VERSION}; installed {compressai.__version__}")


def _decode(data: bytes, indexes, model):
    decoder = RansDecoder()
    decoder.set_stream(data)
    return decoder.decode_stream(indexes.reshape(-1).tolist(), *_compressai.cdf_tables(model))


def test_hyper_medians_and_cdf_tables_read_what_the_entropy_bottleneck_writes():
    torch.manual_seed(0)
    eb = EntropyBottleneck(5).eval()
    with torch.no_grad():
        eb.quantiles.add_(torch.randn(5, 1, 1))  # medians away from zero
    eb.update(force=True)
    z = torch.randn(1, 5, 3, 4) * 3
    (data,) = eb.compress(z)
    medians = _compressai.hyper_medians(eb)
    assert medians.shape == (5, 1, 1)
    indexes = torch.arange(5).view(1, 5, 1, 1).expand(1, 5, 3, 4)  # the channel of each symbol
    assert torch.equal(indexes.int(), eb._build_indexes(z.shape))
    symbols = torch.tensor(_decode(data, indexes, eb), dtype=torch.float32).view(z.shape)
    assert torch.equal(symbols, torch.round(z - medians))


def test_scale_indexes_and_cdf_tables_read_what_the_gaussian_conditional_writes():
    torch.manual_seed(0)
    gc = GaussianConditional(None)
    gc.update_scale_table(scale_table(), force=True)
    table = gc.scale_table
    # table entries themselves, their neighbours, values below the lower bound and above the table
    scales = torch.cat([table, torch.nextafter(table, table + 1), torch.nextafter(table, table - 1),
                        torch.tensor([1e-6, 0.05, 300.0, 1e4]), torch.rand(200) * 50]).view(1, 1, -1, 1)
    assert torch.equal(_compressai.scale_indexes(gc, scales), gc.build_indexes(scales))
    means = torch.randn_like(scales)
    y = means + torch.randn_like(scales) * scales.clamp(max=20)
    indexes = gc.build_indexes(scales)
    (data,) = gc.compress(y, indexes, means)
    symbols = torch.tensor(_decode(data, indexes, gc), dtype=torch.float32).view(y.shape)
    assert torch.equal(symbols, torch.round(y - means))


def test_gaussian_params_split_as_the_codec_forward_does():
    codec = GaussianConditionalLatentCodec(gaussian_conditional=GaussianConditional(None), chunks=("means", "scales"))
    params = torch.randn(2, 6, 3, 3)
    scales, means = _compressai.gaussian_params(codec, params)
    assert torch.equal(means, params[:, :3]) and torch.equal(scales, params[:, 3:])


@pytest.mark.parametrize("model", [EntropyBottleneck(3), GaussianConditional(None)])
def test_cdf_buffers_carry_the_names_the_load_hook_resizes(model):
    names = {name for name, _ in model.named_buffers()}
    assert {"_quantized_cdf", "_offset", "_cdf_length"} <= names
    assert set(_compressai.CDF_BUFFERS) >= {"_quantized_cdf", "_offset", "_cdf_length"}
    assert model.quantized_cdf is model._quantized_cdf and model.offset is model._offset
    assert model.cdf_length is model._cdf_length


def _cheapest_stream(model, n: int, escape: bool) -> bytes:
    """n symbols of the likeliest regular entry (or of the escape entry) of any of ``model``'s tables."""
    from compressai.ans import BufferedRansEncoder

    cdfs, lengths, offsets = _compressai.cdf_tables(model)
    last = {True: lambda n_: [n_ - 2], False: lambda n_: range(n_ - 2)}[escape]
    _, row, entry = max((cdfs[r][j + 1] - cdfs[r][j], r, j) for r in range(len(cdfs)) for j in last(lengths[r]))
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes([entry + offsets[row]] * n, [row] * n, cdfs, lengths, offsets)
    return encoder.flush()


@pytest.mark.parametrize("kind", ["entropy_bottleneck", "gaussian_conditional"])
def test_min_stream_bytes_is_below_every_stream_and_close_to_the_cheapest(kind):
    # the bound must hold for the cheapest streams the coder can write (every symbol the most frequent entry of
    # a table, or its escape entry), and be tight for the cheaper of the two, or it would refuse nothing
    torch.manual_seed(0)
    if kind == "entropy_bottleneck":
        model = EntropyBottleneck(4).eval()
        model.update(force=True)
    else:
        model = GaussianConditional(None)
        model.update_scale_table(scale_table(), force=True)
    for n in (2, 1000, 300_000):
        sizes = [len(_cheapest_stream(model, n, escape)) for escape in (False, True)]
        bound = _compressai.min_rans_stream_bytes([(model, n)])
        assert 8 <= bound <= min(sizes), (n, bound, sizes)
        assert min(sizes) - bound <= 8 + 1e-3 * min(sizes), (n, bound, sizes)


def test_min_symbol_bits_counts_the_bypass_bits_of_an_escape():
    eb = EntropyBottleneck(3).eval()
    eb.update(force=True)
    cdf, lengths = eb.quantized_cdf.long(), eb.cdf_length.long()
    freqs = [(cdf[r, 1 : lengths[r]] - cdf[r, : lengths[r] - 1]).tolist() for r in range(len(lengths))]
    regular = max(max(f[:-1]) for f in freqs)
    escape = max(f[-1] for f in freqs)
    expected = min(16 - math.log2(regular), 16 - math.log2(escape) + 4)
    assert _compressai.min_symbol_bits(eb) == pytest.approx(expected)
