"""User predictors through `wslbench evaluate`: the README's template, run from a file, a
module path and an installed entry point, with the command's options."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from wslbench.cli import main as wslbench_main
from wslbench.predictor import ENTRY_POINT_GROUP, entry_points, load_predictor_class
from wslbench.splits import resolve_split
from wslbench.zoo import Zoo

README = Path(__file__).parents[1] / "README.md"


def readme_template() -> str:
    """The python block after the README's template-predictor marker."""
    text = README.read_text()
    match = re.search(r"<!-- template-predictor[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its template predictor block"
    return match.group(1)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """The template as module ``my_model`` on sys.path, declared as entry point
    ``norm-probe`` by an installed-looking distribution (a dist-info folder on sys.path)."""
    (tmp_path / "my_model.py").write_text(readme_template())
    dist = tmp_path / "my_model-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-model\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nnorm-probe = my_model:NormProbe\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_model", None)


def _evaluate(model: str, zoo: Path, out: Path, *extra: str) -> dict:
    code = wslbench_main(["evaluate", model, "--task", "test_acc", "--zoo", str(zoo),
                          "--seeds", "0", "1", "--output", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("how", ["file", "file:Class", "module", "module:Class", "entry point"])
def test_user_predictor_runs_from_file_module_and_entry_point(user_package, tiny_zoo, how):
    reference = {"file": str(user_package / "my_model.py"),
                 "file:Class": f"{user_package / 'my_model.py'}:NormProbe",
                 "module": "my_model", "module:Class": "my_model:NormProbe",
                 "entry point": "norm-probe"}[how]
    result = _evaluate(reference, tiny_zoo, user_package / "result.json")
    split, _ = resolve_split(Zoo.open(tiny_zoo), "iid")
    assert result["predictor"]["class"].endswith("NormProbe")
    assert set(result["predictions"]) == {"0", "1"}
    assert set(result["predictions"]["0"]) == set(split.test)  # per-model predictions
    assert result["split"]["sha256"] == split.sha256
    assert all(isinstance(v, float) for v in result["predictions"]["1"].values())


def test_entry_points_are_listed(user_package, capsys):
    assert "norm-probe" in entry_points()
    assert wslbench_main(["ls", "models"]) == 0
    assert "norm-probe" in capsys.readouterr().out


def test_evaluate_options_zoo_by_name_split_and_device(user_package, tiny_zoo, monkeypatch,
                                                        capsys):
    monkeypatch.setenv("WSLBENCH_ZOOS", str(tiny_zoo.parent))
    result = _evaluate("norm-probe", Path(tiny_zoo.name), user_package / "ood.json",
                       "--split", "ood-width")
    assert result["split"]["name"] == "ood-width"
    assert Path(result["zoo"]["path"]) == tiny_zoo.resolve()
    # The template takes no device: a clear error, not a silent CPU run.
    assert wslbench_main(["evaluate", "norm-probe", "--task", "test_acc", "--zoo",
                          str(tiny_zoo), "--device", "cpu"]) == 2
    assert "takes no device argument" in capsys.readouterr().err
    assert wslbench_main(["evaluate", "norm-probe", "--task", "test_acc", "--zoo",
                          "digits-nowhere"]) == 2
    assert "no zoo 'digits-nowhere'" in capsys.readouterr().err


def test_device_reaches_predictors_that_take_one(tmp_path, tiny_zoo):
    seen = tmp_path / "devices.txt"
    source = tmp_path / "device_model.py"
    source.write_text(textwrap.dedent(f'''
        import numpy as np

        class OnDevice:
            def __init__(self, seed=0, device="cpu"):
                with open({str(seen)!r}, "a") as log:  # the predictor runs in its own process
                    log.write(device + "\\n")

            def fit(self, train, train_targets, val, val_targets):
                self.mean = float(np.mean(train_targets))

            def predict(self, models):
                return np.full(len(models), self.mean)
    '''))
    result = _evaluate(str(source), tiny_zoo, tmp_path / "r.json", "--device", "cpu")
    assert seen.read_text().split() == ["cpu", "cpu"]
    assert result["provenance"]["hardware"].startswith("cpu")


def test_a_file_with_several_predictors_needs_a_class_name(tmp_path):
    source = tmp_path / "two.py"
    source.write_text(readme_template() + "\n\nclass Other(NormProbe):\n    pass\n")
    with pytest.raises(ImportError, match="defines 2 predictor classes"):
        load_predictor_class(str(source))
    assert load_predictor_class(f"{source}:Other").__name__ == "Other"
