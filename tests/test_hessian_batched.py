"""Seed-batched Hessian metrics: the models of a grid point through one stacked operator.

Each model must get the values it gets alone: the stacked products equal each model's own
:class:`HessianOperator` (and the exact Hessian), and the estimators, run in lockstep on the
same probe vectors, end with the same eigenvalues, traces and product counts up to the float
rounding of the grouped kernels.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

from helpers import write_published_zoo
from test_hessian import conv_bn, exact_hessian, mlp
from wslbench import zoo_format as fmt
from wslbench.zoo import Zoo
from zoo_builder.annotating.annotate import AnnotationSettings, annotate_zoo
from zoo_builder.annotating.landscape.problems import MathAttention
from zoo_builder.annotating.landscape.hessian import (
    ClosureHessianOperator,
    HessianOperator,
    NotStackableError,
    StackedHessianOperator,
    lanczos_top_eigenvalue,
    operator_hessian_metrics,
    stacked_hessian_metrics,
    stacked_lanczos_top_eigenvalue,
)
from zoo_builder.models import resnet18, vit

pytestmark = pytest.mark.usefixtures("one_thread")

#: Small budgets: the comparison is between two ways of computing the same run.
BUDGETS = dict(eig_max_iter=30, trace_hvps=40)


def seeds_of(make, x: torch.Tensor, seeds=(0, 1, 2)) -> list[nn.Module]:
    """One model per seed, with BatchNorm statistics moved off their init, in eval mode."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = make().train()
        with torch.no_grad():
            model(x)
        models.append(model.eval())
    return models


def data(shape: tuple[int, ...], n: int, classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=generator),
            torch.randint(0, classes, (n,), generator=generator))


@pytest.mark.parametrize("make, shape", [(conv_bn, (1, 8, 8)), (mlp, (10,))],
                         ids=["conv_bn", "mlp"])
@pytest.mark.parametrize("chunk_size", [24, 64], ids=["3 chunks", "one chunk (kept graph)"])
def test_stacked_products_equal_each_model_and_the_exact_hessian(make, shape, chunk_size):
    x, y = data(shape, 64, 3)
    models = seeds_of(make, x)
    stacked = StackedHessianOperator(models, x, y, chunk_size=chunk_size)
    vectors = torch.randn(3, stacked.dim, 4, dtype=torch.float64)
    products = stacked.matmat(vectors)
    for index, model in enumerate(models):
        alone = HessianOperator(model, x, y, chunk_size=chunk_size).matmat(vectors[index])
        torch.testing.assert_close(products[index], alone, rtol=1e-5, atol=1e-6)
        exact = exact_hessian(model, x, y) @ vectors[index]
        torch.testing.assert_close(products[index], exact, rtol=1e-4, atol=1e-5)
    # a subset, in another order (as when some models' estimators have finished), and again
    # on the kept graph
    for _ in range(2):
        part = stacked.matmat(vectors[[2, 0], :, :1], models=[2, 0])
        torch.testing.assert_close(part, products[[2, 0], :, :1], rtol=1e-5, atol=1e-6)
    assert stacked.n_hvps == 3 * 4 + 2 * 2
    assert all(not m.training for m in models)


def assert_same_metrics(alone: dict[str, float], batched: dict[str, float]) -> None:
    assert batched.keys() == alone.keys()
    for key in ("hessian_top_ev_hvps", "hessian_trace_hvps"):
        assert batched[key] == alone[key], key
    assert batched["hessian_top_ev"] == pytest.approx(alone["hessian_top_ev"], rel=1e-5)
    assert batched["hessian_trace"] == pytest.approx(alone["hessian_trace"], rel=1e-4)
    assert batched["hessian_trace_uncertainty"] == pytest.approx(
        alone["hessian_trace_uncertainty"], rel=1e-3)
    # the Lanczos residual bound is tiny; it agrees to a small fraction of the eigenvalue
    assert abs(batched["hessian_top_ev_uncertainty"] - alone["hessian_top_ev_uncertainty"]) \
        <= 1e-6 * abs(alone["hessian_top_ev"])


@pytest.mark.parametrize("width", [1, 2])
def test_stacked_metrics_equal_per_model_metrics_resnet18(width):
    x, y = data((1, 8, 8), 24, 10)
    models = seeds_of(lambda: resnet18(width=width, num_classes=10, in_channels=1), x)
    alone = [operator_hessian_metrics(HessianOperator(m, x, y), **BUDGETS) for m in models]
    stacked = StackedHessianOperator(models, x, y)
    batched = stacked_hessian_metrics(stacked, **BUDGETS)
    for one, many in zip(alone, batched):
        assert_same_metrics(one, many)
    # the models differ, so each must have got its own values
    assert len({round(m["hessian_top_ev"], 6) for m in batched}) == 3
    top = [lanczos_top_eigenvalue(HessianOperator(m, x, y), max_iter=30) for m in models]
    top_batched = stacked_lanczos_top_eigenvalue(stacked, max_iter=30)
    for one, many in zip(top, top_batched):
        assert many.n_hvps == one.n_hvps
        assert many.value == pytest.approx(one.value, rel=1e-5)


def test_stacked_metrics_equal_per_model_metrics_vit_with_per_model_seeds():
    """Attention under vmap (on the math kernel: the CPU's flash kernel has no double
    backward), and a different probe seed per model."""
    x, y = data((1, 8, 8), 16, 10)
    models = seeds_of(lambda: MathAttention(vit(embedding_dim=12, num_classes=10, in_channels=1,
                                                image_size=8, depth=1, heads=2)), x, seeds=(0, 1))
    alone = [operator_hessian_metrics(HessianOperator(m, x, y), seed=s, **BUDGETS)
             for m, s in zip(models, (5, 7))]
    batched = stacked_hessian_metrics(StackedHessianOperator(models, x, y), seed=[5, 7],
                                      **BUDGETS)
    for one, many in zip(alone, batched):
        assert_same_metrics(one, many)


def test_what_does_not_stack_says_why():
    x, y = data((1, 8, 8), 16, 3)
    small, other_shape = conv_bn(), nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(NotStackableError, match="architecture and shape"):
        StackedHessianOperator([small, other_shape], x, y)
    closure = ClosureHessianOperator(small, lambda model: model(x).square().mean())
    with pytest.raises(NotStackableError, match="ClosureHessianOperator.*vmap"):
        StackedHessianOperator.from_operators([closure, closure])
    other = HessianOperator(conv_bn(), x + 1, y)
    with pytest.raises(NotStackableError, match="different data"):
        StackedHessianOperator.from_operators([HessianOperator(small, x, y), other])


HESSIAN_KEYS = [f"{stat}hessian_{name}_{part}{suffix}"
                for stat, suffix in (("", ""), ("", "_uncertainty"), ("", "_hvps"), ("log_", ""))
                for name, part in (("top_ev", "train"), ("trace", "train"), ("top_ev", "val"))]


def test_annotation_seed_batched_by_default_equals_one_at_a_time(tmp_path, monkeypatch):
    root = write_published_zoo(tmp_path / "batched", widths=(1,), batchsizes=(32,),
                               seeds=(0, 1, 2), num_classes=10)
    single = shutil.copytree(root, tmp_path / "single")
    fast = AnnotationSettings(hessian_samples=32, hessian_eig_max_iter=20, hessian_trace_hvps=30)
    assert fast.hessian_seed_batch
    calls = []
    monkeypatch.setattr(StackedHessianOperator, "from_operators", classmethod(
        lambda cls, ops: calls.append(len(ops)) or cls([op.model for op in ops], ops[0].images,
                                                       ops[0].labels, ops[0].chunk_size)))
    annotate_zoo(root, groups=["hessian"], settings=fast, dataset="digits", progress=False)
    annotate_zoo(single, groups=["hessian"],
                 settings=AnnotationSettings(**{**fast.__dict__, "hessian_seed_batch": False}),
                 dataset="digits", progress=False)
    assert calls == [3, 3]  # train and val, once each, for the three seeds
    batched_models, single_models = Zoo.open(root).models, Zoo.open(single).models
    assert len(batched_models) == 3
    for batched, alone in zip(batched_models, single_models):
        row, expected = fmt.read_results(batched.path)[-1], fmt.read_results(alone.path)[-1]
        for key in HESSIAN_KEYS:
            if key.endswith("_hvps"):
                assert row[key] == expected[key], key
            elif "uncertainty" not in key and math.isfinite(expected[key]):
                assert row[key] == pytest.approx(expected[key], rel=1e-4), key


def test_stacked_metrics_equal_per_model_metrics_gpt_next_token_loss():
    """The language problem's operator: GPT (tied embedding and head) on math attention, the
    next-token loss over token windows in two chunks."""
    from zoo_builder.annotating.landscape.problems import next_token_loss
    from zoo_builder.models.gpt import gpt2

    generator = torch.Generator().manual_seed(0)
    tokens, targets = (torch.randint(0, 17, (4, 6), generator=generator) for _ in range(2))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(MathAttention(gpt2(model_dim=8, vocab_size=17, block_size=6, n_layer=1,
                                         n_head=2)).eval())
    ops = [HessianOperator(m, tokens, targets, chunk_size=2, loss_fn=next_token_loss)
           for m in models]
    alone = [operator_hessian_metrics(op, **BUDGETS) for op in ops]
    batched = stacked_hessian_metrics(StackedHessianOperator.from_operators(ops), **BUDGETS)
    for one, many in zip(alone, batched):
        assert_same_metrics(one, many)


def test_an_image_problem_takes_the_hessian_of_a_vit():
    """The image classifiers' Hessian runs attention on the math kernel: the fused CPU kernel
    has no double backward, which made ViT zoos fail to annotate."""
    from zoo_builder.annotating.landscape.problems import ImageClassificationLandscape
    from zoo_builder.data import load_dataset

    data = load_dataset("digits")
    problem = ImageClassificationLandscape({}, data, samples=16)
    torch.manual_seed(0)
    model = vit(embedding_dim=12, num_classes=10, in_channels=1, image_size=8, patch_size=4,
                depth=1, heads=2)
    operator = problem.hessian_operator(model.eval(), "train")
    vector = torch.randn(operator.dim)
    assert torch.isfinite(operator.matvec(vector)).all()
