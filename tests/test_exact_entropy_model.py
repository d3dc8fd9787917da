"""The exact entropy model: a payload decodes to the same ŷ and symbols whatever the decoder's device settings.

Another device is emulated on the CPU by what changes floating-point results between devices: the thread
count, oneDNN on or off (which also switches the integer networks from int8 GEMMs to float64), channels-last
memory, the floating-point layers in float64, another batch split and a fresh process. For the tiny model and
for a default-size model (M=320, N=192) on Kodak-sized latents (64×96 and 96×64: a 768×512 image).
"""

import contextlib
import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slim_diffusers import SLIMCompressor, SLIMDecompressor
from slim_diffusers.coding import latent_codec
from slim_diffusers.coding.bitstream import SLIMBitstream
from slim_diffusers.coding.latents import compress_latents, decompress_latents, pad_latents
from slim_diffusers.errors import SLIMBitstreamError, SLIMModelMismatchError
from slim_diffusers.testing import exact_codec, structured_latents, tiny_codec, tiny_exact_codec

REPO_ROOT = Path(__file__).resolve().parents[1]
KODAK = REPO_ROOT.parent / "shared" / "data" / "kodak"


def _kodak_sized_latents():
    image_dir = str(KODAK) if KODAK.is_dir() else None
    return [structured_latents(1, 64, 96, seed=3, image_dir=image_dir), structured_latents(1, 96, 64, seed=7, image_dir=image_dir)]


@pytest.fixture(scope="module")
def tiny():
    compressor, exact = tiny_exact_codec(seed=0)
    return compressor, exact, [structured_latents(1, 16, 24, seed=s) for s in (1, 2)]


@pytest.fixture(scope="module")
def default_size():
    torch.manual_seed(0)
    compressor, decompressor = SLIMCompressor().eval(), SLIMDecompressor().eval()
    decompressor.update(force=True)
    exact = exact_codec(compressor, decompressor, height=64, width=96, num_latents=1)
    return compressor, exact, _kodak_sized_latents()


class _Symbols:
    """Records every symbol the rANS reader hands out, in decoding order."""

    def __init__(self, monkeypatch):
        self.taken = []
        take = latent_codec._RansReader.take

        def recording(reader, indexes, model, dtype=torch.float32):
            symbols = take(reader, indexes, model, dtype)
            self.taken.append(symbols.long().reshape(-1))
            return symbols

        monkeypatch.setattr(latent_codec._RansReader, "take", recording)

    def pop(self) -> torch.Tensor:
        out, self.taken = torch.cat(self.taken), []
        return out


@contextlib.contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _decode_y_hat(decompressor, payloads, latent_shape):
    _, z_size = decompressor.code_shapes(*latent_shape[-2:])
    return decompressor.entropy_coder.decompress([list(payloads)], z_size)["y_hat"]


def _encode(compressor, decompressor, latent):
    coded = compressor(pad_latents(latent, decompressor.total_stride))
    out = decompressor.entropy_coder.compress(coded.y, coded.z)
    return out["strings"][0][0], out["y_hat"]


@pytest.mark.parametrize("model", ["tiny", "default_size"])
def test_y_hat_and_symbols_are_the_same_under_every_device_setting(model, request, monkeypatch):
    compressor, exact, latents = request.getfixturevalue(model)
    with torch.no_grad(), _threads(1):
        encoded = [_encode(compressor, exact, latent) for latent in latents]
    record = _Symbols(monkeypatch)
    settings = {
        "1 thread": (exact, lambda: _threads(1)),
        "2 threads": (exact, lambda: _threads(2)),
        "oneDNN off": (exact, lambda: torch.backends.mkldnn.flags(enabled=False)),
        "channels_last": (copy.deepcopy(exact).to(memory_format=torch.channels_last), contextlib.nullcontext),
        "float layers in float64": (copy.deepcopy(exact).double(), contextlib.nullcontext),
    }
    reference = None
    for name, (decompressor, context) in settings.items():
        # the default-size model: both orientations with one thread, the 64×96 latent under the other settings
        cases = list(zip(encoded, latents))[: None if model == "tiny" or reference is None else 1]
        with torch.no_grad(), context():
            decoded = [(_decode_y_hat(decompressor, [p], latent.shape), record.pop()) for (p, _), latent in cases]
        for ((payload, y_hat_encoder), _), (y_hat, _) in zip(cases, decoded):
            assert y_hat.dtype == torch.float64
            assert torch.equal(y_hat, y_hat_encoder), f"{model}, {name}: ŷ differs from the encoder's"
        if reference is None:
            reference = decoded
        for (y_hat, symbols), (y_ref, symbols_ref) in zip(decoded, reference):
            assert torch.equal(y_hat, y_ref) and torch.equal(symbols, symbols_ref), f"{model}, {name}"
    if latents[0].shape == latents[1].shape:  # another batch split: both payloads in one call
        with torch.no_grad():
            together = _decode_y_hat(exact, [p for p, _ in encoded], latents[0].shape)
        assert torch.equal(together, torch.cat([y for y, _ in reference]))


def test_a_fresh_process_decodes_the_same_y_hat(tiny, default_size, tmp_path):
    """Saved with save_pretrained, loaded with from_pretrained in another process: the same ŷ, bit for bit."""
    cases = {"tiny": tiny, "default": default_size}
    expected = {}
    for name, (compressor, exact, latents) in cases.items():
        exact.save_pretrained(tmp_path / name)
        with torch.no_grad():
            payload, y_hat = _encode(compressor, exact, latents[0])
        (tmp_path / f"{name}.bin").write_bytes(payload)
        expected[name] = (y_hat, tuple(latents[0].shape))
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(REPO_ROOT)!r})
        torch.set_num_threads(2)
        from slim_diffusers import SLIMDecompressor
        out = {{}}
        for name, shape in {({k: v[1] for k, v in expected.items()})!r}.items():
            dec = SLIMDecompressor.from_pretrained({str(tmp_path)!r} + "/" + name)
            payload = open({str(tmp_path)!r} + f"/{{name}}.bin", "rb").read()
            _, z_size = dec.code_shapes(*shape[-2:])
            out[name] = dec.entropy_coder.decompress([[payload]], z_size)["y_hat"]
        torch.save(out, {str(tmp_path / "out.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=str(tmp_path))
    decoded = torch.load(tmp_path / "out.pt")
    for name, (y_hat, _) in expected.items():
        assert torch.equal(decoded[name], y_hat), name


def test_loaded_exact_model_is_the_same_model(tiny, tmp_path):
    _, exact, _ = tiny
    exact.save_pretrained(tmp_path)
    loaded = SLIMDecompressor.from_pretrained(tmp_path)
    assert loaded.exact_entropy_model and loaded.config.exact_entropy_model
    assert loaded.fingerprint() == exact.fingerprint()
    for (name, a), (_, b) in zip(sorted(loaded.state_dict().items()), sorted(exact.state_dict().items())):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_exact_payloads_decode_through_the_latent_path(tiny):
    compressor, exact, latents = tiny
    payloads = compress_latents(compressor, exact, latents[0])
    decoded = decompress_latents(exact, payloads, latents[0].shape)
    assert decoded.shape == latents[0].shape and decoded.dtype == torch.float32
    # the rate estimate of eval mode describes the exact model's symbols
    with torch.no_grad():
        coded = compressor(pad_latents(latents[0], exact.total_stride))
        out = exact(coded.y, coded.z)
    assert torch.equal(out.y_hat, _encode(compressor, exact, latents[0])[1])
    bits = float(sum(-torch.log2(l).sum() for l in out.likelihoods.values()))
    assert 0.5 < 8 * len(payloads[0]) / bits < 1.5


def test_exact_rate_is_close_to_the_float_rate(tiny):
    compressor, exact, latents = tiny
    _, float_model = tiny_codec(seed=0)
    float_bytes = sum(len(compress_latents(compressor, float_model, latent)[0]) for latent in latents)
    exact_bytes = sum(len(compress_latents(compressor, exact, latent)[0]) for latent in latents)
    assert abs(exact_bytes / float_bytes - 1) < 0.02, (exact_bytes, float_bytes)


def test_an_exact_model_neither_trains_nor_converts_again(tiny):
    compressor, exact, latents = tiny
    with torch.no_grad():
        coded = compressor(pad_latents(latents[0], exact.total_stride))
    model = copy.deepcopy(exact).train()
    with pytest.raises(RuntimeError, match="does not train"):
        model(coded.y, coded.z)
    with pytest.raises(ValueError, match="already exact"):
        exact.convert_to_exact_entropy_model([(coded.y, coded.z)])


def test_short_exact_payloads_are_refused_before_decoding(tiny):
    compressor, exact, latents = tiny
    (payload,) = compress_latents(compressor, exact, latents[0])
    with pytest.raises(SLIMBitstreamError, match="cannot hold"):
        decompress_latents(exact, [payload[:8]], latents[0].shape)


# ------------------------------------------------------------------------------------ pipeline and CLI
@pytest.fixture(scope="module")
def exact_pipeline_dir(tmp_path_factory):
    """A tiny pipeline saved, then converted by ``slim convert-exact`` (calibrated on toy-world images)."""
    from slim_diffusers.cli import main
    from slim_diffusers.testing import tiny_pipeline

    root = tmp_path_factory.mktemp("exact_pipeline")
    tiny_pipeline().save_pretrained(root / "float")
    assert main(["convert-exact", str(root / "float"), str(root / "exact"), "--toy-world", "2"]) == 0
    return root


def test_pipeline_writes_version_2_and_refuses_the_other_kind(exact_pipeline_dir, capsys):
    from slim_diffusers import SLIMPipeline
    from slim_diffusers.cli import main
    from slim_diffusers.toy_world import samples

    image = samples(1, seed=5, size=64)[0].image
    exact = SLIMPipeline.from_pretrained(exact_pipeline_dir / "exact", unet=None, controlnet=None)
    float_ = SLIMPipeline.from_pretrained(exact_pipeline_dir / "float", unet=None, controlnet=None)
    assert exact.decompressor.exact_entropy_model and not float_.decompressor.exact_entropy_model
    for pipe in (exact, float_):
        pipe.set_progress_bar_config(disable=True)
    (v2,) = exact.compress(image, captions="a toy")
    (v1,) = float_.compress(image, captions="a toy")
    assert (v2.version, v2.exact_entropy_model, v1.version) == (2, True, 1)
    data = v2.to_bytes()
    assert data[4:6] == b"\x02\x01" and SLIMBitstream.from_bytes(data) == v2
    first = exact.decompress(data, use_diffusion=False, output_type="np").images
    again = exact.decompress(data, use_diffusion=False, output_type="np").images
    assert (first == again).all()
    with pytest.raises(SLIMModelMismatchError, match="needs an exact integer entropy model, but this decompressor has a floating-point entropy model"):
        float_.decompress(data, use_diffusion=False)
    with pytest.raises(SLIMModelMismatchError, match="needs a floating-point entropy model, but this decompressor has an exact integer entropy model"):
        exact.decompress(v1, use_diffusion=False)

    path = exact_pipeline_dir / "image.slim"
    v2.save(path)
    assert main(["info", str(path)]) == 0
    assert "2 (exact integer entropy model)" in capsys.readouterr().out
    v1.save(path)
    assert main(["info", str(path)]) == 0
    assert "1 (floating-point entropy model)" in capsys.readouterr().out


def test_convert_exact_keeps_every_other_component(exact_pipeline_dir):
    for component in ("compressor", "vae", "unet", "controlnet"):
        for file in (exact_pipeline_dir / "float" / component).iterdir():
            assert (exact_pipeline_dir / "exact" / component / file.name).read_bytes() == file.read_bytes()
    assert not (exact_pipeline_dir / "float" / "decompressor" / "config.json").read_text().count('"exact_entropy_model": true')
    assert '"exact_entropy_model": true' in (exact_pipeline_dir / "exact" / "decompressor" / "config.json").read_text()


def test_training_saves_an_exact_entropy_model_calibrated_on_training_images(tmp_path):
    """What ``train.py --exact_entropy_model`` does at save time."""
    from slim_diffusers import SLIMPipeline
    from slim_diffusers.testing import tiny_pipeline
    from slim_diffusers.training.training_utils import SLIMTrainingModule, exact_decompressor, save_pipeline

    module = SLIMTrainingModule.from_pipeline(tiny_pipeline())
    gen = torch.Generator().manual_seed(0)
    dataset = [{"pixels": torch.rand(3, 64, 64, generator=gen) * 2 - 1} for _ in range(2)]
    trained = module.decompressor.state_dict()
    exact = exact_decompressor(module, dataset, num_images=2)
    assert exact.exact_entropy_model and not module.decompressor.exact_entropy_model
    assert all(torch.equal(v, module.decompressor.state_dict()[k]) for k, v in trained.items())
    save_pipeline(module, tmp_path, has_lora=False, decompressor=exact)
    loaded = SLIMPipeline.from_pretrained(tmp_path, unet=None, controlnet=None)
    assert loaded.decompressor.exact_entropy_model and loaded.decompressor.fingerprint() == exact.fingerprint()
