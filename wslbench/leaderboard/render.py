"""The rendered leaderboard: ``leaderboards/README.md`` and the static ``index.html``."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from wslbench import zoo_format as fmt
from wslbench.leaderboard.common import SCORE_LABELS, URL
from wslbench.leaderboard.entries import load_entries
from wslbench.leaderboard.layout import task_key
from wslbench.leaderboard.references import load_reference
from wslbench.leaderboard.schema import Entry, Method, Reference, ScoreStats, TaskResult
from wslbench.splits import SPLITS
from wslbench.tasks import get_task


@dataclass(frozen=True)
class Row:
    rank: int
    entry: Entry
    task: TaskResult


Tables = dict[tuple[str, str], dict[str, dict[str, list[Row]]]]


def _tables(entries: Sequence[Entry]) -> Tables:
    """(zoo name, revision) -> split -> task version -> rows sorted by the main score (better
    first, NaN last). Different zoo revisions or task versions never share a table; a zoo's
    newest revision comes first."""
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
                higher = get_task(key).higher_is_better
                ranked = sorted(grouped[zoo][split][key],
                                key=lambda pair: _rank_key(*pair, higher))
                tables.setdefault(zoo, {}).setdefault(split, {})[key] = [
                    Row(i + 1, entry, task) for i, (entry, task) in enumerate(ranked)]
    return tables


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
    mean = task.scores[task.main_score].mean
    return (math.isnan(mean), -mean if higher_is_better else mean, entry.method.name)


def _stats(stats: ScoreStats) -> str:
    if math.isnan(stats.mean):
        return "nan"
    return f"{stats.mean:.3f} ± {stats.std:.3f}"


def _score_names(key: str) -> list[str]:
    return [s.value for s in get_task(key).scores]


def _link(target: str) -> str:
    """Where a method's code or paper link points, seen from the leaderboard folder."""
    return target if URL.match(target) else f"../{target}"


def _md(text: str) -> str:
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", text)


def _task_about(key: str, rows: Sequence[Row]) -> str:
    """The line under a task's heading: what it predicts and how the table is ranked."""
    task = get_task(key)
    main = task.main_score.value
    n_test = len(next(iter(rows[0].task.predictions.values())))
    return (f"{task.description}. Ranked by {SCORE_LABELS.get(main, main)} "
            f"({'higher' if task.higher_is_better else 'lower'} is better) on {n_test} test "
            "samples; mean ± std over seeds.")


def _zoo_heading(zoo: str, revision: str, tables: Tables) -> str:
    """The zoo's name, and which revision where the leaderboard holds several of it."""
    revisions = [r for name, r in tables if name == zoo]
    if len(revisions) == 1:
        return zoo
    which = "newest" if revisions[0] == revision else "an earlier"
    return f"{zoo} ({which} revision, {revision[:8]})"


def render_markdown(entries: Sequence[Entry], references: Mapping[str, Reference]) -> str:
    """leaderboards/README.md: how to submit, then a sorted table per zoo, split and task."""
    lines = [
        "# Leaderboards", "",
        "Results of weight-space predictors on the zoos, one table per zoo, split and task, "
        "ranked by the task's main score. Every number here is recomputed by "
        "`wslbench leaderboard validate` from the entry's stored per-model predictions and "
        "the zoo's true targets. *baseline* marks the predictors of this repository. "
        "The same tables as a web page: [index.html](index.html).", "",
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
    tables = _tables(entries)
    for (zoo, revision), splits in tables.items():
        reference = references[revision]
        lines += [f"## {_md(_zoo_heading(zoo, revision, tables))}", "",
                  f"{reference.zoo.n_models} models, zoo revision "
                  f"`{reference.zoo.revision[:16]}`.", ""]
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
                    cells = [str(row.rank), _md_method(row.entry.method)]
                    lines.append("| " + " | ".join(cells + _cells(row, scores)) + " |")
                lines.append("")
    return "\n".join(lines)


def _cells(row: Row, scores: Sequence[str]) -> list[str]:
    """A row's cells after the method, as plain text: scores, seeds, parameters, date."""
    parameters = row.entry.method.parameters
    return [_stats(row.task.scores[s]) for s in scores] + [
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
tr.rank-1 td { font-weight: 600; }
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
           '<p class="about">Weight-space predictors on phase-transition model zoos, ranked by '
           "each task's main score. Every number is recomputed by <code>wslbench leaderboard "
           "validate</code> from the stored per-model predictions and the zoo's true targets. "
           "Submit with <code>wslbench submit result.json</code>.</p>"]
    tables = _tables(entries)
    for (zoo, revision), splits in tables.items():
        reference = references[revision]
        out += [f'<section class="zoo" id="{esc(zoo)}-{esc(revision[:16])}">',
                f"<h2>{esc(_zoo_heading(zoo, revision, tables))}</h2>",
                f'<p class="meta">{reference.zoo.n_models} models, zoo revision '
                f"<code>{esc(reference.zoo.revision[:16])}</code></p>"]
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
                    cells = [f'<td class="rank">{row.rank}</td>',
                             f'<td class="method">{_html_method(row.entry.method)}</td>']
                    cells += [f'<td class="{c}">{esc(text)}</td>'
                              for c, text in zip(classes, _cells(row, scores))]
                    out.append(f'<tr class="entry rank-{row.rank}">' + "".join(cells) + "</tr>")
                out += ["</tbody>", "</table>"]
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
