"""The quickstart: build, annotate (or reuse) the mini digits zoo; evaluate linear-probe on
every task."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from wslbench.paths import cache_dir

QUICKSTART_SPEC, QUICKSTART_PRESET, QUICKSTART_MODEL = "digits-resnet18", "mini", "linear-probe"


def run_quickstart(cache: str | Path | None = None, workers: int = 2,
                   seeds: Sequence[int] = (0, 1, 2)) -> list[tuple[str, str, dict]]:
    """Return (model, task, scores) rows; the zoo is built once under ``cache``/zoos."""
    from wslbench.evaluate import evaluate
    from wslbench.predictor import load_predictor_class
    from wslbench.splits import resolve_split
    from wslbench.tasks import TASKS
    from wslbench.zoo import Zoo
    from zoo_builder.annotating.annotate import AnnotationSettings, annotate_zoo
    from zoo_builder.building.build import build_zoo  # the quickstart is the one place wslbench builds
    from zoo_builder.building.catalog import SPECS

    root = Path(cache) if cache else cache_dir()
    zoo_dir = root / "zoos" / f"{QUICKSTART_SPEC}-{QUICKSTART_PRESET}"
    spec = SPECS.get(QUICKSTART_SPEC).with_preset(QUICKSTART_PRESET)
    build_zoo(spec, zoo_dir, workers=workers)  # resumes; returns at once when finished
    # Landscape metrics and phases, then the downstream methods; both skip what is stored.
    # The mini zoo checkpoints every 5 epochs, so epoch averaging takes epochs 15 and 20.
    annotate_zoo(zoo_dir, groups=["landscape", "downstream"], workers=workers,
                 settings=AnnotationSettings(average_window=10))
    zoo = Zoo.open(zoo_dir)
    print(f"zoo: {zoo_dir} ({len(zoo)} models)")
    split, _ = resolve_split(zoo, "iid")
    predictor = load_predictor_class(QUICKSTART_MODEL)
    return [(QUICKSTART_MODEL, name,
             evaluate(predictor, TASKS.get(name), zoo, split, seeds=seeds).scores)
            for name in TASKS]
