from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


@pytest.fixture(autouse=True, scope="session")
def native_cpu_kernels():
    """oneDNN off in the test process: torch 2.13's CPU build corrupts memory in oneDNN
    convolution backward passes on one thread (the `one_thread` fixture) and crashed the run
    ("double free or corruption"). Annotation turns it off the same way; builds train in worker
    processes, whose oneDNN is untouched (see zoo_builder.annotating.annotate)."""
    import torch

    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = enabled


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Split files and other caches go to a temporary folder, never to ~/.cache."""
    monkeypatch.setenv("WSLBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module of tiny networks: faster, and two threads spin on a
    shared machine. Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """The digits-resnet18 `tiny` zoo, built once per test session by the real builder."""
    from zoo_builder.building.build import build_zoo
    from zoo_builder.building.catalog import SPECS

    spec = SPECS.get("digits-resnet18").with_preset("tiny")
    return build_zoo(spec, tmp_path_factory.mktemp("tiny_zoo"), progress=False)
