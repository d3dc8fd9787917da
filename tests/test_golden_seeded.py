"""Golden files of the seeded tiny models: version 1 (floating-point entropy model) and version 2 (exact).

The version 2 files must decode to the recorded ``ŷ`` digest on every device; here also with oneDNN off and
two threads. ``tests/golden/update_golden_seeded.py`` rewrites them, on purpose only.
"""

import json

import pytest
import torch

from tests.golden import update_golden_seeded as golden

RECORD = json.loads(golden.RECORD.read_text())


@pytest.fixture(scope="module")
def models():
    built = golden.models()
    for kind, (_, decompressor) in built.items():
        recorded = RECORD["models"][kind]["fingerprint"]
        assert decompressor.fingerprint().hex() == recorded, (
            f"the seeded {kind} tiny model itself changed (model {decompressor.fingerprint().hex()}, recorded "
            f"{recorded}): its construction, not the coder; regenerate with tests/golden/update_golden_seeded.py "
            "if that was meant"
        )
    return built


@pytest.mark.parametrize("name", sorted(RECORD["files"]))
def test_golden_files_decode_to_the_recorded_y_hat(models, name):
    entry = RECORD["files"][name]
    data = (golden.FILES / f"{name}.slim").read_bytes()
    assert golden.sha256(data) == entry["slim_sha256"]
    assert data[4] == entry["version"] == (2 if entry["model"] == "exact" else 1)
    _, decompressor = models[entry["model"]]
    y_hat = golden.decoded_y_hat(decompressor, data)
    digest = golden.tensor_sha256(y_hat)
    if entry["model"] == "exact" or digest == entry["y_hat_sha256"]:
        assert digest == entry["y_hat_sha256"]
    else:  # version 1 on another CPU: the same symbols, the float means within rounding (update_golden_seeded.py)
        from safetensors.torch import load_file

        reference = load_file(str(golden.FILES / f"{name}.y_hat.safetensors"))["y_hat"]
        assert y_hat.shape == reference.shape and y_hat.dtype == reference.dtype
        assert torch.allclose(y_hat, reference, rtol=0, atol=golden.Y_HAT_ATOL), (
            f"{name}: ŷ differs by up to {(y_hat - reference).abs().max():.3g}")
    if entry["model"] == "exact":
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            with torch.backends.mkldnn.flags(enabled=False):
                y_hat = golden.decoded_y_hat(decompressor, data)
        finally:
            torch.set_num_threads(threads)
        assert golden.tensor_sha256(y_hat) == entry["y_hat_sha256"], f"{name}: ŷ depends on the decoder's settings"


@pytest.mark.parametrize("name", sorted(RECORD["files"]))
def test_seeded_models_write_the_golden_bytes(models, name):
    entry = RECORD["files"][name]
    compressor, decompressor = models[entry["model"]]
    data = golden.encode(compressor, decompressor, golden.latents(*entry["latent"]))
    assert data == (golden.FILES / f"{name}.slim").read_bytes(), f"{name}: the .slim bytes changed"
