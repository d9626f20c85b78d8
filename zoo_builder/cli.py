"""The ``zoo-builder`` command: list specs, show one, build a zoo."""

from __future__ import annotations

import argparse
import sys

from wslbench.commands import run_command
from zoo_builder.specs import SPECS, ZooSpec


def describe(spec: ZooSpec) -> str:
    n_models = len(spec.load.values) * len(spec.temperature.values) * len(spec.seeds)
    lines = [
        f"{spec.name} v{spec.version} (preset {spec.preset}): {spec.description}",
        f"  models      {n_models} = {len(spec.load.values)} {spec.load.label} x "
        f"{len(spec.temperature.values)} {spec.temperature.label} x {len(spec.seeds)} seeds",
        f"  load        {spec.load.key} = {list(spec.load.values)}",
        f"  temperature {spec.temperature.key} = {list(spec.temperature.values)}",
        f"  seeds       {list(spec.seeds)}",
        f"  epochs      {spec.epochs}, checkpoints at {list(spec.saved_epochs)}",
        f"  dataset     {spec.dataset}",
        f"  model       {spec.model}",
        f"  optim       {spec.optim}",
        f"  augment     {spec.augment}",
        "  presets     " + ", ".join(["default", *spec.presets]),
    ]
    return "\n".join(lines)


def cmd_ls(args: argparse.Namespace) -> int:
    for name in SPECS:
        spec = SPECS.get(name)
        counts = ", ".join(
            f"{preset}: {len(s.load.values) * len(s.temperature.values) * len(s.seeds)}"
            for preset in ["default", *spec.presets] for s in [spec.with_preset(preset)])
        print(f"{name:<24} models per preset ({counts})  {spec.description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(describe(SPECS.get(args.spec).with_preset(args.preset)))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from zoo_builder.build import build_zoo

    spec = SPECS.get(args.spec).with_preset(args.preset)
    root = build_zoo(spec, args.out, workers=args.workers, device=args.device)
    print(f"zoo {spec.name} (preset {spec.preset}) complete in {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo-builder", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("ls", help="list zoo specs").set_defaults(run=cmd_ls)

    show = commands.add_parser("show", help="print a spec's grid and settings")
    show.add_argument("spec")
    show.add_argument("--preset", default="default")
    show.set_defaults(run=cmd_show)

    build = commands.add_parser("build", help="build (or resume building) a zoo")
    build.add_argument("spec", help="a spec name (see `zoo-builder ls`)")
    build.add_argument("--preset", default="default", help="a preset of the spec, e.g. tiny, mini")
    build.add_argument("--out", required=True, help="the zoo's root folder (created; resumed)")
    build.add_argument("--workers", type=int, default=1, help="models trained in parallel")
    build.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    build.set_defaults(run=cmd_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
