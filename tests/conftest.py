import os
from pathlib import Path

import pytest
import torch

# an accidental hub call must fail fast instead of hanging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
KODAK_DIR = REPO_ROOT.parent / "shared" / "data" / "kodak"


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    if not KODAK_DIR.is_dir():
        pytest.skip(f"the Kodak images are expected in {KODAK_DIR}")
    return KODAK_DIR


@pytest.fixture(autouse=True)
def _two_threads():
    # CI has two cores; pin the thread count so results do not depend on the machine
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
