import gzip
import random

import numpy as np
import pytest

from slim_diffusers.evaluation.bd_rate import METHODS
from slim_diffusers.evaluation.errors import RowsFileError
from slim_diffusers.evaluation.report import bd_rates, summarize
from slim_diffusers.evaluation.statistics import (
    UnpairedRowsError,
    _cubic_integral,
    _pchip_integral,
    accuracy_interval,
    bd_table_with_intervals,
    bootstrap_bd,
    plot_rate_accuracy_bands,
    read_rows_gz,
    resample_indices,
    summarize_with_intervals,
    write_rows_gz,
)

CLASSIFIERS = ["microsoft/resnet-50", "facebook/convnext-tiny-224"]


def make_rows(codec, points, correct, classifiers=CLASSIFIERS, size=64):
    """Harness rows of one codec: ``points`` maps a rate point to per-image bytes, ``correct`` maps it to per-image
    top-1 hits (one boolean array, or one per classifier). Label 0; a miss still has the label in its top-5."""
    rows = []
    for point, num_bytes in points.items():
        hits = correct[point]
        for i, b in enumerate(num_bytes):
            top5 = {}
            for j, clf in enumerate(classifiers):
                hit = hits[j][i] if np.ndim(hits) == 2 else hits[i]
                top5[clf] = [0, 1, 2, 3, 4] if hit else [1, 0, 2, 3, 4]
            rows.append({
                "codec": codec, "rate_point": str(point), "index": i, "width": size, "height": size,
                "file": f"bitstreams/{codec}/{point}/{i}.bin", "bytes": int(b), "bpp": 8 * int(b) / (size * size),
                "label": 0, "top5": top5, "encode_seconds": 0.01, "decode_seconds": 0.02,
            })
    return rows


def random_codec(rng, codec, n, scale, points=(1, 2, 3, 4), skill=0.0):
    """A codec whose accuracy rises with its rate points, per-image bytes and hits drawn at random."""
    bytes_, hits = {}, {}
    for q in points:
        bytes_[q] = rng.integers(20, 60, size=n) * scale * q
        p = min(0.97, 0.25 + 0.17 * q + skill)
        hits[q] = rng.random((len(CLASSIFIERS), n)) < p
    return make_rows(codec, bytes_, hits)


# --- Wilson ---------------------------------------------------------------------------------------------------


def test_wilson_matches_published_values():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17:857, Table I,
    # method 3 (score interval without continuity correction), four decimals
    for (correct, n), (low, high) in {
        (81, 263): (0.2553, 0.3662),
        (15, 148): (0.0624, 0.1605),
        (0, 20): (0.0000, 0.1611),
        (1, 29): (0.0061, 0.1718),
    }.items():
        got = accuracy_interval(correct, n)
        assert got == pytest.approx((100 * low, 100 * high), abs=0.005)


def test_wilson_at_none_and_all_correct():
    z2 = 1.959963984540054**2
    for n in (1, 10, 1000):
        # at 0/n the upper end is z²/(n + z²); n/n mirrors it
        assert accuracy_interval(0, n) == (0.0, pytest.approx(100 * z2 / (n + z2), rel=1e-12))
        assert accuracy_interval(n, n) == (pytest.approx(100 * n / (n + z2), rel=1e-12), 100.0)
    low, high = accuracy_interval(37, 100)
    assert accuracy_interval(63, 100) == (pytest.approx(100 - high), pytest.approx(100 - low))
    assert accuracy_interval(370, 1000)[1] - accuracy_interval(370, 1000)[0] < high - low
    wide = accuracy_interval(37, 100, confidence=0.99)
    assert wide[0] < low and wide[1] > high
    with pytest.raises(ValueError, match="at least one image"):
        accuracy_interval(0, 0)
    with pytest.raises(ValueError, match="between 0 and n"):
        accuracy_interval(11, 10)


def test_summary_with_intervals_keeps_the_report_summary():
    rng = np.random.default_rng(0)
    rows = random_codec(rng, "jpeg", 50, 1) + random_codec(rng, "slim", 50, 1, skill=0.1)
    plain, with_ci = summarize(rows, CLASSIFIERS), summarize_with_intervals(rows, CLASSIFIERS)
    for codec, points in plain.items():
        for point, entry in points.items():
            got = with_ci[codec][point]
            assert {k: got[k] for k in entry} == entry
            low, high = got["bpp_ci"]
            assert low < entry["mean_bpp"] < high
            for clf in CLASSIFIERS:
                for metric in ("top1", "top5"):
                    low, high = got[f"{metric}_ci"][clf]
                    assert low <= entry[metric][clf] <= high
            assert got["top5_ci"][CLASSIFIERS[0]] == [pytest.approx(100 * 50 / (50 + 1.959963984540054**2)), 100.0]


# --- batched integrals against scipy and numpy -----------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7])
def test_batched_integrals_match_scipy_and_numpy(k):
    from scipy.interpolate import PchipInterpolator

    rng = np.random.default_rng(k)
    x = np.sort(rng.uniform(-2, 2, size=(40, k)), axis=1)
    y = rng.normal(size=(40, k))  # any shape, including sign changes of the slope
    y[:5] = np.cumsum(np.abs(y[:5]), axis=1)  # and some monotone ones
    y[5, 1:] = y[5, 0]  # flat
    lo = x[:, 0] + (x[:, -1] - x[:, 0]) * rng.uniform(0, 0.4, size=40)
    hi = x[:, -1] - (x[:, -1] - x[:, 0]) * rng.uniform(0, 0.4, size=40)
    pchip, cubic = _pchip_integral(x, y, lo, hi), _cubic_integral(x, y, lo, hi)
    for i in range(40):
        assert pchip[i] == pytest.approx(PchipInterpolator(x[i], y[i]).integrate(lo[i], hi[i]), abs=1e-10)
        primitive = np.polynomial.Polynomial.fit(x[i], y[i], deg=min(3, k - 1)).integ()
        assert cubic[i] == pytest.approx(primitive(hi[i]) - primitive(lo[i]), abs=1e-9)


# --- paired bootstrap -----------------------------------------------------------------------------------------


def test_half_the_bits_at_equal_accuracy_is_minus_50_percent_in_every_replicate():
    rng = np.random.default_rng(1)
    n = 300
    points = {q: rng.integers(100, 200, size=n) * 2 * q for q in (1, 2, 4, 8)}  # even: halves exactly
    # nested hits: an image right at one rate point stays right at the higher ones
    difficulty = rng.random(n)
    hits = {q: difficulty < 0.2 + 0.18 * i for i, q in enumerate(points)}
    rows = make_rows("anchor", points, hits) + make_rows("half", {q: b // 2 for q, b in points.items()}, hits)
    result = bootstrap_bd(rows, CLASSIFIERS, "anchor", replicates=200, seed=3)
    assert result["images"] == n and result["codecs"] == ["half"]
    for clf in CLASSIFIERS:
        for method in METHODS:
            cell = result["deltas"]["half"][clf][method]["bd_rate"]
            assert cell["estimate"] == pytest.approx(-50.0, abs=1e-9)
            # paired: every replicate halves the anchor's bits exactly, so the interval is a point
            assert cell["low"] == pytest.approx(-50.0, abs=1e-9) and cell["high"] == pytest.approx(-50.0, abs=1e-9)
            assert cell["not_computable"] == 0.0
            acc = result["deltas"]["half"][clf][method]["bd_accuracy"]
            # the replicates do differ (BD-accuracy moves with the resampled curves); only the ratio of rates does not
            assert acc["estimate"] > 1.0 and acc["low"] < acc["estimate"] < acc["high"]


@pytest.mark.parametrize("envelope", [True, False])
def test_each_replicate_is_the_report_on_the_resampled_images(envelope):
    rng = np.random.default_rng(2)
    n = 80  # few images: noisy curves, so some replicates cannot be compared
    rows = (random_codec(rng, "anchor", n, 1) + random_codec(rng, "better", n, 1, skill=0.08)
            + random_codec(rng, "cheap", n, 0.5, points=(1, 2, 3)))
    random.Random(0).shuffle(rows)  # the harness's shards interleave rows
    replicates = 25
    result = bootstrap_bd(rows, CLASSIFIERS, "anchor", replicates=replicates, seed=5, envelope=envelope,
                          return_replicates=True)
    assert result["codecs"] == sorted(result["codecs"], key=[r["codec"] for r in rows].index)
    reference = bd_rates(summarize(rows, CLASSIFIERS), CLASSIFIERS, "anchor", envelope=envelope)
    by_key = {(r["codec"], r["rate_point"], r["index"]): r for r in rows}
    cells = sorted({(r["codec"], r["rate_point"]) for r in rows})
    seen_nan = False
    for r, draw in enumerate(resample_indices(n, replicates, seed=5)):
        resampled = [by_key[(codec, point, int(i))] for codec, point in cells for i in draw]
        expected = bd_rates(summarize(resampled, CLASSIFIERS), CLASSIFIERS, "anchor", envelope=envelope)
        for method in METHODS:
            for codec in ("better", "cheap"):
                for clf in CLASSIFIERS:
                    for delta in ("bd_rate", "bd_accuracy"):
                        want = expected[method][codec][clf][delta]
                        got = result["replicate_values"][codec][clf][method][delta][r]
                        if want is None:
                            assert np.isnan(got)
                            seen_nan = True
                        else:
                            assert got == pytest.approx(want, abs=1e-8)
                        if r == 0:
                            assert result["deltas"][codec][clf][method][delta]["estimate"] == \
                                reference[method][codec][clf][delta]
    assert seen_nan or envelope


def test_resamples_that_break_monotonicity_are_counted_not_hidden():
    rng = np.random.default_rng(4)
    n = 400
    points = {q: rng.integers(100, 140, size=n) * q for q in (1, 2, 3, 4)}
    # the middle rate points are 1.5 accuracy points apart (200 and 206 of 400 right) with independent hits, so a
    # resample often ranks them the other way round
    hits = {1: rng.permutation(n) < 120, 2: rng.permutation(n) < 200, 3: rng.permutation(n) < 206,
            4: rng.permutation(n) < 320}
    rows = make_rows("anchor", points, hits) + make_rows("test", {q: b // 2 + 1 for q, b in points.items()}, hits)
    strict = bootstrap_bd(rows, CLASSIFIERS, "anchor", replicates=300, seed=0, envelope=False)
    cell = strict["deltas"]["test"][CLASSIFIERS[0]]["pchip"]["bd_rate"]
    assert cell["estimate"] is not None  # the full sample is monotonic
    assert 0.05 < cell["not_computable"] < 0.95
    assert cell["low"] <= cell["estimate"] <= cell["high"]
    # BD-accuracy needs no monotonic curve
    assert strict["deltas"]["test"][CLASSIFIERS[0]]["pchip"]["bd_accuracy"]["not_computable"] == 0.0
    # the envelope drops the point that buys nothing, so every replicate has a BD-rate
    envelope = bootstrap_bd(rows, CLASSIFIERS, "anchor", replicates=300, seed=0, envelope=True)
    assert envelope["deltas"]["test"][CLASSIFIERS[0]]["pchip"]["bd_rate"]["not_computable"] == 0.0
    assert "| test | resnet-50 |" in bd_table_with_intervals(strict)


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(6)
    rows = random_codec(rng, "anchor", 60, 1) + random_codec(rng, "test", 60, 1, skill=0.05)
    a = bootstrap_bd(rows, CLASSIFIERS, "anchor", replicates=50, seed=11)
    assert bootstrap_bd(rows, CLASSIFIERS, "anchor", replicates=50, seed=11) == a
    assert bootstrap_bd(rows, CLASSIFIERS, "anchor", replicates=50, seed=12) != a


def test_unpaired_rows_get_a_named_error():
    rng = np.random.default_rng(7)
    rows = random_codec(rng, "anchor", 10, 1) + random_codec(rng, "test", 10, 1)
    with pytest.raises(UnpairedRowsError, match="differ in images \\[9\\].*finish the run"):
        bootstrap_bd(rows[:-1], CLASSIFIERS, "anchor", replicates=5)
    with pytest.raises(UnpairedRowsError, match="two rows for image 0"):
        bootstrap_bd(rows + rows[:1], CLASSIFIERS, "anchor", replicates=5)
    with pytest.raises(UnpairedRowsError, match="anchor codec 'webp'"):
        bootstrap_bd(rows, CLASSIFIERS, "webp", replicates=5)
    with pytest.raises(UnpairedRowsError, match="classifier 'vit'"):
        bootstrap_bd(rows, ["vit"], "anchor", replicates=5)
    # leaving the incomplete codec out is the way round
    rows += random_codec(rng, "unfinished", 10, 1)[:-3]
    assert bootstrap_bd(rows, CLASSIFIERS, "anchor", codecs=["test"], replicates=5)["codecs"] == ["test"]


def test_table_shows_intervals_and_explains_what_is_missing():
    rng = np.random.default_rng(8)
    rows = random_codec(rng, "anchor", 100, 1) + random_codec(rng, "test", 100, 0.5, skill=0.05)
    rows += random_codec(rng, "far", 100, 1, points=(1, 2), skill=0.7)  # accuracies above the anchor's: no overlap
    result = bootstrap_bd(rows, CLASSIFIERS, "anchor", replicates=100)
    table = bd_table_with_intervals(result)
    assert "| codec | classifier | BD-rate pchip (%) | BD-rate cubic (%) | BD-accuracy pchip (pt) | not computable |" \
        in table
    cell = result["deltas"]["test"]["microsoft/resnet-50"]["pchip"]["bd_rate"]
    assert f"{cell['estimate']:+.1f} [{cell['low']:+.1f}, {cell['high']:+.1f}]" in table
    assert "| far | resnet-50 | n/a[^1] |" in table and "[^1]: " in table and "100 images" in table


# --- committed rows and the plot ------------------------------------------------------------------------------


def test_gz_rows_round_trip_and_rewrite_to_the_same_bytes(tmp_path):
    rng = np.random.default_rng(9)
    rows = random_codec(rng, "anchor", 20, 1) + random_codec(rng, "slim", 20, 0.5)
    rows[0]["encode_seconds"] = 0.1 + 0.2  # a float that needs all its digits
    path = tmp_path / "rows.jsonl.gz"
    write_rows_gz(rows, path)
    first = path.read_bytes()
    assert first[4:8] == b"\0\0\0\0"  # no time stamp in the gzip header
    back = read_rows_gz(path)
    key = lambda r: (r["codec"], r["rate_point"], r["index"])  # noqa: E731
    assert back == sorted(rows, key=key)
    shuffled = list(back)
    random.Random(1).shuffle(shuffled)
    write_rows_gz(shuffled, tmp_path / "again.jsonl.gz")
    assert (tmp_path / "again.jsonl.gz").read_bytes() == first
    assert gzip.decompress(first).decode().splitlines()[0].startswith('{"bpp": ')  # sorted keys

    path.write_bytes(first[: len(first) // 2])
    with pytest.raises(RowsFileError, match="not a complete gzip file"):
        read_rows_gz(path)
    path.write_bytes(gzip.compress(b'{"codec": "a"}\nnot json\n'))
    with pytest.raises(RowsFileError, match="line 2"):
        read_rows_gz(path)


@pytest.mark.filterwarnings("error::DeprecationWarning")  # matplotlib's own, e.g. on how xerr is passed
def test_plot_with_bands_writes_a_png(tmp_path):
    rng = np.random.default_rng(10)
    rows = [r for c in range(12) for r in random_codec(rng, f"codec {c}", 30, 1 + c / 4, skill=c / 40)]
    rows += random_codec(rng, "one point", 30, 0.5, points=(1,))  # a curve of one rate point (caption only)
    summary = summarize_with_intervals(rows, CLASSIFIERS)
    assert all(p.get("bpp_ci") for points in summary.values() for p in points.values())  # the bars are drawn
    path = tmp_path / "rate_accuracy_ci.png"
    plot_rate_accuracy_bands(summary, CLASSIFIERS, path, styles={"codec 0": {"color": "black", "label": "anchor"}},
                             titles={CLASSIFIERS[1]: "ConvNeXt (never trained on toy world)"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
