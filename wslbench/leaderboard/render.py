"""The rendered leaderboard: ``leaderboards/README.md`` and the static ``index.html``."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from wslbench import zoo_format as fmt
from wslbench.intervals import FOOTNOTES, format_score, paired_difference
from wslbench.leaderboard.common import SCORE_LABELS, URL
from wslbench.leaderboard.entries import load_entries, rescore
from wslbench.leaderboard.layout import task_key
from wslbench.leaderboard.references import load_reference
from wslbench.leaderboard.schema import Entry, Method, Reference, TaskResult
from wslbench.splits import SPLITS
from wslbench.tasks import get_task


@dataclass(frozen=True)
class Row:
    """A table row: ``rank`` as the table shows it (``1`` for the top method only; ``≈ top
    (n.s.)`` where the paired bootstrap does not tell it from the top; else 1 + the number of
    methods significantly better; ``–`` unranked), and ``place``, its CSS class."""

    rank: str
    place: str
    entry: Entry
    task: TaskResult

    @property
    def legacy(self) -> bool:
        """From an entry of schema 1: no grid points, no interval."""
        return self.task.bootstrap is None


TIED_WITH_TOP = "≈ top (n.s.)"
UNRANKED, UNRANKED_LEGACY = "–", "– (v1)"

Tables = dict[tuple[str, str], dict[str, dict[str, list[Row]]]]


def _tables(entries: Sequence[Entry], references: Mapping[str, Reference]) -> Tables:
    """(zoo name, revision) -> split -> task version -> rows sorted by the main score (better
    first, undefined last), ranked by :func:`_ranked`. Different zoo revisions or task
    versions never share a table; a zoo's newest revision comes first."""
    grouped: dict[tuple[str, str], dict[str, dict[str, list[tuple[Entry, TaskResult]]]]] = {}
    for entry in entries:
        for name, task in entry.tasks.items():
            grouped.setdefault((entry.zoo.name, entry.zoo.revision), {}) \
                .setdefault(entry.split.name, {}) \
                .setdefault(task_key(name, task.version), []).append((entry, task))
    # Zoos by name; the revisions of one zoo newest first (by their newest entry).
    newest = {}
    for entry in entries:
        key = (entry.zoo.name, entry.zoo.revision)
        newest[key] = max(newest.get(key, ""), entry.provenance.date)
    order = sorted(sorted(grouped, key=lambda k: newest[k], reverse=True), key=lambda k: k[0])
    tables: Tables = {}
    for zoo in order:
        for split in sorted(grouped[zoo], key=_split_order):
            for key in sorted(grouped[zoo][split]):
                targets = references[zoo[1]].targets[key][split]
                tables.setdefault(zoo, {}).setdefault(split, {})[key] = _ranked(
                    grouped[zoo][split][key], key, targets)
    return tables


def _ranked(pairs: Sequence[tuple[Entry, TaskResult]], key: str,
            targets: Mapping[str, float | str]) -> list[Row]:
    """The rows of one table, sorted by the main score, ranked so that no row claims to beat
    another unless the paired bootstrap over test grid points says so: each pair of methods
    with intervals is compared on the same resamples (the difference of their main scores on
    each), and a difference is significant when its 95 % interval excludes 0."""
    task_def = get_task(key)
    higher, main = task_def.higher_is_better, task_def.main_score.value
    ordered = sorted(pairs, key=lambda pair: _rank_key(*pair, higher))
    tested = {}
    for i, (_, task) in enumerate(ordered):
        if task.bootstrap is not None and task.scores[main].ci95 is not None:
            tested[i] = rescore(task, targets, task.grid_points, [main])[main]

    def beats(i: int, j: int) -> bool:
        difference = paired_difference(tested[i], tested[j], higher)
        return difference is not None and difference.first_better

    top = min(tested, default=None)
    rows = []
    for i, (entry, task) in enumerate(ordered):
        if i not in tested:
            rank, place = (UNRANKED_LEGACY if task.bootstrap is None else UNRANKED), "unranked"
        elif i == top:
            rank, place = "1", "rank-1"
        elif not beats(top, i):
            rank, place = TIED_WITH_TOP, "tied-top"
        else:
            above = 1 + sum(beats(j, i) for j in tested if j != i)
            rank, place = str(above), f"rank-{above}"
        rows.append(Row(rank, place, entry, task))
    return rows


def _split_order(name: str) -> tuple[int, str]:
    """Registered splits in registry order (iid first), then split files by name."""
    registered = SPLITS.registration_order()
    return (registered.index(name), "") if name in registered else (len(registered), name)


def _split_about(split_data: Mapping) -> str:
    """The split's version and short sha256, and where its test models come from when that
    is another zoo (a cross-zoo split)."""
    about = f"Split version {split_data['version']}, sha256 {split_data['sha256'][:16]}"
    revision = split_data.get("test_zoo_revision")
    if revision is not None:
        name = split_data.get("test_zoo_name", "another zoo")
        about += f"; test models: every model of {name} (revision {revision[:16]})"
    return about


def _rank_key(entry: Entry, task: TaskResult, higher_is_better: bool) -> tuple:
    value = task.scores[task.main_score].value
    if value is None:
        return (True, 0.0, entry.method.name)
    return (False, -value if higher_is_better else value, entry.method.name)


def _stats(row: Row, score: str) -> str:
    """A score cell: value and 95 % interval (:func:`wslbench.intervals.format_score`); mean
    ± std over seeds for an entry of schema 1."""
    stats = row.task.scores[score]
    if row.legacy:
        return "n/a" if stats.value is None else f"{stats.value:.3f} ± {stats.std:.3f}"
    return format_score(stats.to_json())


def _score_names(key: str) -> list[str]:
    return [s.value for s in get_task(key).scores]


def _link(target: str) -> str:
    """Where a method's code or paper link points, seen from the leaderboard folder."""
    return target if URL.match(target) else f"../{target}"


def _md(text: str) -> str:
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", text)


def _task_about(key: str, rows: Sequence[Row]) -> str:
    """The line under a task's heading: what it predicts, how the table is ranked, and what
    the numbers are."""
    task = get_task(key)
    main = task.main_score.value
    label = f"{SCORE_LABELS.get(main, main)} ({'higher' if task.higher_is_better else 'lower'} " \
            "is better)"
    n_test = len(next(iter(rows[0].task.predictions.values())))
    tested = next((r.task for r in rows if not r.legacy), None)
    if tested is None:
        return (f"{task.description}. Sorted by {label} on {n_test} test samples; mean ± std "
                "over seeds (entries of the old schema 1: no intervals, not ranked).")
    n_points = len(set(tested.grid_points.values()))
    return (f"{task.description}. Sorted by {label} on {n_test} test samples of {n_points} "
            "grid points. Each score is the mean over seeds with its 95% bootstrap interval "
            "over test grid points; a method ranks below another only where the paired "
            "bootstrap of their difference excludes 0.")


def _notes(rows: Sequence[Row], scores: Sequence[str]) -> list[str]:
    """The footnotes a table needs: its score marks and rank cells, explained."""
    cells = "".join(_stats(row, s) for row in rows for s in scores)
    notes = [f"{mark} {text}" for mark, text in FOOTNOTES.items() if mark in cells]
    ranks = {row.rank for row in rows}
    if TIED_WITH_TOP in ranks:
        notes.append(f"{TIED_WITH_TOP}: the 95% interval of the paired bootstrap difference "
                     "to the top method contains 0, so the table cannot tell them apart")
    if UNRANKED in ranks:
        notes.append(f"{UNRANKED}: no interval of the main score (see its cell), so not ranked")
    if UNRANKED_LEGACY in ranks and ranks != {UNRANKED_LEGACY}:  # else the about line says it
        notes.append(f"{UNRANKED_LEGACY}: an entry of the old schema 1, whose predictions "
                     "have no grid points: mean ± std over seeds, no interval, not ranked")
    return notes


def _zoo_heading(zoo: str, revision: str, tables: Tables) -> str:
    """The zoo's name, and which revision where the leaderboard holds several of it."""
    revisions = [r for name, r in tables if name == zoo]
    if len(revisions) == 1:
        return zoo
    which = "newest" if revisions[0] == revision else "an earlier"
    return f"{zoo} ({which} revision, {revision[:8]})"


def _where_from(revision: str) -> str:
    """How a reader gets the zoo of ``revision``: the release that holds it, or that no
    release does (then only a bit-identical rebuild reproduces it)."""
    from wslbench.releases import read_index

    for record in read_index():
        if record.revision == revision:
            return (f"Released as {record.name} v{record.version} (`--zoo "
                    f"{record.name}@v{record.version}`).")
    return ("Not a release: a zoo built by the maintainers; a rebuild of its spec gets this "
            "revision only where training comes out bit-identical (docs/releases.md), and "
            "results on another revision go to another table.")


def _html_code(text: str) -> str:
    """``text`` escaped for HTML, its `backquoted` parts as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def render_markdown(entries: Sequence[Entry], references: Mapping[str, Reference]) -> str:
    """leaderboards/README.md: how to submit, then a sorted table per zoo, split and task."""
    lines = [
        "# Leaderboards", "",
        "Results of weight-space predictors on the zoos, one table per zoo, split and task, "
        "sorted by the task's main score. Every score is the mean over the predictor's seeds "
        "with its 95% bootstrap interval over test grid points, `0.853 [0.79, 0.90]`; only "
        "the top method is ranked first, and another method ranks below it only where a "
        "paired bootstrap finds the difference significant (else *≈ top (n.s.)*). Every "
        "number here is recomputed by `wslbench leaderboard validate` from the entry's stored "
        "per-model predictions and the zoo's true targets. *baseline* marks the predictors "
        "of this repository. The same tables as a web page: [index.html](index.html).", "",
        "Add a result:", "",
        "```bash",
        "wslbench evaluate MODEL --task TASK --zoo ZOO --output result.json",
        "wslbench submit result.json --name NAME --paper URL --code URL --parameters N",
        "wslbench leaderboard validate      # what CI runs",
        "wslbench leaderboard render        # rewrites this file and index.html",
        "```", "",
        "Files: `entries/<zoo>/<revision>/<split>/<method>.json` (one per method, zoo and split), "
        "`zoos/<zoo>/<revision>.json` (a zoo revision's splits and true test targets). "
        "See [docs/leaderboard.md](../docs/leaderboard.md).", "",
    ]
    tables = _tables(entries, references)
    for (zoo, revision), splits in tables.items():
        reference = references[revision]
        lines += [f"## {_md(_zoo_heading(zoo, revision, tables))}", "",
                  f"{reference.zoo.n_models} models, zoo revision "
                  f"`{reference.zoo.revision[:16]}`. {_where_from(revision)}", ""]
        for split, tasks in splits.items():
            lines += [f"### {_md(zoo)} · split {_md(split)}", "",
                      _md(_split_about(reference.splits[split])) + ".", ""]
            for key, rows in tasks.items():
                scores, main = _score_names(key), get_task(key).main_score.value
                header = ["rank", "method"] + [
                    f"**{SCORE_LABELS.get(s, s)}**" if s == main else SCORE_LABELS.get(s, s)
                    for s in scores] + ["seeds", "parameters", "date"]
                lines += [f"#### {_md(key)}", "", _md(_task_about(key, rows)), "",
                          "| " + " | ".join(header) + " |",
                          "|" + "|".join(["---:", "---"] + ["---:"] * len(scores)
                                         + ["---:", "---:", "---"]) + "|"]
                for row in rows:
                    cells = [row.rank, _md_method(row.entry.method)]
                    after = _cells(row, scores)
                    if row.place == "rank-1":  # the top method, and only it, in bold
                        cells[0] = f"**{cells[0]}**"
                        where = scores.index(main)
                        after[where] = f"**{after[where]}**"
                    lines.append("| " + " | ".join(cells + after) + " |")
                notes = _notes(rows, scores)
                lines += [""] + ([_md(" · ".join(notes)), ""] if notes else [])
    return "\n".join(lines)


def _cells(row: Row, scores: Sequence[str]) -> list[str]:
    """A row's cells after the method, as plain text: scores, seeds, parameters, date."""
    parameters = row.entry.method.parameters
    return [_stats(row, s) for s in scores] + [
        str(len(row.task.seeds)), "–" if parameters is None else f"{parameters:,}",
        row.task.date[:10]]


def _md_method(method: Method) -> str:
    name = _md(method.name)
    cell = f"[{name}]({_link(method.code)})" if method.code else name
    if method.paper:
        cell += f" ([paper]({method.paper}))"
    if method.baseline:
        cell += " *baseline*"
    return cell


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1d2328; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d6dbe0; }
h3 { margin-top: 1.6rem; } h4 { margin: 1.4rem 0 .2rem; }
p.about, p.meta { margin: .2rem 0 .6rem; color: #4a545e; }
table { border-collapse: collapse; margin-bottom: 1rem; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #e3e7eb; text-align: right; }
th { background: #f3f5f7; } td.method, th.method, td.date { text-align: left; }
th.main { background: #e3eefb; } td.main { background: #f6f9fd; }
tr.rank-1 td { font-weight: 600; } tr.unranked td { color: #5b6670; }
p.notes { margin: -.6rem 0 1rem; font-size: .85rem; color: #4a545e; }
span.baseline { font-size: .75rem; color: #5b6670; border: 1px solid #c3cad1;
                border-radius: .6rem; padding: 0 .4rem; margin-left: .3rem; font-weight: 400; }
code { background: #f3f5f7; padding: 0 .25rem; border-radius: .2rem; }
"""


def render_html(entries: Sequence[Entry], references: Mapping[str, Reference]) -> str:
    """leaderboards/index.html: the same tables, one self-contained page (inline CSS, no JS)."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>wslbench leaderboard</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           "<h1>wslbench leaderboard</h1>",
           '<p class="about">Weight-space predictors on phase-transition model zoos, sorted by '
           "each task's main score. Every score is the mean over seeds with its 95% bootstrap "
           "interval over test grid points; only the top method is ranked first, and another "
           "ranks below it only where a paired bootstrap finds the difference significant "
           "(else ≈ top (n.s.)). Every number is recomputed by <code>wslbench leaderboard "
           "validate</code> from the stored per-model predictions and the zoo's true targets. "
           "Submit with <code>wslbench submit result.json</code>.</p>"]
    tables = _tables(entries, references)
    for (zoo, revision), splits in tables.items():
        reference = references[revision]
        out += [f'<section class="zoo" id="{esc(zoo)}-{esc(revision[:16])}">',
                f"<h2>{esc(_zoo_heading(zoo, revision, tables))}</h2>",
                f'<p class="meta">{reference.zoo.n_models} models, zoo revision '
                f"<code>{esc(reference.zoo.revision[:16])}</code>. "
                f"{_html_code(_where_from(revision))}</p>"]
        for split, tasks in splits.items():
            out += [f"<h3>{esc(zoo)} · split {esc(split)}</h3>",
                    f'<p class="meta">{esc(_split_about(reference.splits[split]))}</p>']
            for key, rows in tasks.items():
                scores, main = _score_names(key), get_task(key).main_score.value
                out += [f"<h4>{esc(key)}</h4>",
                        f'<p class="about">{esc(_task_about(key, rows))}</p>',
                        f'<table class="leaderboard" data-zoo="{esc(zoo)}" '
                        f'data-revision="{esc(revision[:16])}" data-split="{esc(split)}" '
                        f'data-task="{esc(key)}">',
                        "<thead><tr><th>rank</th><th class=\"method\">method</th>"
                        + "".join(f'<th class="{"main" if s == main else "score"}">'
                                  f"{esc(SCORE_LABELS.get(s, s))}</th>" for s in scores)
                        + "<th>seeds</th><th>parameters</th><th class=\"date\">date</th>"
                          "</tr></thead>", "<tbody>"]
                for row in rows:
                    classes = [f'score{" main" if s == main else ""}" data-score="{esc(s)}'
                               for s in scores] + ["seeds", "parameters", "date"]
                    cells = [f'<td class="rank">{esc(row.rank)}</td>',
                             f'<td class="method">{_html_method(row.entry.method)}</td>']
                    cells += [f'<td class="{c}">{esc(text)}</td>'
                              for c, text in zip(classes, _cells(row, scores))]
                    out.append(f'<tr class="entry {row.place}">' + "".join(cells) + "</tr>")
                out += ["</tbody>", "</table>"]
                notes = _notes(rows, scores)
                if notes:
                    out.append('<p class="notes">' + "<br>".join(esc(n) for n in notes)
                               + "</p>")
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _html_method(method: Method) -> str:
    esc = html.escape
    cell = (f'<a href="{esc(_link(method.code))}">{esc(method.name)}</a>' if method.code
            else esc(method.name))
    if method.paper:
        cell += f' (<a href="{esc(method.paper)}">paper</a>)'
    if method.description:
        cell = f'<span title="{esc(method.description)}">{cell}</span>'
    if method.baseline:
        cell += '<span class="baseline">baseline</span>'
    return cell


def render(root: Path) -> dict[Path, str]:
    """The rendered files (README.md, index.html) of a leaderboard that validates."""
    root = Path(root)
    entries = load_entries(root)
    references = {}
    for path in (root / "zoos").rglob("*.json"):
        reference = load_reference(path)
        references[reference.zoo.revision] = reference
    return {root / "README.md": render_markdown(entries, references) + "\n",
            root / "index.html": render_html(entries, references)}


def write_rendered(root: Path) -> list[Path]:
    """Render the leaderboard and write README.md and index.html (atomically)."""
    written = []
    for path, text in render(root).items():
        fmt.atomic_write_bytes(path, text.encode("utf-8"))
        written.append(path)
    return written
