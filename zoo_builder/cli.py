"""The ``zoo-builder`` command: list specs, show one, build, annotate, report on, release and
compare zoos."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from wslbench.commands import run_command
from zoo_builder.building.catalog import SPECS
from zoo_builder.building.specs import ZooSpec


def describe(spec: ZooSpec) -> str:
    """Everything a spec (with its preset applied) trains: grid, schedule and settings."""
    lines = [
        f"{spec.name} v{spec.version} (preset {spec.preset}): {spec.description}",
        f"  models      {spec.num_models} = {len(spec.load.values)} {spec.load.label} x "
        f"{len(spec.temperature.values)} {spec.temperature.label} x {len(spec.seeds)} seeds",
        f"  load        {spec.load.key} = {list(spec.load.values)}",
        f"  temperature {spec.temperature.key} = {list(spec.temperature.values)}",
        f"  seeds       {list(spec.seeds)}",
        f"  epochs      {spec.epochs}, checkpoints at {list(spec.saved_epochs)}",
        f"  dataset     {spec.dataset} {spec.data or ''}".rstrip(),
        f"  model       {spec.model}",
        f"  optim       {spec.optim}",
        f"  augment     {spec.augment}",
        f"  training    {spec.training}",
        "  presets     " + ", ".join(["default", *spec.presets]),
    ]
    if spec.notes:
        lines += textwrap.wrap(spec.notes, width=96, initial_indent="  notes       ",
                               subsequent_indent=" " * 14)
    return "\n".join(lines)


def cmd_ls(args: argparse.Namespace) -> int:
    for name in SPECS:
        spec = SPECS.get(name)
        counts = ", ".join(f"{preset} {spec.with_preset(preset).num_models}"
                           for preset in ["default", *spec.presets])
        print(f"{name:<22} {spec.description}\n{'':<22} models per preset: {counts}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(describe(SPECS.get(args.spec).with_preset(args.preset)))
    return 0


REGISTRY_HELP = ("the registry file or folder (default: $WSLBENCH_RELEASES, else "
                 "releases/index.json)")


def make_executor(args: argparse.Namespace):
    """The Ray executor for ``--executor ray``, set up from the build flags; None for the
    local one, which build_zoo makes (worker processes of a fixed thread count)."""
    if args.executor == "ray":
        from zoo_builder.building.ray_executor import RayExecutor

        return RayExecutor(address=args.address, cpus_per_trial=args.cpus_per_trial,
                           gpus_per_trial=args.gpus_per_trial, max_retries=args.max_retries,
                           storage_path=args.ray_storage)
    if args.address or args.gpus_per_trial:
        raise ValueError("--address and --gpus-per-trial need --executor ray")
    return None  # build_zoo's own: worker processes with the build's fixed thread count


def cmd_build(args: argparse.Namespace) -> int:
    from zoo_builder.building.build import build_zoo
    from zoo_builder.building.train import RunOptions

    spec = SPECS.get(args.spec).with_preset(args.preset)
    # Absolute paths: workers, and nodes of a Ray cluster, do not share our working folder.
    data_root = str(Path(args.data_root).expanduser().resolve()) if args.data_root else None
    plugins = tuple(str(Path(p).resolve()) if Path(p).is_file() else p for p in args.plugin)
    options = RunOptions(device=args.device, precision=args.precision,
                         channels_last=args.channels_last, compile=args.compile,
                         max_micro_batch=args.max_micro_batch, data_root=data_root,
                         plugins=plugins, seed_batch=args.seed_batch)
    root = build_zoo(spec, args.out, workers=args.workers, options=options,
                     executor=make_executor(args), loads=args.loads)
    part = f", {spec.load.label} {' '.join(args.loads)} only" if args.loads else ""
    print(f"zoo {spec.name} (preset {spec.preset}{part}) complete in {root}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from zoo_builder.building.estimate import (DEFAULT_UTILIZATION, H100_BF16_FLOPS, PAPER_SPECS,
                                               format_estimate, read_measured, zoo_cost)

    names = [name for spec in args.spec
             for name in (PAPER_SPECS if spec == "paper" else (spec,))]
    costs = []
    for name in names:
        spec = SPECS.get(name)
        preset = args.preset if args.preset in ("default", *spec.presets) else "default"
        costs.append(zoo_cost(spec.with_preset(preset)))
    if args.device_flops:
        device_flops, device = args.device_flops, "--device-flops"
    else:
        device_flops = H100_BF16_FLOPS * DEFAULT_UTILIZATION
        device = (f"an H100 at {DEFAULT_UTILIZATION:.0%} of its "
                  f"{H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16 peak")
    measured = read_measured(args.measured) if args.measured else None
    print(format_estimate(costs, device_flops, device, measured))
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from zoo_builder.annotating.annotate import LANDSCAPE_GROUPS, AnnotationSettings, annotate_zoo

    settings = AnnotationSettings(
        hessian_samples=args.hessian_samples, hessian_seed_batch=args.hessian_seed_batch,
        mc_steps=args.mc_steps,
        mc_batch_size=args.mc_batch_size, cka_samples=args.cka_samples,
        average_window=args.average_window, prune_sparsities=tuple(args.prune_sparsities),
        prune_finetune_epochs=args.prune_finetune_epochs, transfer_dataset=args.transfer_dataset,
        transfer_epochs=args.transfer_epochs, transfer_lr=args.transfer_lr,
        wiseft_alphas=tuple(args.wiseft_alphas))
    zoo = annotate_zoo(args.zoo, groups=args.metrics or LANDSCAPE_GROUPS, epochs=args.epochs,
                       force=args.force, workers=args.workers, device=args.device,
                       settings=settings, dataset=args.dataset, data_root=args.data_root)
    print(f"annotated {len(zoo)} models of {zoo.root}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from zoo_builder.reporting.plots import plot_phase_diagrams
    from zoo_builder.reporting.summaries import load_summary

    frame = load_summary(args.source)
    title = args.title or Path(args.source).stem
    written = plot_phase_diagrams(frame, args.out, title)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from zoo_builder.reporting.report import write_report, zoo_report
    from zoo_builder.reporting.summaries import load_summary

    frame = load_summary(args.source)
    text, _ = zoo_report(frame)
    print(text)
    if args.csv:
        print(f"table written to {write_report(frame, args.csv)}")
    return 0


def _epoch_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of epochs, "
                                         "e.g. 10,20") from None


def cmd_release(args: argparse.Namespace) -> int:
    from zoo_builder.release import make_release, pack

    if args.url and not args.archive:
        raise ValueError("--url records where the archive will be hosted: it needs --archive "
                         "(or run `zoo-builder pack NAME@vN --out FILE --url URL` later)")
    record = make_release(args.zoo, args.name, args.version, out=args.out, epochs=args.epochs,
                          allow_partial=args.allow_partial, registry=args.registry)
    print(f"release {record.reference}: {record.num_models} models, epochs "
          f"{list(record.epochs)}, {record.size_bytes / 1e6:.1f} MB, revision "
          f"{record.revision[:12]}, in {record.path}")
    if args.archive:
        digest = pack(record, args.archive, url=args.url, registry=args.registry)
        print(f"archive {args.archive} sha256 {digest}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from wslbench.releases import ReleaseError, find_release
    from zoo_builder.release import pack

    record = find_release(args.release, args.registry)
    if record is None:
        raise ReleaseError(f"no release {args.release!r} in the registry (see `wslbench ls zoos`)")
    digest = pack(record, args.out, url=args.url, registry=args.registry)
    print(f"archive {args.out} of {record.reference} sha256 {digest}")
    if args.url:
        print(f"recorded {args.url} with that sha256 for {record.reference}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from wslbench.zoo import Zoo
    from zoo_builder.reporting.compare import compare_zoos, format_comparison

    comparison = compare_zoos(Zoo.resolve(args.rebuilt), Zoo.resolve(args.release))
    print(format_comparison(comparison))
    if args.json:
        print(f"comparison written to {comparison.write_json(args.json)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from zoo_builder.annotating.annotate import (DOWNSTREAM_GROUPS, GROUP_SETS, METRIC_GROUPS,
                                      AnnotationSettings)

    defaults = AnnotationSettings()
    parser = argparse.ArgumentParser(prog="zoo-builder", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="a Python file or module that registers new zoo specs, models or "
                             "data sets (see docs/new_domain.md); repeatable")
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
    build.add_argument("--loads", nargs="+", metavar="VALUE",
                       help="build a slice: only the models of these load values (e.g. widths "
                            "2 6), named and seeded as in the whole zoo, to compare with a "
                            "release in part; a build without it completes the zoo")
    build.add_argument("--data-root", help="folder holding the data sets (default: "
                                            "$WSLBENCH_DATA, else ~/.cache/wslbench/data)")
    build.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    build.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="auto: bf16 autocast on CUDA, fp32 elsewhere")
    build.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                       help="channels_last images and convolutions (auto: on CUDA)")
    build.add_argument("--compile", action="store_true", help="train under torch.compile")
    build.add_argument("--max-micro-batch", type=int,
                       help="accumulate gradients over micro-batches of at most this size "
                            "(default: whole batches, halved on CUDA out-of-memory)")
    build.add_argument("--seed-batch", action="store_true",
                       help="train the seeds of each grid point together as one vmapped model "
                            "(same weights up to float rounding; see docs/throughput.md)")
    build.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local: this machine's processes; ray: Ray Tune trials")
    build.add_argument("--workers", type=int, default=1,
                       help="local executor: models trained in parallel")
    build.add_argument("--address", help="ray executor: cluster address (default: start a "
                                         "local Ray instance)")
    build.add_argument("--cpus-per-trial", type=float, default=1, help="ray executor")
    build.add_argument("--gpus-per-trial", type=float, default=0,
                       help="ray executor: GPUs (or a fraction) per trial")
    build.add_argument("--max-retries", type=int, default=2,
                       help="ray executor: retries of a failed trial")
    build.add_argument("--ray-storage", help="ray executor: where Ray Tune keeps its run records "
                                             "(default ~/ray_results)")
    build.set_defaults(run=cmd_build)

    estimate = commands.add_parser(
        "estimate", help="FLOPs and device-hours of training a zoo (from its architecture and "
                         "schedule)")
    estimate.add_argument("spec", nargs="+",
                          help="spec names; 'paper' stands for the paper's 12 zoos")
    estimate.add_argument("--preset", default="default",
                          help="a preset of the specs (specs without it use their default)")
    estimate.add_argument("--device-flops", type=float,
                          help="FLOP/s the device sustains (default: an H100 at 40%% of its "
                               "bf16 peak, 396e12)")
    estimate.add_argument("--measured", help="JSON of measured model FLOP/s per model type "
                                             "(benchmarks/train_throughput.py --json FILE)")
    estimate.set_defaults(run=cmd_estimate)

    annotate = commands.add_parser(
        "annotate", help="add loss-landscape metrics and phase labels to every model of a zoo")
    annotate.add_argument("zoo", help="the zoo's root folder (ours or the published layout)")
    annotate.add_argument("--metrics", nargs="+", choices=[*METRIC_GROUPS, *GROUP_SETS],
                          help="what to compute (default: the loss-landscape metrics and the "
                               f"phase); 'downstream' is {', '.join(DOWNSTREAM_GROUPS)} "
                               "(image-classification zoos), 'all' everything")
    annotate.add_argument("--epochs", type=int, nargs="+",
                          help="checkpointed epochs to annotate (default: each model's last)")
    annotate.add_argument("--force", action="store_true", help="recompute stored metrics")
    annotate.add_argument("--workers", type=int, default=1, help="grid points in parallel")
    annotate.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    annotate.add_argument("--dataset", help="the models' training data set, where params.json "
                                            "does not name it (published zoos)")
    annotate.add_argument("--data-root", help="folder holding the data sets (default: "
                                               "$WSLBENCH_DATA, else ~/.cache/wslbench/data)")
    annotate.add_argument("--hessian-samples", type=int, default=defaults.hessian_samples,
                          help="training samples in the fixed Hessian subset (token windows "
                               "for language models; PINNs use all their points)")
    annotate.add_argument("--no-hessian-seed-batch", dest="hessian_seed_batch",
                          action="store_false",
                          help="measure each model's Hessian alone instead of the seeds of a "
                               "grid point in one stacked pass (same values up to rounding)")
    annotate.add_argument("--mc-steps", type=int, default=defaults.mc_steps,
                          help="optimizer steps of Bezier curve training per seed pair "
                               "(default: the spec's curve_steps, else the reference's 3,900)")
    annotate.add_argument("--mc-batch-size", type=int, default=defaults.mc_batch_size,
                          help="mini-batch of Bezier curve training (images; token windows "
                               "for language models; PINNs train full-batch)")
    annotate.add_argument("--cka-samples", type=int, default=defaults.cka_samples,
                          help="held-out inputs CKA compares the seeds on (images; token "
                               "windows for language models)")
    annotate.add_argument("--average-window", type=int, default=defaults.average_window,
                          help="epoch_average: average the checkpoints of the last this many "
                               "epochs (epoch > annotated epoch - window; needs two; default: "
                               "the zoo spec's, e.g. 21 for digits-resnet18 bench, else 5)")
    annotate.add_argument("--prune-sparsities", type=float, nargs="+",
                          default=list(defaults.prune_sparsities),
                          help="pruning: fractions of the conv/linear weights to zero")
    annotate.add_argument("--prune-finetune-epochs", type=int,
                          default=defaults.prune_finetune_epochs,
                          help="pruning: epochs of fine-tuning with the mask fixed (0: none)")
    annotate.add_argument("--transfer-dataset",
                          help="transfer: the target data set (default: digits-rotated for "
                               "digits zoos, stl10 for cifar10 zoos)")
    annotate.add_argument("--transfer-epochs", type=int, default=defaults.transfer_epochs,
                          help="transfer: epochs of fine-tuning on the target")
    annotate.add_argument("--transfer-lr", type=float, default=defaults.transfer_lr,
                          help="transfer: SGD learning rate (cosine decay to 0)")
    annotate.add_argument("--wiseft-alphas", type=float, nargs="+",
                          default=list(defaults.wiseft_alphas),
                          help="transfer: Wise-FT interpolation weights of the fine-tuned model")
    annotate.set_defaults(run=cmd_annotate)

    plot = commands.add_parser("plot", help="draw the phase plots of a zoo or a summary table")
    plot.add_argument("source", help="a zoo folder, or a summary .csv/.parquet (ours or "
                                     "published)")
    plot.add_argument("--out", required=True, help="folder for the PNG and SVG files")
    plot.add_argument("--title", help="figure title (default: the source's name)")
    plot.set_defaults(run=cmd_plot)

    report = commands.add_parser("report", help="the distribution of metrics and phases "
                                                "(the paper's Tables 5-7)")
    report.add_argument("source", help="a zoo folder or a summary .csv/.parquet")
    report.add_argument("--csv", help="also write the table as CSV here")
    report.set_defaults(run=cmd_report)

    release = commands.add_parser(
        "release", help="copy an annotated zoo into release layout and register it")
    release.add_argument("zoo", help="the annotated zoo's root folder")
    release.add_argument("--name", required=True, help="the release's name, e.g. "
                                                       "digits-resnet18-bench")
    release.add_argument("--version", type=int, required=True,
                         help="the release version (a new number: releases never change)")
    release.add_argument("--out", help="the release folder (default: <registry folder>/NAME/vN, "
                                       "i.e. releases/NAME/vN in the repository)")
    release.add_argument("--epochs", type=_epoch_list,
                         help="checkpoint epochs to keep, e.g. 10,20 (default: the epochs the "
                              "tasks and the epochs split read)")
    release.add_argument("--allow-partial", action="store_true",
                         help="release models without landscape targets, or epochs that some "
                              "tasks cannot use")
    release.add_argument("--archive", help="also write the release as a tar.gz (.tar: plain) "
                                           "here and print its sha256")
    release.add_argument("--url", help="with --archive: the URL the archive will be hosted at, "
                                       "recorded with its sha256")
    release.add_argument("--registry", help=REGISTRY_HELP)
    release.set_defaults(run=cmd_release)

    pack_cmd = commands.add_parser(
        "pack", help="write a release as a tar.gz, print its sha256, optionally record its URL")
    pack_cmd.add_argument("release", help="a release name or name@vN")
    pack_cmd.add_argument("--out", required=True, help="the archive to write (.tar.gz or .tar)")
    pack_cmd.add_argument("--url", help="the URL the archive will be hosted at; recorded in the "
                                        "registry with its sha256")
    pack_cmd.add_argument("--registry", help=REGISTRY_HELP)
    pack_cmd.set_defaults(run=cmd_pack)

    compare = commands.add_parser(
        "compare", help="how well a rebuilt zoo reproduces a release (or any other zoo)")
    compare.add_argument("rebuilt", help="the rebuilt zoo: a folder or a zoo name")
    compare.add_argument("release", help="the reference: a release name (name@vN), folder or "
                                         "zoo name")
    compare.add_argument("--json", help="also write the comparison as JSON here")
    compare.set_defaults(run=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, before=_load_plugins)


def _load_plugins(args: argparse.Namespace) -> None:
    from zoo_builder.building.specs import load_plugin

    for plugin in args.plugin:
        load_plugin(plugin)


if __name__ == "__main__":
    sys.exit(main())
