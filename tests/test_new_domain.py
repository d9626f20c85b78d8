"""The documented new-domain example (docs/new_domain.md) builds as a zoo that wslbench reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "breast_cancer_mlp.py"


def _zoo_builder(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoo_builder.cli", "--plugin", str(EXAMPLE),
                           *args], capture_output=True, text=True, timeout=300)


def test_example_plugin_lists_shows_and_builds_with_two_workers(tmp_path):
    listing = _zoo_builder("ls")
    assert listing.returncode == 0, listing.stderr
    assert "breast-cancer-mlp" in listing.stdout
    shown = _zoo_builder("show", "breast-cancer-mlp")
    assert "models      48 = 4 width x 4 batch size x 3 seeds" in shown.stdout

    # Two workers: the spawned processes must import the plugin themselves.
    built = _zoo_builder("build", "breast-cancer-mlp", "--preset", "tiny", "--out",
                         str(tmp_path / "zoo"), "--workers", "2")
    assert built.returncode == 0, built.stderr
    zoo = Zoo.open(tmp_path / "zoo")
    assert len(zoo) == 4
    for model in zoo:
        assert model.model_args["type"] == "tabular_mlp"
        results = fmt.read_results(model.path)
        assert len(results) == 3
        assert results[-1]["train_loss"] < results[0]["train_loss"]
        assert 0.5 < results[-1]["test_acc"] <= 1.0


def test_unknown_plugin_file_is_a_clear_error(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "zoo_builder.cli", "--plugin",
                              str(tmp_path / "nope.py"), "ls"], capture_output=True, text=True)
    assert missing.returncode == 2
    assert "nope.py' does not exist" in missing.stderr
