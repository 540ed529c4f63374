import os
import sys
import tempfile
from pathlib import Path

# Offline before anything imports huggingface_hub (it reads HF_HUB_OFFLINE at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# hf_spectral's on-disk module-info cache: a fresh one per test session, never the user's ~/.cache.
os.environ["HF_SPECTRAL_CACHE"] = tempfile.mkdtemp(prefix="hf_spectral_test_cache_")

sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _share_cores_between_workers():
    """Under pytest-xdist, split the cores between workers: oversubscribed OpenMP threads slowed small
    matrix products and SVDs 10-50x on the 2-core CI machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_subnormal_floats():
    """recipes/grokking.py flushes subnormal floats for its whole process (a script's choice); a test that runs
    its main must not leave that on for the next tests of the worker (hypothesis refuses to run under it)."""
    yield
    import torch

    torch.set_flush_denormal(False)
