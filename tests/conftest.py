"""Shared fixtures: the real-data root (skipped cleanly when absent) and tiny fake datasets."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `import fakes`

from fakes import make_fake_megc2019, make_flow_dataset  # noqa: E402

#: The real data lives beside the repository (``<clone>/../shared/data``); ``$EPIR_SHARED_DATA`` overrides.
SHARED_DATA = Path(os.environ.get("EPIR_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")

REAL_DATA_SKIP = (
    "../shared/data not found: real-data tests need the MEGC2019 composite set beside the repository "
    f"(looked in {SHARED_DATA}; set EPIR_SHARED_DATA to point elsewhere)"
)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real-data folder (holding htnet-composite/, ststnet-official/, ...); skips when absent."""
    if not (SHARED_DATA / "htnet-composite" / "combined_3_class2_for_optical_flow.csv").is_file():
        pytest.skip(REAL_DATA_SKIP)
    return SHARED_DATA


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fake MEGC2019 composite tree (6 subjects x 4 clips, 28x28); do not modify it in a test."""
    return make_fake_megc2019(tmp_path_factory.mktemp("fake_megc2019"))


@pytest.fixture
def fake_dataset():
    """A tiny in-memory FlowDataset (6 subjects x 4 samples, 28x28)."""
    return make_flow_dataset()


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch intra-op thread, then give back the previous count (opt-in, not autouse).

    Tiny training runs in tests also pass ``eval.threads=1`` / ``--threads 1``: on a small shared machine
    two intra-op threads on 28x28 inputs are several times slower than one (they mostly wait on each other).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EPIR checkpoint trained on synthetic data (``epir train``'s output); read-only in tests."""
    import epir
    from epir.data import load_dataset
    from epir.inference import train_checkpoint

    data = load_dataset("synthetic", n_subjects=3, clips_per_subject=4, seed=0)
    cfg = epir.make_config("epir", "synthetic", recipe="alone",  # EPIR alone: the mixed checkpoint has its own tests
                           overrides=["train.epochs=2", "model.dim=16", "model.heads=2", "model.depths=[1,1]"])
    out = tmp_path_factory.mktemp("checkpoint") / "ckpt"
    train_checkpoint(cfg, out, dataset=data, progress=False)
    return out
