"""The annotation pipeline on the tiny digits zoo: metrics stored where published, resumable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import write_published_zoo
from wslbench import zoo_format as fmt
from wslbench.cli import main as wslbench_main
from wslbench.splits import Split
from wslbench.zoo import Zoo
from zoo_builder.annotating.annotate import AnnotationError, AnnotationSettings, annotate_zoo

FAST = AnnotationSettings(hessian_samples=64, hessian_eig_max_iter=20, hessian_trace_hvps=30,
                          cka_samples=128, mc_steps=7, mc_eval_points=3)
LANDSCAPE_KEYS = ("log_hessian_top_ev_train", "log_hessian_top_ev_val", "log_hessian_trace_train",
                  "hessian_trace_train_hvps", "hessian_trace_train_uncertainty",
                  "representation_similarity", "curve_mc_train_error", "curve_mc_test_error",
                  "curve_mc_train_loss", "curve_mc_test_loss", "phase_rules_version")


def diverged(model) -> bool:
    """A model whose training blew up: its logits are constant, so CKA with it is undefined
    (stored as null). Whether the tiny zoo has one depends on the float rounding of the
    machine and thread count, so the tests allow it where it happens."""
    loss = model.metric("train_loss")
    return loss is None or not loss < 20.0  # chance is ln 10 = 2.3; the blown-up ones are ~60


def grid_points_with_cka(zoo: Zoo) -> dict[str, list]:
    return {key: models for key, models in zoo.grid_points().items()
            if not any(map(diverged, models))}


@pytest.fixture(scope="module")
def annotated_zoo(tiny_zoo, tmp_path_factory) -> Path:
    root = Path(shutil.copytree(tiny_zoo, tmp_path_factory.mktemp("annotated") / "zoo"))
    annotate_zoo(root, settings=FAST, progress=False)
    return root


def test_every_model_gets_the_published_keys_at_its_last_checkpoint(annotated_zoo, tiny_zoo):
    zoo = Zoo.open(annotated_zoo)
    for model in zoo.models:
        final = model.results[model.checkpoint_epochs[-1]]
        for key in LANDSCAPE_KEYS:
            assert key in final, (model.name, key)
        assert "phase" in final
        assert "representation_similarity" not in model.results[0]  # only the asked epoch
    # One CKA and one mode connectivity per grid point, shared by its seeds.
    by_point: dict[str, set] = {}
    for model in zoo.models:
        by_point.setdefault(model.grid_point, set()).add(model.metric("representation_similarity"))
    assert all(len(values) == 1 for values in by_point.values())
    with_cka = {m.name for models in grid_points_with_cka(zoo).values() for m in models}
    assert len(with_cka) >= len(zoo) - 2
    summary = zoo.summary().set_index("model")
    final = summary.groupby(level=0).tail(1)
    assert final.loc[sorted(with_cka), "representation_similarity"].notna().all()
    assert zoo.verify() == []
    assert zoo.revision != Zoo.open(tiny_zoo).revision  # the targets changed
    stored = fmt.read_manifest(annotated_zoo)
    assert stored.revision == zoo.revision == fmt.trial_dir_revision(m.path for m in zoo.models)


def test_annotation_resumes_without_recomputing(annotated_zoo):
    before = {p: p.read_bytes() for p in annotated_zoo.glob(f"*/{fmt.RESULT_FILE}")}
    annotate_zoo(annotated_zoo, settings=FAST, progress=False)
    after = {p: p.read_bytes() for p in annotated_zoo.glob(f"*/{fmt.RESULT_FILE}")}
    assert before == after


def test_a_failing_grid_point_is_reported_and_the_rest_kept(tiny_zoo, tmp_path, monkeypatch):
    import zoo_builder.annotating.annotate as annotate

    root = Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))
    real = annotate.cka_annotation
    calls = []

    def flaky(networks, model, data, job):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(networks, model, data, job)

    monkeypatch.setattr(annotate, "cka_annotation", flaky)
    with pytest.raises(AnnotationError, match="1 of 6 grid points failed"):
        annotate_zoo(root, groups=["cka"], settings=FAST, progress=False)
    def annotated(model) -> bool:  # the key is stored, null where CKA is undefined
        return "representation_similarity" in model.results[model.checkpoint_epochs[-1]]

    assert sum(map(annotated, Zoo.open(root).models)) == 10
    monkeypatch.setattr(annotate, "cka_annotation", real)
    annotate_zoo(root, groups=["cka"], settings=FAST, progress=False)
    assert all(map(annotated, Zoo.open(root).models))


def test_published_zoo_needs_its_data_set_named(tmp_path):
    root = write_published_zoo(tmp_path / "ptmz", widths=(1,), batchsizes=(32,), num_classes=10)
    with pytest.raises(AnnotationError, match="pass --dataset"):
        annotate_zoo(root, groups=["hessian"], settings=FAST, progress=False)
    annotate_zoo(root, groups=["hessian", "cka"], settings=FAST, dataset="digits",
                 progress=False)
    zoo = Zoo.open(root)
    for model in zoo.models:
        assert model.metric("hessian_trace_train") is not None
        assert model.metric("representation_similarity") is not None
    assert zoo.manifest is None and not (root / fmt.MANIFEST_FILE).exists()  # not ours
    assert (root / fmt.SUMMARY_CSV).is_file()


@pytest.mark.parametrize("task", ["hessian", "hessian_top_ev", "cka", "mode_connectivity", "phase"])
def test_landscape_tasks_evaluate(annotated_zoo, task, tmp_path, capsys):
    """Through a split file whose every part has targets (grid points without a diverged
    model), so that the test does not hang on where the iid split puts a diverged model."""
    zoo = Zoo.open(annotated_zoo)
    points = [sorted(m.name for m in models) for models in grid_points_with_cka(zoo).values()]
    split = Split(name="annotated", version=1, zoo_revision=zoo.revision,
                  train=tuple(n for names in points[:-2] for n in names),
                  val=tuple(points[-2]), test=tuple(points[-1]))
    split.save(tmp_path / "split.json")
    assert wslbench_main(["evaluate", "linear-probe", "--task", task, "--zoo",
                          str(annotated_zoo), "--split", str(tmp_path / "split.json"),
                          "--seeds", "0"]) == 0
    assert task in capsys.readouterr().out
