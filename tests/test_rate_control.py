"""Rate control: compress(target_bytes=/target_bpp=, target_mean=) and slim compress --target-bytes/--target-bpp.

The search (slim_diffusers.coding.rate_control) is checked on size tables, where the answer is known, including
tables whose bytes are not monotone in the rate; the pipeline on every bundled image with the bundled model
(`--model toy`), against an exhaustive sweep of the 1/16 grid on two of them.
"""

import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from slim_diffusers import SLIMBitstream, SLIMPipeline, SLIMRateControlError, SLIMTargetSizeError
from slim_diffusers.cli import ASSETS, main
from slim_diffusers.coding.bitstream import RATE_STEPS
from slim_diffusers.coding.rate_control import RATE_SEARCH_WINDOW, allocate_mean_rate, highest_fitting_rate
from slim_diffusers.testing import tiny_pipeline

IMAGES = sorted((ASSETS / "images").glob("*.png"))


def highest(sizes, budget):
    """The answer by definition: the highest grid point whose size fits, or None."""
    fitting = [u for u, s in enumerate(sizes) if s <= budget]
    return max(fitting) if fitting else None


# ------------------------------------------------------------------------------------------ the search
def test_search_on_monotone_sizes_finds_the_highest_fitting_rate_in_few_encodes():
    rng = np.random.default_rng(0)
    sizes = list(np.cumsum(rng.integers(0, 3, 97)) * 4 + 40)  # rANS-like steps of whole words, with plateaus
    top = len(sizes) - 1
    budget_encodes = 3 + math.ceil(math.log2(top)) + RATE_SEARCH_WINDOW
    for budget in range(sizes[0], sizes[-1] + 5):
        search = highest_fitting_rate(lambda u: sizes[u], top, budget)
        assert search.units == highest(sizes, budget) and search.size <= budget
        assert search.sizes == {u: sizes[u] for u in search.sizes}  # every measurement is recorded
        assert search.encodes <= budget_encodes, (budget, search.encodes)
    assert highest_fitting_rate(lambda u: sizes[u], top, sizes[-1]).encodes == 1  # a generous target: one encode


def test_search_returns_a_fitting_file_whenever_one_exists_even_where_bytes_dip():
    rng = np.random.default_rng(1)
    for trial in range(200):
        sizes = list(np.cumsum(rng.integers(-2, 4, 33)) * 4 + 200)  # bytes that go down as well as up
        top = len(sizes) - 1
        for budget in sorted(set(sizes)) + [min(sizes) - 1]:
            best = highest(sizes, budget)
            if best is None:
                with pytest.raises(SLIMTargetSizeError, match=f"smallest file .* is {min(sizes)} bytes") as err:
                    highest_fitting_rate(lambda u: sizes[u], top, budget)
                assert err.value.smallest == min(sizes)
                continue
            search = highest_fitting_rate(lambda u: sizes[u], top, budget)
            assert sizes[search.units] <= budget
            # nothing fits from the next grid point up to window + 1 steps above the one chosen
            assert all(sizes[u] > budget for u in range(search.units + 1, min(search.units + RATE_SEARCH_WINDOW + 2, top + 1)))
            exhaustive = highest_fitting_rate(lambda u: sizes[u], top, budget, exhaustive=True)
            assert exhaustive.units == best and exhaustive.encodes == top + 1


def test_a_dip_just_above_the_bisection_boundary_is_used():
    # rate 0 fits, the boundary falls at 4|5, and 6 fits again: the window finds it
    sizes = [10, 11, 12, 13, 14, 30, 14, 31, 32, 40, 50, 60, 70, 80, 90, 99, 120]
    search = highest_fitting_rate(lambda u: sizes[u], len(sizes) - 1, 14)
    assert search.units == 6
    # rate 0 does not fit but a higher rate does: found by the scan
    sizes = [20, 18, 9, 30, 40]
    assert highest_fitting_rate(lambda u: sizes[u], 4, 10).units == 2


def test_mean_allocation_meets_the_mean_and_spends_the_budget_where_it_is_cheapest():
    rng = np.random.default_rng(2)
    tables = [list(np.cumsum(rng.integers(1, 4, 49)) * 4 + rng.integers(20, 200)) for _ in range(5)]
    pixels = [96 * 96, 64 * 80, 128 * 128, 96 * 96, 50 * 70]
    bpp = lambda i, u: 8 * tables[i][u] / pixels[i]  # noqa: E731
    for target in np.linspace(np.mean([bpp(i, 0) for i in range(5)]), np.mean([bpp(i, 48) for i in range(5)]), 9):
        searches = allocate_mean_rate([lambda u, t=t: t[u] for t in tables], pixels, 48, target)
        units = [s.units for s in searches]
        mean = np.mean([bpp(i, u) for i, u in enumerate(units)])
        assert mean <= target * (1 + 1e-12)  # the allocation compares exactly; np.mean may round up
        low = min(units)
        assert max(units) - low <= 1  # one common rate, some images one step above it
        if low < 48:
            assert np.mean([bpp(i, low + 1) for i in range(5)]) > target  # the common rate is the highest that fits
            spare = target * 5 - sum(bpp(i, u) for i, u in enumerate(units))
            # no image left at the common rate could still have been raised
            assert all(bpp(i, low + 1) - bpp(i, low) > spare for i, u in enumerate(units) if u == low)
    with pytest.raises(SLIMTargetSizeError, match="smallest mean") as err:
        allocate_mean_rate([lambda u, t=t: t[u] for t in tables], pixels, 48, 0.5 * np.mean([bpp(i, 0) for i in range(5)]))
    assert err.value.smallest == pytest.approx(np.mean([bpp(i, 0) for i in range(5)]))


# ----------------------------------------------------------------------------------- the bundled model
@pytest.fixture(scope="module")
def vr_pipe():
    """The tiny variable-rate pipeline (2 levels: 17 grid rates; gains spread so that its untrained codec's bytes change
    with the rate): cheaper than the bundled model where a test measures the whole grid."""
    pipe = tiny_pipeline(num_rate_levels=2)
    log_gains = 1.5 * (torch.arange(2, dtype=torch.float32) - 1)[:, None]
    with torch.no_grad():
        pipe.compressor.rate_gains.log_gains.copy_(log_gains.expand_as(pipe.compressor.rate_gains.log_gains))
        pipe.decompressor.rate_inverse_gains.log_gains.copy_(-log_gains.expand_as(pipe.compressor.rate_gains.log_gains))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def toy():
    pipe = SLIMPipeline.from_pretrained(str(ASSETS / "toy" / "slim"), unet=None, controlnet=None, text_encoder=None,
                                        tokenizer=None)
    assert pipe.num_rate_levels >= 2
    return pipe


@pytest.fixture(scope="module")
def bundled():
    return [PIL.Image.open(p).convert("RGB") for p in IMAGES]


def caption(path: Path) -> str:
    return "a " + path.stem.split("_")[1]


@pytest.fixture(scope="module")
def sweeps(toy, bundled):
    """The whole 1/16 grid of two bundled images: the bytes of the file at every rate. Their bytes dip: plain_star's
    by four grid steps (47 bytes at rates 5/16 … 8/16, 43 at 9/16 … 11/16), checked_triangle's by two."""
    top = RATE_STEPS * (toy.num_rate_levels - 1)
    out = {}
    for i in [IMAGES.index(ASSETS / "images" / f"{name}.png") for name in ("plain_star", "checked_triangle")]:
        out[i] = [toy.compress(bundled[i], caption(IMAGES[i]), rate=u / RATE_STEPS)[0].num_bytes for u in range(top + 1)]
    return out


def test_every_bundled_image_fits_targets_from_its_smallest_to_its_largest_file(toy, bundled):
    top = RATE_STEPS * (toy.num_rate_levels - 1)
    n = len(IMAGES)
    assert n == 20
    encodes = []
    for i, (path, image) in enumerate(zip(IMAGES, bundled)):
        text = caption(path)
        smallest = toy.compress(image, text, rate=0)[0].num_bytes
        largest = toy.compress(image, text)[0].num_bytes  # the highest level
        target = smallest + (largest - smallest) * i // (n - 1)  # the set spans its images' range, end to end
        (bs,) = toy.compress(image, text, target_bytes=target)
        search = toy.last_rate_searches[0]
        assert bs.num_bytes <= target and bs.num_bytes == search.size, path.name
        assert bs.rate == search.rate and bs.version == 3 and bs.caption == text
        units = round(bs.rate * RATE_STEPS)
        if units < top:  # the next grid rate up does not fit
            assert toy.compress(image, text, rate=(units + 1) / RATE_STEPS)[0].num_bytes > target, path.name
        else:
            assert target == largest
        encodes.append(search.encodes)
        assert search.encodes < top + 1  # a dip above the boundary costs more bisection, never the whole grid
        if i == n // 2:
            (per_pixel,) = toy.compress(image, text, target_bpp=8 * target / (image.width * image.height))
            assert per_pixel == bs  # the same file: the target in bits per pixel is the same number of bytes
    assert np.mean(encodes) <= 3 + math.ceil(math.log2(top)) + RATE_SEARCH_WINDOW  # one bisection, on average


def test_chosen_rate_is_the_highest_that_fits_on_the_exhaustive_sweep(toy, bundled, sweeps):
    top = RATE_STEPS * (toy.num_rate_levels - 1)
    for i, sizes in sweeps.items():
        assert any(b < a for a, b in zip(sizes, sizes[1:]))  # not monotone: what the search must cope with
        assert min(sizes) == sizes[0]  # rate 0 writes the smallest file here
        for budget in sorted(set(sizes)):  # every size the grid reaches, smallest to largest
            assert highest_fitting_rate(lambda u: sizes[u], top, budget).units == highest(sizes, budget)
        for budget in (sizes[0], (sizes[0] + sizes[-1]) // 2):
            (bs,) = toy.compress(bundled[i], caption(IMAGES[i]), target_bytes=budget)
            assert round(bs.rate * RATE_STEPS) == highest(sizes, budget) and bs.num_bytes == sizes[round(bs.rate * 16)]


def test_mean_mode_meets_the_batch_mean_on_the_bundled_model(toy, bundled):
    images, texts = bundled[::5], [caption(p) for p in IMAGES[::5]]
    at_level = lambda r: [bs.bits_per_pixel for bs in toy.compress(images, texts, rate=r)]  # noqa: E731
    target = float(np.mean(at_level(2) + at_level(3)))  # between two levels' means
    bitstreams = toy.compress(images, texts, target_bpp=target, target_mean=True)
    bpp = [bs.bits_per_pixel for bs in bitstreams]
    assert np.mean(bpp) <= target
    rates = [bs.rate for bs in bitstreams]
    assert 2 <= min(rates) <= 3 and max(rates) - min(rates) <= 1 / RATE_STEPS
    common = min(rates)  # the next common rate up does not fit the mean
    assert np.mean([bs.bits_per_pixel for bs in toy.compress(images, texts, rate=common + 1 / RATE_STEPS)]) > target


def test_an_impossible_target_names_the_smallest_file_over_the_whole_grid(vr_pipe, bundled):
    image = bundled[3]
    top = RATE_STEPS * (vr_pipe.num_rate_levels - 1)
    sizes = [vr_pipe.compress(image, "x", rate=u / RATE_STEPS)[0].num_bytes for u in range(top + 1)]
    with pytest.raises(SLIMTargetSizeError, match=f"smallest file is {min(sizes)} bytes") as err:
        vr_pipe.compress(image, "x", target_bytes=min(sizes) - 1)
    assert err.value.smallest == min(sizes)
    (bs,) = vr_pipe.compress(image, "x", target_bytes=min(sizes))
    assert bs.num_bytes == min(sizes) and round(bs.rate * RATE_STEPS) == highest(sizes, min(sizes))


def test_size_target_arguments_are_checked(toy, bundled):
    image = bundled[0]
    with pytest.raises(SLIMRateControlError, match="not both"):
        toy.compress(image, "a circle", rate=2, target_bytes=100)
    with pytest.raises(SLIMRateControlError, match="not both"):
        toy.compress(image, "a circle", target_bytes=100, target_bpp=0.1)
    with pytest.raises(SLIMRateControlError, match="target_mean=True needs target_bpp"):
        toy.compress(image, "a circle", target_mean=True)
    with pytest.raises(SLIMRateControlError, match="give target_bpp"):
        toy.compress(image, "a circle", target_bytes=100, target_mean=True)
    for bad in (0, -5, 10.5, "many", float("nan")):
        with pytest.raises(SLIMRateControlError, match="target_bytes must be a positive whole number"):
            toy.compress(image, "a circle", target_bytes=bad)
    fixed = tiny_pipeline()
    with pytest.raises(SLIMRateControlError, match="target_bpp= needs a variable-rate model"):
        fixed.compress(image, "a circle", target_bpp=0.5)


# ------------------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def vr_model_dir(tmp_path_factory, vr_pipe):
    path = tmp_path_factory.mktemp("vr")
    vr_pipe.save_pretrained(path)
    return path


def test_cli_target_bytes_and_bpp(vr_pipe, vr_model_dir, bundled, tmp_path, capsys):
    images = [str(p) for p in IMAGES[:3]]
    low = [vr_pipe.compress(im, "", rate=0)[0] for im in bundled[:3]]  # the command line sends no caption
    high = [vr_pipe.compress(im, "")[0] for im in bundled[:3]]
    target = max(bs.num_bytes for bs in low)
    out = tmp_path / "fit"
    assert main(["compress", *images, "--model", str(vr_model_dir), "-o", str(out), "--target-bytes", str(target)]) == 0
    files = [out / f"{Path(p).stem}.slim" for p in images]
    assert all(f.stat().st_size <= target for f in files)
    printed = capsys.readouterr().out
    bs = SLIMBitstream.load(files[0])
    assert f"{images[0]}: rate {bs.rate:g}, {bs.num_bytes} bytes" in printed
    assert main(["info", str(files[0])]) == 0
    assert f"rate             {bs.rate:g}" in capsys.readouterr().out

    mean = tmp_path / "mean"
    target_bpp = float(np.mean([bs.bits_per_pixel for bs in low + high]))
    assert main(["compress", *images, "--model", str(vr_model_dir), "-o", str(mean), "--target-bpp",
                 repr(target_bpp), "--target-mean"]) == 0
    bpp = [SLIMBitstream.load(mean / f"{Path(p).stem}.slim").bits_per_pixel for p in images]
    assert np.mean(bpp) <= target_bpp * (1 + 1e-12)
    assert f"mean {np.mean(bpp):.4f} bpp" in capsys.readouterr().out


def test_cli_impossible_target_and_fixed_rate_model_are_one_line(vr_model_dir, tmp_path, capsys):
    image = str(IMAGES[0])
    assert main(["compress", image, "--model", str(vr_model_dir), "-o", str(tmp_path / "tiny"), "--caption", "a shape",
                 "--target-bytes", "10"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if line.strip() and not line.startswith("compress:")]  # tqdm's bar
    assert len(err) == 1 and err[0].startswith(f"error: SLIMTargetSizeError: {image}: ")
    assert "smallest file is" in err[0] and not (tmp_path / "tiny").exists()

    fixed = tmp_path / "fixed"
    tiny_pipeline().save_pretrained(fixed)
    for flag, value in (("--target-bytes", "100"), ("--target-bpp", "0.1")):
        assert main(["compress", image, "--model", str(fixed), "-o", str(tmp_path / "o"), flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag} needs a variable-rate model" in err[0] and f"--model {fixed}" in err[0]
    assert main(["compress", image, "--model", str(vr_model_dir), "-o", str(tmp_path / "o"), "--target-mean"]) == 2
    assert "--target-mean needs --target-bpp" in capsys.readouterr().err
    for args in (["--rate", "1", "--target-bytes", "100"], ["--target-bytes", "0"], ["--target-bpp", "x"]):
        with pytest.raises(SystemExit) as usage:  # a usage mistake: argparse's one line
            main(["compress", image, "--model", str(vr_model_dir), "-o", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert usage.value.code == 2 and len(err) == 1
