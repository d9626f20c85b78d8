"""Landscape metrics of the language and PINN workloads against exact answers.

A tiny GPT (one block, model dim 4, a 12-token vocabulary, about 400 parameters) and a tiny
PINN (an MLP 2-6-6-1 on the convection problem, 67 parameters) are small enough to form the
whole Hessian of their loss with ``torch.autograd.functional.hessian``, independently of the
Hessian-vector products the annotation uses: the products must equal H v, the top eigenvalue
must lie within 1 % and the trace within 5 % of the exact ones. Mode connectivity of a model
with itself must be ~0, and CKA of a model with itself 1. Tiny annotated zoos of both domains
(the specs' ``tiny`` presets with two seeds) then go through annotation, report, plots and
``wslbench evaluate linear-probe --task hessian``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from wslbench import zoo_format as fmt
from wslbench.cli import main as wslbench_main
from wslbench.splits import Split
from wslbench.zoo import Zoo
from zoo_builder.annotating.annotate import AnnotationSettings, annotate_zoo

from zoo_builder.annotating.landscape.cka import linear_cka
from zoo_builder.annotating.landscape.hessian import operator_hessian_metrics
from zoo_builder.annotating.landscape.mode_connectivity import bezier_mode_connectivity
from zoo_builder.annotating.landscape.problems import (LanguageModelingLandscape,
                                                       PhysicsInformedLandscape, make_problem)
from zoo_builder.building.build import build_zoo
from zoo_builder.building.catalog import SPECS
from zoo_builder.data.convection import load_convection
from zoo_builder.data.text import TokenData
from zoo_builder.models.gpt import gpt2
from zoo_builder.models.pinn import pinn_mlp

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCK, VOCAB = 6, 12
GPT_PARAMS = {"training::workload": "language_modeling", "model::block_size": BLOCK,
              "training::batchsize": 4, "training::eval_batches": 2}
PINN_PARAMS = {"training::workload": "physics_informed", "dataset::name": "convection",
               "dataset::beta": 5.0, "dataset::collocation_points": 24,
               "dataset::initial_points": 8, "dataset::boundary_points": 6}


def token_data() -> TokenData:
    generator = torch.Generator().manual_seed(0)
    # a stream with structure (a repeated pattern plus noise), so a model can learn something
    pattern = torch.arange(VOCAB).repeat(40)
    noise = torch.randint(0, VOCAB, pattern.shape, generator=generator)
    stream = torch.where(torch.rand(pattern.shape, generator=generator) < 0.2, noise, pattern)
    return TokenData(stream[:400], stream[400:], vocab_size=VOCAB, name="pattern",
                     tokenizer="ids")


def tiny_gpt(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return gpt2(4, vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2,
                init_type="normal").double().eval()


def tiny_pinn(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return pinn_mlp(hidden=(6, 6)).double().eval()


def pinn_data():
    return load_convection(beta=5.0, collocation_points=24, initial_points=8,
                           boundary_points=6).to(dtype=torch.float64)


def exact_hessian(model: torch.nn.Module, loss_of_model) -> torch.Tensor:
    """The full Hessian of ``loss_of_model(model)`` over the model's parameters, by
    ``torch.autograd.functional.hessian`` of a function of the flat parameter vector."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    class Functional(torch.nn.Module):
        def __init__(self, weights):
            super().__init__()
            self.weights = weights

        def forward(self, *args):
            return functional_call(model, self.weights, args)

    def loss(theta: torch.Tensor) -> torch.Tensor:
        weights, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = math.prod(shape)
            weights[name] = theta[offset:offset + size].view(shape)
            offset += size
        return loss_of_model(Functional(weights))

    return torch.autograd.functional.hessian(loss, flat)


def check_operator(op, hessian: torch.Tensor) -> None:
    """H v from the operator equals the exact Hessian times v; top eigenvalue within 1 %,
    trace within 5 % (the annotation's estimators)."""
    assert op.dim == hessian.shape[0]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.dim, generator=generator, dtype=torch.float64)
        exact = hessian @ v
        # the operator takes the loss of float32 outputs (as for the zoos' float32 models)
        torch.testing.assert_close(op.matvec(v), exact, rtol=1e-4,
                                   atol=1e-5 * float(exact.abs().max()))
    eigenvalues = torch.linalg.eigvalsh(hessian)
    top, trace = float(eigenvalues[-1]), float(torch.trace(hessian))
    metrics = operator_hessian_metrics(op, seed=0)
    assert abs(metrics["hessian_top_ev"] - top) <= 0.01 * abs(top)
    assert abs(metrics["hessian_trace"] - trace) <= 0.05 * abs(trace)


def test_gpt_hessian_of_the_next_token_loss_is_exact():
    model = tiny_gpt(0)
    data = token_data()
    problem = LanguageModelingLandscape(GPT_PARAMS, data, samples=10, seed=3)
    tokens, targets = problem.windows("train", 10, 3)
    assert tokens.shape == (10, BLOCK)
    # the same seed draws the same windows: every model of a zoo is measured on them
    assert torch.equal(problem.windows("train", 10, 3)[0], tokens)

    def loss(network):
        logits = network(tokens)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        hessian = exact_hessian(model, loss)
    op = problem.hessian_operator(model, "train")
    op.chunk_size = 4  # uneven chunks (4, 4, 2): the weighting by window count matters
    check_operator(op, hessian)


def test_pinn_hessian_is_the_hessian_of_the_whole_training_loss():
    model = tiny_pinn(0)
    data = pinn_data()
    problem = PhysicsInformedLandscape(PINN_PARAMS, data)
    # residual + initial + boundary: exactly the loss L-BFGS minimizes
    hessian = exact_hessian(model, data.loss)
    check_operator(problem.hessian_operator(model, "train"), hessian)
    # "val" is the same loss on held-out points
    held_out = problem.held_out
    assert not torch.equal(held_out.collocation.double(), data.collocation)
    assert held_out.collocation.shape == data.collocation.shape


def test_mode_connectivity_of_a_model_with_itself_is_zero_gpt():
    model = tiny_gpt(0)
    problem = make_problem(GPT_PARAMS, token_data())
    line = bezier_mode_connectivity(model, model, problem, steps=0, batch_size=4)
    metrics = line.to_metrics()
    assert sorted(metrics) == ["curve_mc_test_error", "curve_mc_test_loss",
                               "curve_mc_train_error", "curve_mc_train_loss"]
    assert all(abs(value) < 1e-6 for value in metrics.values())
    trained = bezier_mode_connectivity(model, model, problem, steps=10, lr=0.01, batch_size=4)
    assert abs(trained.mc["train_loss"]) < 0.05 and abs(trained.mc["train_error"]) < 5.0
    assert trained.training.steps == 10


def test_mode_connectivity_of_a_model_with_itself_is_zero_pinn():
    model = tiny_pinn(0)
    problem = make_problem(PINN_PARAMS, pinn_data())
    line = bezier_mode_connectivity(model, model, problem, steps=0)
    metrics = line.to_metrics()
    # no classification error for a PINN: loss, test MSE and relative L2 error only
    assert sorted(metrics) == ["curve_mc_test_loss", "curve_mc_test_rel_l2_error",
                               "curve_mc_train_loss"]
    assert all(abs(value) < 1e-9 for value in metrics.values())
    # an untrained network is no minimum (Adam at its 1e-3 finds lower loss mid-curve), so a
    # small rate: curve training runs and leaves the curve near the point
    trained = bezier_mode_connectivity(model, model, problem, steps=10, lr=1e-5)
    for quantity in ("train_loss", "test_rel_l2_error"):  # within 1 % of the ends' value
        assert abs(trained.mc[quantity]) < 0.01 * trained.curves[quantity][0], quantity
    assert trained.training.steps == 10
    # two different networks: a curve between them measures something, and the ends are theirs
    other = tiny_pinn(1)
    pair = bezier_mode_connectivity(model, other, problem, steps=0)
    assert pair.curves["train_loss"][0] == pytest.approx(float(pinn_data().loss(model)))
    assert pair.curves["test_rel_l2_error"][-1] == pytest.approx(
        pinn_data().test_error(other)["relative_l2"])


def test_cka_representations():
    gpt_problem = make_problem(GPT_PARAMS, token_data(), cka_samples=20)
    outputs = gpt_problem.representation(tiny_gpt(0))
    assert outputs.shape == (20, VOCAB)  # logits at the last position of 20 val windows
    assert linear_cka(outputs, outputs) == pytest.approx(1.0)
    assert linear_cka(outputs, gpt_problem.representation(tiny_gpt(1))) < 0.999

    pinn_problem = make_problem(PINN_PARAMS, pinn_data())
    u_a = pinn_problem.representation(tiny_pinn(0))
    u_b = pinn_problem.representation(tiny_pinn(1))
    assert u_a.shape == (24, 1)  # u at every collocation point
    # one output: linear CKA is the squared correlation of the two solutions
    correlation = torch.corrcoef(torch.stack([u_a[:, 0], u_b[:, 0]]))[0, 1].item()
    assert linear_cka(u_a, u_b) == pytest.approx(correlation ** 2, rel=1e-6)


# ------------------------------------------------------------- annotated tiny zoos, end to end

FAST = AnnotationSettings(hessian_samples=8, hessian_eig_max_iter=20, hessian_trace_hvps=30,
                          cka_samples=16, mc_steps=7, mc_batch_size=4, mc_eval_points=3)
LANDSCAPE_KEYS = ("log_hessian_trace_train", "log_hessian_top_ev_val", "hessian_trace_train_hvps",
                  "representation_similarity", "curve_mc_train_loss", "curve_mc_test_loss",
                  "phase_v3", "phase_v3_rules_version")


def annotated_tiny_zoo(spec_name: str, seeds: tuple, root: Path) -> Path:
    """The spec's ``tiny`` preset with two seeds (CKA and mode connectivity need a pair),
    built by the real builder and annotated with small budgets."""
    spec = dataclasses.replace(SPECS.get(spec_name).with_preset("tiny"), seeds=seeds)
    build_zoo(spec, root, progress=False)
    annotate_zoo(root, settings=FAST, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_language_zoo(tmp_path_factory) -> Path:
    return annotated_tiny_zoo("shakespeare-gpt2", (1, 2), tmp_path_factory.mktemp("lm") / "zoo")


@pytest.fixture(scope="module")
def tiny_pinn_zoo(tmp_path_factory) -> Path:
    return annotated_tiny_zoo("convection-pinn", (0, 1), tmp_path_factory.mktemp("pinn") / "zoo")


@pytest.mark.parametrize("which", ["tiny_language_zoo", "tiny_pinn_zoo"])
def test_every_model_gets_every_landscape_metric(which, request):
    zoo = Zoo.open(request.getfixturevalue(which))
    language = which == "tiny_language_zoo"
    for model in zoo.models:
        final = model.results[model.checkpoint_epochs[-1]]
        for key in LANDSCAPE_KEYS:
            assert key in final, (model.name, key)
        assert final["phase_v3_rules_version"] == (
            "wslbench-phases-language-v1" if language else "wslbench-phases-pinn-v1")
        # curve_mc_*_error means a prediction error: next-token error for GPT, none for PINNs
        assert ("curve_mc_train_error" in final) == language
        assert ("curve_mc_test_rel_l2_error" in final) == (not language)
        assert final["hessian_trace_train_hvps"] >= 16
    # nothing is recomputed on a second run
    before = {m.path: (m.path / fmt.RESULT_FILE).read_bytes() for m in zoo.models}
    annotate_zoo(zoo.root, groups=["hessian", "cka", "mode_connectivity"], settings=FAST,
                 progress=False)
    assert before == {m.path: (m.path / fmt.RESULT_FILE).read_bytes() for m in zoo.models}


@pytest.mark.parametrize("which", ["tiny_language_zoo", "tiny_pinn_zoo"])
def test_report_and_plots_follow_the_domain(which, request, tmp_path):
    from zoo_builder.reporting.plots import plot_phase_diagrams
    from zoo_builder.reporting.report import zoo_report
    from zoo_builder.reporting.summaries import load_summary

    frame = load_summary(request.getfixturevalue(which))
    text, table = zoo_report(frame)
    metrics = set(table.loc[table["kind"] == "metric", "quantity"])
    if which == "tiny_language_zoo":
        assert {"train_perplexity", "test_perplexity", "curve_mc_train_loss"} <= metrics
        assert "wslbench-phases-language-v1" in text
    else:
        assert {"test_rel_l2_error", "curve_mc_test_rel_l2_error"} <= metrics
        assert "train_acc" not in metrics and "wslbench-phases-pinn-v1" in text
    written = plot_phase_diagrams(frame, tmp_path, which)
    names = {path.name for path in written}
    assert f"{which}_overview.png" in names and f"{which}_phase_map.png" in names
    if which == "tiny_language_zoo":
        assert f"{which}_test_perplexity.png" in names
    else:
        assert f"{which}_test_rel_l2_error.png" in names


@pytest.mark.parametrize("which", ["tiny_language_zoo", "tiny_pinn_zoo"])
def test_linear_probe_scores_the_hessian(which, request, tmp_path, capsys):
    root = request.getfixturevalue(which)
    zoo = Zoo.open(root)
    points = [sorted(m.name for m in models) for models in zoo.grid_points().values()]
    split = Split(name="annotated", version=1, zoo_revision=zoo.revision,
                  train=tuple(n for names in points[:-2] for n in names),
                  val=tuple(points[-2]), test=tuple(points[-1]))
    split.save(tmp_path / "split.json")
    assert wslbench_main(["evaluate", "linear-probe", "--task", "hessian", "--zoo", str(root),
                          "--split", str(tmp_path / "split.json"), "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "hessian" in out and re.search(r"-?\d+\.\d+", out)
