import os
from pathlib import Path

import pytest
import torch

# an accidental hub call must fail fast instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# the 24 Kodak PNGs (kodim01.png … kodim24.png) that the tests training a tiny codec read: $SLIM_KODAK_DIR, else
# ../shared/data/kodak next to the checkout
KODAK_DIR = Path(os.environ.get("SLIM_KODAK_DIR") or REPO_ROOT.parent / "shared" / "data" / "kodak")


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    if not KODAK_DIR.is_dir() or not any(p.suffix.lower() == ".png" for p in KODAK_DIR.iterdir()):
        pytest.skip(
            f"no Kodak images in {KODAK_DIR}: set SLIM_KODAK_DIR to a folder holding the 24 Kodak PNGs "
            "(kodim01.png … kodim24.png), or put them there"
        )
    return KODAK_DIR


@pytest.fixture(autouse=True)
def _two_threads():
    # CI has two cores; pin the thread count so results do not depend on the machine
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
