"""Reading a zoo: ours (with manifest and safetensors) or a published PTMZ zoo as it is."""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from wslbench import zoo_format as fmt

log = logging.getLogger(__name__)

#: params.json keys that differ between the seeds of one grid point, or that only say where
#: things were on the machine that trained them: left out of the grid-point key.
NON_GRID_KEYS = frozenset({"seed", "training::seed", "dataset::dump", "device", "cuda", "cpus"})


@dataclass(frozen=True)
class ModelRecord:
    """One model of a zoo: its config, its per-epoch results, and where its weights are."""

    name: str
    path: Path
    params: dict[str, Any]
    results: list[dict[str, Any]] = field(repr=False)
    checkpoint_epochs: tuple[int, ...]

    @classmethod
    def read(cls, trial_dir: Path) -> "ModelRecord":
        """Read one model folder (params, results, which checkpoints exist)."""
        trial_dir = Path(trial_dir)
        return cls(name=trial_dir.name, path=trial_dir, params=fmt.read_params(trial_dir),
                   results=fmt.read_results(trial_dir),
                   checkpoint_epochs=tuple(fmt.checkpoint_epochs(trial_dir)))

    @property
    def trial_id(self) -> str:
        return fmt.trial_id_from_name(self.name)

    @property
    def seed(self) -> Any:
        return fmt.param_value(self.params, "seed")

    @property
    def grid_point(self) -> str:
        """A key shared by the seeds of one grid point (all params but seeds and paths)."""
        grid = {k: v for k, v in self.params.items() if k not in NON_GRID_KEYS}
        return json.dumps(grid, sort_keys=True, default=str)

    @property
    def model_args(self) -> dict[str, Any]:
        """Architecture arguments: the ``model::`` entries of params.json."""
        return fmt.params_section(self.params, "model")

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Training hyperparameters: every params.json entry that is not architecture."""
        return {k: v for k, v in self.params.items() if not k.startswith("model::")}

    @property
    def last_epoch(self) -> int:
        return len(self.results) - 1

    def metric(self, key: str, epoch: int | None = None) -> float | None:
        """A metric from result.json at ``epoch`` (default: the last epoch); None if absent."""
        epoch = self.last_epoch if epoch is None else epoch
        if not 0 <= epoch < len(self.results):
            return None
        value = self.results[epoch].get(key)
        return None if value is None else float(value)

    def state_dict(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """Weights at ``epoch`` (default: the last checkpoint), without ``module.`` prefixes."""
        if epoch is None:
            if not self.checkpoint_epochs:
                raise fmt.ZooFormatError(f"trial '{self.path}' has no checkpoint")
            epoch = self.checkpoint_epochs[-1]
        return fmt.load_state_dict(self.path, epoch)


class Zoo:
    """A population of trained models on disk; see :mod:`wslbench.zoo_format` for the layout."""

    def __init__(self, root: Path, models: list[ModelRecord], manifest: fmt.ZooManifest | None):
        self.root = root
        self.models = models
        self.manifest = manifest

    @classmethod
    def open(cls, root: str | Path) -> "Zoo":
        root = Path(root).expanduser().resolve()
        trial_dirs = fmt.find_trial_dirs(root)
        manifest = fmt.read_manifest(root)
        cls._check_complete(root, trial_dirs, manifest)
        return cls(root, [ModelRecord.read(trial) for trial in trial_dirs], manifest)

    @staticmethod
    def _check_complete(root: Path, trial_dirs: list[Path], manifest: fmt.ZooManifest | None):
        """A zoo of ours must be finished; a published zoo (no markers) is taken as it is."""
        unfinished = [t.name for t in trial_dirs if not (t / fmt.COMPLETE_MARKER).is_file()]
        ours = manifest is not None or len(unfinished) < len(trial_dirs)
        if ours and unfinished:
            raise fmt.ZooFormatError(
                f"zoo '{root}' is an unfinished build: {len(unfinished)} trial(s) have no "
                f"{fmt.COMPLETE_MARKER}, e.g. '{unfinished[0]}'; run `zoo-builder build` with the "
                "same spec and --out again to resume it"
            )
        if manifest is not None:
            on_disk = {t.name for t in trial_dirs}
            missing = sorted(set(manifest.trials) - on_disk)
            if missing:
                raise fmt.ZooFormatError(
                    f"zoo '{root}': {len(missing)} trial(s) listed in {fmt.MANIFEST_FILE} are "
                    f"missing, e.g. '{missing[0]}'; restore them or rebuild the zoo"
                )

    @classmethod
    def resolve(cls, reference: str | Path) -> "Zoo":
        """A zoo by path, by release name (``name`` or ``name@vN``; fetched into the cache if
        it is not here, see :mod:`wslbench.releases`), or by name among the zoos that
        :mod:`wslbench.paths` knows."""
        from wslbench.paths import known_zoos, zoo_dirs
        from wslbench.releases import find_release, materialize

        path = Path(reference).expanduser()
        if path.exists():
            return cls.open(path)
        release = find_release(str(reference))
        if release is not None:
            return cls.open(materialize(release))
        known = known_zoos()
        if str(reference) in known:
            return cls.open(known[str(reference)])
        close = difflib.get_close_matches(str(reference), known, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise FileNotFoundError(
            f"no zoo {str(reference)!r}: not a folder, and not a zoo name in "
            f"{', '.join(map(str, zoo_dirs()))}; {hint}known: {', '.join(known) or 'none'}. "
            "Build one with `wslbench quickstart --rebuild` or `zoo-builder build SPEC --out DIR`")

    @cached_property
    def revision(self) -> str:
        """A hash of the zoo's content, recorded by every result computed on it: the content
        revision its manifest records (params, targets and tensors of every model; see
        docs/zoo_format.md), the hash of a format-1 manifest, or for a published zoo (no
        manifest) a hash of its params.json and result.json files and checkpoint sizes."""
        if self.manifest is not None:
            return self.manifest.revision or self.manifest.content_hash()
        return fmt.published_content_hash(m.path for m in self.models)

    @property
    def name(self) -> str:
        return self.manifest.spec if self.manifest else self.root.name

    @property
    def label(self) -> str:
        """The zoo's name in leaderboards and split files: spec and preset for our zoos
        (``digits-resnet18-mini``; ``shakespeare-gpt2`` for the default preset), the folder
        name for published zoos."""
        if self.manifest is None:
            return self.root.name
        preset = self.manifest.preset
        return self.manifest.spec if preset in ("default", "") else f"{self.manifest.spec}-{preset}"

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self):
        return iter(self.models)

    def grid_points(self) -> dict[str, list[ModelRecord]]:
        """The models grouped by grid point (all params but the seed), in sorted key order."""
        groups: dict[str, list[ModelRecord]] = {}
        for model in self.models:
            groups.setdefault(model.grid_point, []).append(model)
        return dict(sorted(groups.items()))

    def model(self, name: str) -> ModelRecord:
        for record in self.models:
            if record.name == name:
                return record
        raise KeyError(f"zoo '{self.root}' has no model '{name}'")

    def summary(self):
        """The per-model, per-epoch summary table (a pandas DataFrame), published columns first."""
        rows = [row for m in self.models for row in fmt.summary_rows(m.name, m.params, m.results)]
        return fmt.summary_frame(rows)

    def check_integrity(self, results: bool = True) -> None:
        """The cheap check before trusting the zoo's files (sizes and fingerprints of every
        checkpoint, the sha256 of params.json, and with ``results`` of result.json, against
        the manifest): raises :class:`~wslbench.zoo_format.ZooIntegrityError` naming trial and
        file. A published zoo (no manifest) has nothing to check against."""
        if self.manifest is not None:
            fmt.check_integrity(self.root, self.manifest, results=results)

    def verify(self, progress: bool | None = False) -> list[str]:
        """Check every file recorded in the manifest against its sha256 and every checkpoint's
        tensors against their fingerprint; return the problems found, each naming trial and
        file (`wslbench verify` prints them)."""
        if self.manifest is None:
            return [f"zoo '{self.root}' has no {fmt.MANIFEST_FILE}: nothing to verify against"]
        return fmt.verify_zoo(self.root, self.manifest, progress)[1]
