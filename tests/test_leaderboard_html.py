"""The rendered leaderboard page in a real browser: headless Chromium shows every table.

Run with ``pytest -m browser`` (needs ``/usr/bin/chromium``; Debian: ``apt-get install
chromium``). The page is rendered from a copy of the committed entries, opened through
``file://``, and read back as Chromium's DOM.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from wslbench import leaderboard as lb
from wslbench.intervals import format_score
from wslbench.tasks import get_task

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile; fail with its output if it fails."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"browser tests need Chromium at {CHROMIUM}; install it "
                    "(Debian: apt-get install chromium) or deselect them with -m 'not browser'")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


class Tables(HTMLParser):
    """The body rows of every leaderboard table in a DOM, by the table's (zoo, revision,
    split, task): each row as ``(rank, method name, main score cell)``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[tuple[str, ...], list[tuple[str, str, str]]] = {}
        self.table: tuple[str, ...] | None = None
        self.cells: list[tuple[str, list[str]]] | None = None  # (td class, text chunks)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "leaderboard" in (attrs.get("class") or ""):
            self.table = tuple(attrs[f"data-{k}"] for k in ("zoo", "revision", "split", "task"))
            self.tables[self.table] = []
        elif tag == "tr" and self.table and "entry" in (attrs.get("class") or ""):
            self.cells = []
        elif tag == "td" and self.cells is not None:
            self.cells.append((attrs.get("class") or "", []))

    def handle_endtag(self, tag):
        if tag == "tr" and self.cells is not None:
            text = {cls: chunks for cls, chunks in self.cells}
            main = next(chunks for cls, chunks in self.cells if "main" in cls.split())
            self.tables[self.table].append(
                ("".join(text["rank"]), text["method"][0], "".join(main)))
            self.cells = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.cells and data.strip():
            self.cells[-1][1].append(data.strip())


@pytest.fixture
def page(tmp_path) -> Path:
    """index.html rendered from a copy of the committed entries and zoo references."""
    root = tmp_path / "leaderboards"
    for part in ("entries", "zoos"):
        shutil.copytree(lb.default_root() / part, root / part)
    lb.write_rendered(root)
    return root / "index.html"


def test_the_page_shows_every_entry_in_order_and_ranks_only_the_top(page, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert "<title>wslbench leaderboard</title>" in dom
    parser = Tables()
    parser.feed(dom)

    expected: dict[tuple[str, ...], list[tuple[tuple, str, str, bool]]] = {}
    for entry in lb.load_entries(page.parent):
        for name, task in entry.tasks.items():
            key = (entry.zoo.name, entry.zoo.revision[:16], entry.split.name,
                   lb.task_key(name, task.version))
            main = task.scores[task.main_score]
            legacy = task.bootstrap is None  # entry schema 1: mean ± std, never ranked
            if main.value is None:
                order, cell = (1, 0.0), "n/a" if legacy else format_score(main.to_json())
            else:
                order = (0, -main.value if get_task(key[3]).higher_is_better else main.value)
                cell = (f"{main.value:.3f} ± {main.std:.3f}" if legacy
                        else format_score(main.to_json()))
            expected.setdefault(key, []).append((order, entry.method.name, cell, legacy))
    assert set(parser.tables) == set(expected)
    for key, rows in parser.tables.items():
        ordered = sorted(expected[key])
        assert [(method, cell) for _, method, cell in rows] == [
            (method, cell) for _, method, cell, _ in ordered], key
        ranks = [rank for rank, _, _ in rows]
        for rank, (*_, legacy) in zip(ranks, ordered):
            assert rank == "– (v1)" if legacy else (
                rank in ("1", "≈ top (n.s.)", "–") or rank.isdigit()), (key, rank)
        ranked = [r for r in ranks if not r.startswith("–")]
        assert ranked.count("1") == (1 if ranked else 0) and ranked[:1] in ([], ["1"]), key


def test_the_page_takes_a_screenshot(page, tmp_path):
    shot = tmp_path / "leaderboard.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
