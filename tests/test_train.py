"""The trainer's run options: gradient accumulation, the out-of-memory fallback, precision and
memory layout, and the optimizers of the paper's recipes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wslbench import zoo_format as fmt
from zoo_builder.building.catalog import SPECS
from zoo_builder.building.train import RunOptions, StepRunner, build_optimizer, train_trial
from zoo_builder.building.workloads import Workload


class ToyRegression(Workload):
    """Mean squared error of a small MLP on fixed data; fails like CUDA when a batch is big."""

    def __init__(self, oom_above: int | None = None):
        super().__init__({"training::batchsize": 32}, None, torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 5, generator=generator)
        self.y = torch.randn(32, 1, generator=generator)
        self.oom_above = oom_above
        self.sizes_seen: list[int] = []

    @property
    def steps_per_epoch(self) -> int:
        return 1

    def epoch_batches(self, generator):
        yield self.x, self.y

    def loss(self, model, batch):
        x, y = batch
        self.sizes_seen.append(len(x))
        if self.oom_above is not None and len(x) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return nn.functional.mse_loss(model(x), y)

    def split(self, batch, size):
        x, y = batch
        return list(zip(x.split(size), y.split(size)))

    @staticmethod
    def batch_length(batch) -> int:
        return len(batch[0])

    def metrics(self, model):
        return {}


def _one_step(micro_batch: int | None, oom_above: int | None = None
              ) -> tuple[dict[str, torch.Tensor], StepRunner, ToyRegression]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    workload = ToyRegression(oom_above)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = StepRunner(model, workload, optimizer, micro_batch)
    runner.step(next(workload.epoch_batches(None)))
    return {k: v.clone() for k, v in model.state_dict().items()}, runner, workload


def test_gradient_accumulation_keeps_the_batch_gradient():
    whole, _, _ = _one_step(None)
    for micro in (16, 8, 5):  # 5 leaves an uneven last micro-batch: weights must handle it
        accumulated, _, workload = _one_step(micro)
        assert max(workload.sizes_seen) <= micro
        for key in whole:
            torch.testing.assert_close(accumulated[key], whole[key], rtol=1e-5, atol=1e-6)


def test_out_of_memory_halves_the_micro_batch_and_redoes_the_step():
    whole, _, _ = _one_step(None)
    recovered, runner, workload = _one_step(None, oom_above=10)
    assert runner.micro_batch == 8  # 32 -> 16 -> 8
    assert workload.sizes_seen[:2] == [32, 16]
    for key in whole:
        torch.testing.assert_close(recovered[key], whole[key], rtol=1e-5, atol=1e-6)


def test_run_options_are_checked():
    with pytest.raises(ValueError, match="precision must be"):
        RunOptions(precision="fp16")
    with pytest.raises(ValueError, match="max_micro_batch must be positive"):
        RunOptions(max_micro_batch=0)
    cpu = torch.device("cpu")
    assert RunOptions().autocast_dtype(cpu) is None
    assert RunOptions().autocast_dtype(torch.device("cuda")) is torch.bfloat16
    assert RunOptions(precision="bf16").autocast_dtype(cpu) is torch.bfloat16
    assert not RunOptions().use_channels_last(cpu)
    assert RunOptions(channels_last="on").use_channels_last(cpu)


def _tiny_params(spec: str, **changes) -> dict:
    params = dict(SPECS.get(spec).with_preset("tiny").trials()[0].params)
    params.update(changes)
    return params


def test_bf16_channels_last_and_micro_batches_train_on_cpu(tmp_path):
    """The GPU settings run on the CPU through the same code path and still learn."""
    params = _tiny_params("digits-resnet18", **{"training::epochs_train": 2})
    options = RunOptions(precision="bf16", channels_last="on", max_micro_batch=16)
    train_trial(params, tmp_path, options=options)
    results = fmt.read_results(tmp_path)
    assert results[-1]["train_loss"] < results[0]["train_loss"]
    assert all(row.get("micro_batchsize", 16) == 16 for row in results)
    weights = fmt.load_state_dict(tmp_path, 2)
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_optimizers_follow_the_specs():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    workload = ToyRegression()
    vit = _tiny_params("cifar10-vit")
    adamw, scheduler = build_optimizer(vit, model, workload)
    assert isinstance(adamw, torch.optim.AdamW)
    decayed, plain = adamw.param_groups
    assert decayed["weight_decay"] == vit["optim::wd"] and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    lbfgs, none = build_optimizer(_tiny_params("convection-pinn"), model, workload)
    assert isinstance(lbfgs, torch.optim.LBFGS) and none is None
    assert lbfgs.defaults["line_search_fn"] == "strong_wolfe"
    assert lbfgs.defaults["history_size"] == 50
    with pytest.raises(ValueError, match="unknown optim::optimizer 'rmsprop'"):
        build_optimizer({**vit, "optim::optimizer": "rmsprop"}, model, workload)
