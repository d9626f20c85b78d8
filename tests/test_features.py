"""Streaming featurizer and feature cache (wslbench.features), the weight statistics that use
it (baselines.weight_stats), and the fast checkpoint loading path (wslbench.zoo_format)."""

from __future__ import annotations

import functools
import logging
import threading
import tracemalloc
import weakref

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL_ARGS, write_published_zoo, write_synthetic_zoo

from baselines import weight_stats
from wslbench import features
from wslbench import zoo_format as fmt
from wslbench.predictor import ModelSample
from wslbench.zoo import Zoo
from zoo_builder.models import build_model

_QUANTILES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)


def reference_statistics(tensor: torch.Tensor) -> list[float]:
    """The statistics as weight_stats computed them before it was made fast (torch only)."""
    values = tensor.detach().reshape(-1).to(torch.float64)
    variance = values.var(unbiased=False) if values.numel() > 1 else values.new_zeros(())
    return [values.mean().item(), variance.item(), *torch.quantile(values, _QUANTILES).tolist()]


def reference_weight_statistics(state_dict) -> tuple[np.ndarray, list[str]]:
    keys = [k for k, v in state_dict.items() if fmt.is_weight(k, v)]
    return (np.array([x for k in keys for x in reference_statistics(state_dict[k])]),
            [f"{k}:{s}" for k in keys for s in weight_stats.STATISTICS])


def assert_same_numbers(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-12,
                               atol=1e-12, equal_nan=True)


def odd_tensors() -> dict[str, torch.Tensor]:
    """Sizes around the sort / selection threshold, ties, constants, inf and NaN, dtypes."""
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(37000, generator=generator)
    out = {f"normal{n}": torch.randn(n, generator=generator) * 0.1 + 0.3
           for n in (1, 2, 3, 4, 5, 7, 100, 4095, 4096, 4097, 5001, 36864)}
    out.update({
        "rounded": torch.round(normal * 4) / 4,  # many ties
        "constant": torch.full((6000,), 0.5),
        "heavy_tail": torch.distributions.StudentT(1.0).sample((9000,)),
        "skewed": normal.exp(),
        "sorted": torch.sort(normal)[0],
        "float64": normal.double() / 3,
        "float16": normal[:5000].half(),
        "bfloat16": normal[:5000].bfloat16(),
        "conv": torch.randn(64, 64, 3, 3, generator=generator) * torch.arange(9).reshape(3, 3),
        "with_inf": torch.cat([normal[:5000], torch.tensor([float("inf")])]),
        "with_neg_inf_small": torch.tensor([1.0, -float("inf"), 2.0]),
        "both_inf": torch.cat([normal[:6000], torch.tensor([float("inf"), -float("inf")])]),
        "with_nan": torch.cat([normal[:6000], torch.tensor([float("nan")])]),
        "with_nan_small": torch.tensor([1.0, float("nan")]),
        "one_inf": torch.tensor([float("inf")]),
    })
    return out


@pytest.mark.parametrize("key", sorted(odd_tensors()))
def test_tensor_statistics_equal_torch_quantile(key):
    tensor = odd_tensors()[key]
    assert_same_numbers(weight_stats.tensor_statistics(tensor), reference_statistics(tensor))


def test_selection_fallback_is_exact(monkeypatch):
    """With no margin the sample brackets (almost) nothing: the whole-tensor partition that
    takes over must give the same numbers."""
    monkeypatch.setattr(weight_stats, "_MARGIN", 0)
    tensor = torch.randn(20000, generator=torch.Generator().manual_seed(3))
    assert_same_numbers(weight_stats.tensor_statistics(tensor), reference_statistics(tensor))


def test_weight_statistics_of_a_resnet_equal_the_old_ones():
    torch.manual_seed(0)
    args = {"type": "resnet18", "width": 8, "o_dim": 10, "channels_in": 3}
    state = build_model(args).state_dict()
    state = {k: v * 1.7 + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in state.items()}
    values, names = weight_stats.weight_statistics(state)
    expected, expected_names = reference_weight_statistics(state)
    assert names == expected_names
    assert_same_numbers(values, expected)


def test_empty_weight_tensor_is_named():
    with pytest.raises(ValueError, match="'fc.weight' is empty"):
        weight_stats.weight_statistics({"fc.weight": torch.zeros(0, 3)})


# --------------------------------------------------------------------------- featurize


class Loads:
    """Loaders of in-memory state_dicts that count loads and the state_dicts alive at once."""

    def __init__(self):
        self.count, self.live, self.most_live = 0, 0, 0
        self.lock = threading.Lock()

    def _released(self):
        with self.lock:
            self.live -= 1

    def loader(self, seed: int, size: int = 50):
        def load():
            with self.lock:
                self.count += 1
                self.live += 1
                self.most_live = max(self.most_live, self.live)
            tensor = torch.randn(size, generator=torch.Generator().manual_seed(seed))
            weakref.finalize(tensor, self._released)
            return {"w": tensor, "b": tensor[:5] + 1}
        return load

    def samples(self, n: int, revision: str = "rev0", **kwargs) -> list[ModelSample]:
        return [ModelSample(name=f"m{i}", epoch=1, model_args=None, hyperparameters=None,
                            _load=self.loader(i, **kwargs), zoo_revision=revision)
                for i in range(n)]


def norms(state_dict) -> tuple[np.ndarray, list[str]]:
    keys = sorted(state_dict)
    return np.array([float(state_dict[k].norm()) for k in keys]), [f"{k}:norm" for k in keys]


def test_second_call_reads_the_cache_not_the_checkpoints():
    loads = Loads()
    samples = loads.samples(10)
    first = features.featurize(samples, norms, "norms", 1, batch_size=3)
    assert loads.count == 10 and first.values.shape == (10, 2)
    assert first.names == ["b:norm", "w:norm"]
    again = features.featurize(samples[::-1], norms, "norms", 1)
    assert loads.count == 10  # nothing loaded
    np.testing.assert_array_equal(again.values, first.values[::-1])
    assert again.names == first.names
    assert (features.feature_cache_dir("norms", 1) / "rev0.npz").is_file()
    features.featurize(samples, norms, "norms", 2)  # a new version is computed afresh
    assert loads.count == 20


def test_cache_adds_rows_of_new_samples_and_keeps_the_old():
    loads = Loads()
    samples = loads.samples(6)
    features.featurize(samples[:4], norms, "norms", 1)
    features.featurize(samples[2:], norms, "norms", 1)
    assert loads.count == 6
    table = features.featurize(samples, norms, "norms", 1)
    assert loads.count == 6 and table.values.shape == (6, 2)


def test_samples_without_revision_or_cache_false_are_not_cached(tmp_path):
    loads = Loads()
    unversioned = loads.samples(3, revision="")
    features.featurize(unversioned, norms, "norms", 1)
    features.featurize(unversioned, norms, "norms", 1)
    assert loads.count == 6
    features.featurize(loads.samples(3), norms, "norms", 1, cache=False)
    assert loads.count == 9
    assert not features.feature_cache_dir("norms", 1).exists()


def test_duplicates_are_computed_once_and_plain_arrays_work():
    loads = Loads()
    samples = loads.samples(3)
    table = features.featurize(samples + samples[:1], lambda sd: sd["w"][:4].numpy(), "head", 1)
    assert loads.count == 3 and table.names is None
    np.testing.assert_array_equal(table.values[3], table.values[0])


def test_corrupt_cache_is_ignored_with_a_warning_and_rebuilt(caplog):
    loads = Loads()
    samples = loads.samples(4)
    expected = features.featurize(samples, norms, "norms", 1).values
    path = features.feature_cache_dir("norms", 1) / "rev0.npz"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="wslbench.features"):
        table = features.featurize(samples, norms, "norms", 1)
    assert "cannot be read" in caplog.text and str(path) in caplog.text
    np.testing.assert_array_equal(table.values, expected)
    assert loads.count == 8
    features.featurize(samples, norms, "norms", 1)
    assert loads.count == 8  # rewritten whole


def test_rows_computed_before_an_error_are_cached():
    loads = Loads()
    samples = loads.samples(5)

    def broken():
        raise RuntimeError("disk gone")

    samples[3] = ModelSample(name="m3", epoch=1, model_args=None, hyperparameters=None,
                             _load=broken, zoo_revision="rev0")
    with pytest.raises(RuntimeError, match="disk gone"):
        features.featurize(samples, norms, "norms", 1)
    features.featurize(samples[:3], norms, "norms", 1)
    assert loads.count == 3


@pytest.mark.parametrize("workers,batch_size", [(0, 64), (1, 4), (3, 4), (3, 2)])
def test_memory_holds_at_most_one_batch(workers, batch_size):
    loads = Loads()
    samples = loads.samples(40, size=1000)
    table = features.featurize(samples, norms, "norms", 1, batch_size=batch_size,
                               workers=workers, cache=False)
    assert loads.count == 40 and loads.live == 0
    assert loads.most_live <= max(1, min(workers, batch_size))
    expected = features.featurize(loads.samples(40, size=1000), norms, "norms", 1, cache=False)
    np.testing.assert_array_equal(table.values, expected.values)  # same rows, same order


def test_streaming_a_zoo_peaks_near_one_checkpoint(tmp_path):
    """tracemalloc sees safetensors' bytes: the peak stays near one checkpoint, not the zoo."""
    args = {**TINY_MODEL_ARGS, "width": 16}
    state = build_model(args).state_dict()
    samples = []
    for index in range(24):
        trial = tmp_path / f"trial{index}"
        fmt.save_checkpoint(trial, 1, {k: v + index for k, v in state.items()}, args)
        samples.append(ModelSample(name=trial.name, epoch=1, model_args=args,
                                   hyperparameters=None,
                                   _load=functools.partial(fmt.load_state_dict, trial, 1)))
    checkpoint = (tmp_path / "trial0" / "checkpoint_000001" / fmt.SAFETENSORS_CHECKPOINT)
    size = checkpoint.stat().st_size
    weight_stats.featurize(samples[:1])  # warm up lazy imports and caches
    tracemalloc.start()
    try:
        values, _ = weight_stats.featurize(samples)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert values.shape[0] == 24
    assert peak < 4 * size < len(samples) * size / 5, (peak, size)


def test_featurizer_output_is_checked():
    loads = Loads()
    with pytest.raises(ValueError, match="one 1-D row"):
        features.featurize(loads.samples(1), lambda sd: np.zeros((2, 2)), "bad", 1)
    with pytest.raises(ValueError, match="3 features but 1 names"):
        features.featurize(loads.samples(1), lambda sd: (np.zeros(3), ["a"]), "bad", 1)
    with pytest.raises(ValueError, match="featurizer name"):
        features.featurize(loads.samples(1), norms, "../escape", 1)


# --------------------------------------------------------------------------- weight_stats on zoos


def zoo_samples(root, counter: list[int]) -> list[ModelSample]:
    zoo = Zoo.open(root)

    def load(path, epoch):
        counter.append(1)
        return fmt.load_state_dict(path, epoch)

    return [ModelSample(name=m.name, epoch=e, model_args=m.model_args, hyperparameters=None,
                        _load=functools.partial(load, m.path, e), zoo_revision=zoo.revision)
            for m in zoo.models for e in m.checkpoint_epochs]


@pytest.mark.parametrize("layout", ["ours", "published"])
def test_weight_stats_featurize_streams_and_caches_a_zoo(tmp_path, layout):
    root = (write_synthetic_zoo(tmp_path / "zoo", n_points=3) if layout == "ours"
            else write_published_zoo(tmp_path / "zoo", widths=(1,)))
    reads: list[int] = []
    samples = zoo_samples(root, reads)
    values, names = weight_stats.featurize(samples)
    expected = [reference_weight_statistics(s.state_dict()) for s in samples]
    assert names == expected[0][1]
    assert_same_numbers(values, np.stack([row for row, _ in expected]))
    reads.clear()
    cached_values, cached_names = weight_stats.featurize(samples, workers=2)
    assert not reads and cached_names == names
    np.testing.assert_array_equal(cached_values, values)


def test_weight_stats_mismatch_names_the_model_also_from_the_cache():
    def sample(name, keys):
        state = {key: torch.ones(3) for key in keys}
        return ModelSample(name=name, epoch=0, model_args=None, hyperparameters=None,
                           _load=lambda: state, zoo_revision="rev")

    samples = [sample("a", ["x.weight"]), sample("b", ["y.weight"])]
    for _ in range(2):  # computed, then cached
        with pytest.raises(ValueError, match="model 'b' has other tensors than the first model"):
            weight_stats.featurize(samples)


# --------------------------------------------------------------------------- loading


def test_safetensors_load_keeps_load_file_order_and_values(tmp_path):
    from safetensors.torch import load_file

    args = {**TINY_MODEL_ARGS, "width": 2}
    state = build_model(args).state_dict()
    fmt.save_checkpoint(tmp_path, 3, state, args)
    loaded = fmt.load_state_dict(tmp_path, 3)
    reference = load_file(str(tmp_path / "checkpoint_000003" / fmt.SAFETENSORS_CHECKPOINT))
    assert list(loaded) == list(reference)
    for key, value in reference.items():
        assert torch.equal(loaded[key], value) and loaded[key].dtype == value.dtype


def test_strip_module_prefix_only_renames_wrapped_keys():
    tensor = torch.zeros(1)
    plain = {"a.weight": tensor}
    stripped = fmt.strip_module_prefix(plain)
    assert stripped == plain and stripped is not plain
    wrapped = {"module.a": tensor, "_orig_mod.b": tensor, "module._orig_mod.c": tensor,
               "_orig_mod.module.d": tensor, "e": tensor}
    assert list(fmt.strip_module_prefix(wrapped)) == ["a", "b", "c", "module.d", "e"]
