"""Golden files: the bundled toy model must keep writing the same bytes and decoding them to the same pixels.

Round-trip tests cannot see a change that moves encoder and decoder together (a reordered symbol, a new
rounding): these digests can. ``tests/golden/update_golden.py`` rewrites them, on purpose only.
"""

import json

import pytest
from PIL import Image

from tests.golden import update_golden as golden

RECORD = json.loads(golden.RECORD.read_text())


@pytest.fixture(scope="module")
def pipe():
    from slim_diffusers import SLIMPipeline

    pipe = SLIMPipeline.from_pretrained(str(golden.MODEL))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", sorted(RECORD["files"]))
def test_bundled_model_writes_the_golden_bytes(pipe, name):
    entry = RECORD["files"][name]
    with Image.open(golden.IMAGES / entry["image"]) as image:
        (bitstream,) = pipe.compress(image, captions=entry["caption"])
    data = bitstream.to_bytes()
    assert golden.sha256(data) == entry["slim_sha256"], f"{name}: the .slim bytes changed"
    assert data == (golden.FILES / f"{name}.slim").read_bytes()


@pytest.mark.parametrize("name", sorted(RECORD["files"]))
def test_golden_files_decode_to_the_golden_pixels(pipe, name):
    entry = RECORD["files"][name]
    data = (golden.FILES / f"{name}.slim").read_bytes()
    assert golden.sha256(data) == entry["slim_sha256"]
    settings = RECORD["decode"]
    # the recorded digest, or the reference PNG within the tolerance of another CPU's kernels (update_golden.py)
    without = golden.decoded(pipe, data, settings, use_diffusion=False)
    ok, how_far = golden.matches_reference(without, entry["pixels_without_diffusion_sha256"],
                                           golden.FILES / f"{name}_without_diffusion.png")
    assert ok, f"{name}: ẑ decodes differently ({how_far})"
    with_diffusion = golden.decoded(pipe, data, settings, use_diffusion=True)
    ok, how_far = golden.matches_reference(with_diffusion, entry["pixels_sha256"], golden.FILES / f"{name}.png")
    assert ok, f"{name}: diffusion decodes differently ({how_far})"


def test_the_pixel_tolerance_sees_a_changed_decode(pipe):
    # four times the recorded steps (from the same start): a change the tolerance must not absorb
    name = sorted(RECORD["files"])[0]
    data = (golden.FILES / f"{name}.slim").read_bytes()
    settings = {**RECORD["decode"], "num_inference_steps": 4 * RECORD["decode"]["num_inference_steps"]}
    changed = golden.decoded(pipe, data, settings, use_diffusion=True)
    ok, how_far = golden.matches_reference(changed, RECORD["files"][name]["pixels_sha256"], golden.FILES / f"{name}.png")
    assert not ok, how_far
