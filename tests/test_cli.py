import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import slim_diffusers
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
    assert main(["info", str(bad)]) == 2
    assert "CRC" in capsys.readouterr().err
    assert main(["decompress", str(bad), "--model", str(model_dir), "-o", str(tmp_path / "o")]) == 2
    assert "SLIMBitstreamError" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before the folder was made


def test_decoding_with_the_wrong_model_is_refused_naming_the_file(model_dir, image_files, tmp_path, capsys):
    other = tmp_path / "other"
    tiny_pipeline(seed=5).save_pretrained(other)
    out = tmp_path / "slim"
    main(["compress", *image_files[:2], "--model", str(model_dir), "-o", str(out), "--caption", ""])
    capsys.readouterr()
    files = [str(out / "a.slim"), str(out / "b.slim")]
    assert main(["decompress", *files, "--model", str(other), "-o", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("SLIMModelMismatchError" in line for line in err)
    assert files[0] in err[0] and files[1] in err[1] and "bitstream 0" not in err[0]
    assert not (tmp_path / "png").exists()


def test_the_bundled_model_by_name_decodes_with_its_own_settings(tmp_path, capsys):
    # `--model toy` is the bundled model, decoded with assets/toy/demo.json's settings (the golden files' too)
    from tests.golden.update_golden import FILES, matches_reference

    golden = json.loads((Path(__file__).parent / "golden" / "bundled_toy.json").read_text())
    name = sorted(golden["files"])[0]
    source, reference = FILES / f"{name}.slim", FILES / f"{name}.png"
    assert main(["decompress", str(source), "--model", "toy", "-o", str(tmp_path / "a")]) == 0
    decoded = PIL.Image.open(tmp_path / "a" / f"{name}.png")
    ok, how_far = matches_reference(decoded, golden["files"][name]["pixels_sha256"], reference)
    assert ok, how_far
    assert main(["decompress", str(source), "--model", "toy", "-o", str(tmp_path / "b"), "--steps", "4"]) == 0
    ok, how_far = matches_reference(PIL.Image.open(tmp_path / "b" / f"{name}.png"),
                                    golden["files"][name]["pixels_sha256"], reference)
    assert not ok, how_far


def test_decode_settings_come_from_the_command_line_then_the_model(tmp_path):
    import argparse
    from slim_diffusers import cli

    toy, other = cli._resolve_model("toy"), cli._Model("x", "x")
    given = argparse.Namespace(steps=3, strength=None)
    bundled = _bundled_demo()["decode"]
    assert bundled["num_inference_steps"] != 3 and bundled["strength"] != 1.0  # so that each source below shows
    assert cli._decode_settings(argparse.Namespace(steps=None, strength=None), toy) == {
        "num_inference_steps": bundled["num_inference_steps"], "strength": bundled["strength"]}
    assert cli._decode_settings(given, toy) == {"num_inference_steps": 3, "strength": bundled["strength"]}
    assert cli._decode_settings(given, other) == {"num_inference_steps": 3, "strength": 1.0}


# ------------------------------------------------------------------------------------------- mistakes
def _bundled_demo() -> dict:
    """The bundled toy model's own settings: its rate levels, default rate and decode settings."""
    return json.loads((Path(slim_diffusers.__file__).parent / "assets" / "toy" / "demo.json").read_text())


def _slim(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "slim_diffusers.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory, model_dir):
    """Inputs for the mistakes below: a corrupt file, a 27-byte file claiming 16384², a file of another model,
    a text file named .png, an empty folder, a plain file where a folder is expected."""
    import struct
    import zlib

    from slim_diffusers.coding.bitstream import write_uvarint

    root = tmp_path_factory.mktemp("mistakes")
    (root / "bad.slim").write_bytes(b"SLIM\x01garbage")
    body = bytearray(b"SLIM\x01")
    write_uvarint(16384, body)
    write_uvarint(16384, body)
    body += bytes(4) + b"\x00\x06" + bytes(6)
    (root / "bomb.slim").write_bytes(bytes(body) + struct.pack("<I", zlib.crc32(body)))
    (bs,) = tiny_pipeline(seed=0).compress(PIL.Image.new("RGB", (16, 16)), captions="")
    bs.save(root / "tiny.slim")
    (root / "text.png").write_text("not an image")
    (root / "empty").mkdir()
    (root / "file").write_text("x")
    PIL.Image.new("RGB", (16, 16)).save(root / "ok.png")
    (root / "earlier-demo").mkdir()
    (root / "earlier-demo" / "striped_star.png").write_text("an earlier run's file")
    return root


MISTAKES = {
    "missing slim": (["info", "missing.slim"], "missing.slim: no such file"),
    "missing image": (["compress", "missing.png", "--model", "toy", "-o", "out"], "missing.png: no such file"),
    "not an image": (["compress", "text.png", "--model", "toy", "-o", "out"], "text.png: not an image"),
    "no model folder": (["compress", "ok.png", "--model", "./my-model", "-o", "out"], "no SLIM model at ./my-model"),
    "not a model folder": (["compress", "ok.png", "--model", "empty", "-o", "out"], "no SLIM model at empty"),
    "hub offline": (["compress", "ok.png", "--model", "org/slim", "-o", "out"],
                    "no SLIM model at org/slim: no such folder here, and it could not be fetched from the Hugging Face Hub"),
    # a missing folder whose name could be a Hub id: named as the model, not as --rates, and with no "stacktrace above"
    "evaluate missing model": (["evaluate", "--model", "slim-lr1", "--dataset", "data", "-o", "out", "--classifiers",
                                "clf"], "no SLIM model at slim-lr1: no such folder here"),
    "corrupt file": (["decompress", "bad.slim", "--model", "toy", "-o", "out"], "SLIMBitstreamError: bad.slim"),
    "bomb": (["decompress", "bomb.slim", "--model", "toy", "-o", "out"], "SLIMDecodeLimitError: bomb.slim"),
    "other model": (["decompress", "tiny.slim", "--model", "toy", "-o", "out"], "SLIMModelMismatchError: tiny.slim"),
    "bad flag": (["decompress", "tiny.slim", "--model", "toy", "-o", "out", "--steps", "0"], "--steps"),
    "output is a file": (["decompress", "tiny.slim", "--model", "toy", "-o", "file"], "file: exists and is not a folder"),
    "demo over earlier files": (["demo", "-o", "earlier-demo"], "earlier-demo: exists and is not empty; pass --force"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_each_mistake_is_one_line_and_a_non_zero_status(mistakes, name):
    argv, expected = MISTAKES[name]
    result = _slim(*argv, cwd=mistakes)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (mistakes / "out").exists()  # no empty output folder left behind
    assert (mistakes / "earlier-demo" / "striped_star.png").read_text() == "an earlier run's file"


def test_unexpected_errors_are_one_line_and_debug_adds_the_traceback(mistakes, model_dir):
    argv = ["decompress", "tiny.slim", "--model", str(model_dir), "-o", "out", "--device", "no-such-device"]
    plain = _slim(*argv, cwd=mistakes)
    assert plain.returncode == 1 and len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert "--debug" in plain.stderr and "Traceback" not in plain.stderr
    debug = _slim("--debug", *argv, cwd=mistakes)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert not (mistakes / "out").exists()


def test_demo_runs_the_bundled_toy_model_offline(tmp_path, capsys):
    # the README's main command: the trained toy SLIM bundled in the package, its classifier, its images,
    # and a user's own image of another size and mode
    extra = tmp_path / "mine.png"
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 56), dtype=np.uint8), mode="L").save(extra)
    out_dir = tmp_path / "demo"
    assert main(["demo", str(extra), "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    bundled = sorted((Path(slim_diffusers.__file__).parent / "assets" / "images").glob("*.png"))
    assert bundled and all(path.name in out for path in bundled) and "mine.png" in out
    n = len(bundled) + 1
    assert len(list(out_dir.glob("*.slim"))) == n and len(list(out_dir.glob("*_bits.png"))) == n
    assert PIL.Image.open(out_dir / "mine.png").size == (56, 40)
    for path in out_dir.glob("*.slim"):  # the table's bytes and bpp are the files'
        bs = SLIMBitstream.load(path)
        row = next(line for line in out.splitlines() if line.startswith(path.stem + ".png"))
        assert f" {path.stat().st_size} " in row and f"{bs.bits_per_pixel:.4f}" in row
    # a trained model: the classifier reads most decoded bundled images as their kind (random weights: ~1 in 5), and
    # more than chance as their class (~1 in 20); the fine class is what the toy world makes hard at this rate
    correct, total, kind = map(int, re.search(
        r"(\d+)/(\d+) bundled images decoded as their class, (\d+)/\d+ as their kind", out).groups())
    assert total == len(bundled) and kind >= total // 2 and correct >= 2


def test_demo_at_the_lowest_rate_of_the_bundled_variable_rate_model(tmp_path, capsys):
    # the bundled model codes at any of its levels: rate 0 writes fewer bytes than the default (its highest level,
    # which the golden files were written at)
    demo = _bundled_demo()
    top = len(demo["rate_levels"]) - 1
    assert demo["default_rate"] == top > 0
    out_dir = tmp_path / "demo-low"
    assert main(["demo", "--rate", "0", "-o", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"rate 0 of levels 0…{top}" in out
    files = sorted(out_dir.glob("*.slim"))
    assert files and all(SLIMBitstream.load(f).rate == 0 for f in files)
    golden = sorted((Path(__file__).parent / "golden" / "bundled_toy").glob("*.slim"))
    assert [f.name for f in files] == [f.name for f in golden]
    assert all(SLIMBitstream.load(f).rate == top for f in golden)
    assert sum(f.stat().st_size for f in files) < sum(f.stat().st_size for f in golden)


def test_a_warning_during_the_progress_bar_gets_a_line_of_its_own(tmp_path):
    # the bundled model has no captioner: compressing without --caption warns that an empty caption is sent; the
    # warning must start a line of its own (tqdm redraws its bar with carriage returns), not follow the bar's text
    image = Path(slim_diffusers.__file__).parent / "assets" / "images" / "striped_star.png"
    result = _slim("compress", str(image), "--model", "toy", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    segments = re.split(r"[\r\n]", result.stderr)
    warned = [s for s in segments if "sending an empty caption" in s]
    assert len(warned) == 1 and warned[0].startswith("no caption given"), result.stderr
