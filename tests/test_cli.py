import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from slim_diffusers import SLIMBitstream
from slim_diffusers.cli import main
from slim_diffusers.testing import tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    # the documented way to get a tiny model on disk, run as a user would
    subprocess.run([sys.executable, "-m", "slim_diffusers.testing", "save-tiny-pipeline", str(path)], check=True, timeout=300)
    return path


@pytest.fixture()
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name, mode, shape in [("a", "RGB", (20, 28, 3)), ("b", "L", (17, 9)), ("c", "RGBA", (8, 8, 4))]:
        path = tmp_path / f"{name}.png"
        PIL.Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
        paths.append(str(path))
    return paths


def test_compress_info_decompress_round_trip(model_dir, image_files, tmp_path, capsys):
    out = tmp_path / "slim"
    assert main(["compress", *image_files, "--model", str(model_dir), "-o", str(out), "--caption", "a cat"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    files = sorted(out.glob("*.slim"))
    assert [f.stem for f in files] == ["a", "b", "c"]
    total = sum(f.stat().st_size for f in files)
    assert summary.startswith(f"3 files, {total} bytes")
    bpp = [8 * f.stat().st_size / (h * w) for f, (h, w) in zip(files, [(20, 28), (17, 9), (8, 8)])]
    assert f"mean {np.mean(bpp):.4f} bpp" in summary

    assert main(["info", str(files[0])]) == 0
    info = capsys.readouterr().out
    bs = SLIMBitstream.load(files[0])
    assert "28×20" in info and f"{bs.bits_per_pixel:.4f}" in info and "'a cat'" in info

    png = tmp_path / "png"
    assert main(["decompress", *map(str, files), "--model", str(model_dir), "-o", str(png), "--steps", "2"]) == 0
    sizes = [PIL.Image.open(png / f"{n}.png").size for n in "abc"]
    assert sizes == [(28, 20), (9, 17), (8, 8)]


def test_no_silent_overwrite(model_dir, image_files, tmp_path, capsys):
    out = tmp_path / "slim"
    assert main(["compress", image_files[0], "--model", str(model_dir), "-o", str(out)]) == 0
    before = (out / "a.slim").read_bytes()
    assert main(["compress", image_files[0], "--model", str(model_dir), "-o", str(out), "--caption", "x"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "a.slim").read_bytes() == before
    assert main(["compress", image_files[0], "--model", str(model_dir), "-o", str(out), "--caption", "x", "--force"]) == 0
    assert (out / "a.slim").read_bytes() != before


def test_corrupt_file_gets_a_named_error(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.slim"
    bad.write_bytes(b"SLIM\x01garbage")
    assert main(["info", str(bad)]) == 1
    assert "CRC" in capsys.readouterr().err
    assert main(["decompress", str(bad), "--model", str(model_dir), "-o", str(tmp_path / "o")]) == 2
    assert "SLIMBitstreamError" in capsys.readouterr().err
    assert not (tmp_path / "o" / "bad.png").exists()


def test_decoding_with_the_wrong_model_is_refused(model_dir, image_files, tmp_path, capsys):
    other = tmp_path / "other"
    tiny_pipeline(seed=5).save_pretrained(other)
    out = tmp_path / "slim"
    main(["compress", image_files[0], "--model", str(model_dir), "-o", str(out), "--caption", ""])
    assert main(["decompress", str(out / "a.slim"), "--model", str(other), "-o", str(tmp_path / "png")]) == 2
    assert "SLIMModelMismatchError" in capsys.readouterr().err


def test_demo_runs_the_bundled_toy_model_offline(tmp_path, capsys):
    # the README's main command: the trained toy SLIM bundled in the package, its classifier, its images,
    # and a user's own image of another size and mode
    extra = tmp_path / "mine.png"
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56), dtype=np.uint8), mode="L").save(extra)
    out_dir = tmp_path / "demo"
    assert main(["demo", str(extra), "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "red_circle.png" in out and "mine.png" in out
    assert len(list(out_dir.glob("*.slim"))) == 11 and len(list(out_dir.glob("*_bits.png"))) == 11
    assert PIL.Image.open(out_dir / "mine.png").size == (56, 40)
    for path in out_dir.glob("*.slim"):  # the table's bytes and bpp are the files'
        bs = SLIMBitstream.load(path)
        row = next(line for line in out.splitlines() if line.startswith(path.stem + ".png"))
        assert f" {path.stat().st_size} " in row and f"{bs.bits_per_pixel:.4f}" in row
    # a trained model: the classifier reads the decoded bundled images as their class (random weights: ~1 in 10)
    correct, total = map(int, re.search(r"(\d+)/(\d+) bundled images decoded as their class", out).groups())
    assert total == 10 and correct >= 8
