"""Releases: cutting one from a zoo, resolving it by name, fetching it from a URL safely."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import io
import json
import math
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from wslbench import releases
from wslbench import zoo_format as fmt
from wslbench.paths import cache_dir, known_zoos
from wslbench.releases import ReleaseError, ReleaseIntegrityError, UnsafeArchiveError
from wslbench.splits import SPLITS, make_split
from wslbench.zoo import Zoo
from zoo_builder.annotating.annotate import refresh_zoo_tables
from zoo_builder.release import make_release, missing_annotations, pack

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "tiny-bench"


@pytest.fixture(scope="module")
def annotated_zoo(tiny_zoo, tmp_path_factory) -> Path:
    """A copy of the tiny zoo with landscape targets at each model's last checkpoint: stand-in
    values, since annotating takes minutes."""
    root = tmp_path_factory.mktemp("annotated") / "zoo"
    shutil.copytree(tiny_zoo, root)
    for index, model in enumerate(Zoo.open(root).models):
        rows = model.results
        rows[model.checkpoint_epochs[-1]].update({
            "hessian_trace_train": 10.0 + index, "log_hessian_trace_train": math.log(10 + index),
            "log_hessian_top_ev_val": 0.5, "representation_similarity": 0.9,
            "curve_mc_train_error": 1.0, "phase": "I"})
        fmt.write_results(model.path, rows)
    refresh_zoo_tables(Zoo.open(root))
    return root


@pytest.fixture(scope="module")
def released(annotated_zoo, tmp_path_factory) -> tuple[releases.ReleaseRecord, Path]:
    """The annotated tiny zoo released as tiny-bench v1 into a registry of its own."""
    registry = tmp_path_factory.mktemp("repo") / "releases"
    return make_release(annotated_zoo, NAME, 1, registry=registry, progress=False), registry


def test_release_keeps_only_what_the_benchmark_reads(released, annotated_zoo):
    record, registry = released
    folder = registry / record.path
    assert record.path == f"{NAME}/v1" and record.epochs == (1, 2)
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted([
        fmt.MANIFEST_FILE, fmt.SUMMARY_PARQUET])  # no CSV twin: the size budget
    for trial in (p for p in folder.iterdir() if p.is_dir()):
        files = sorted(str(p.relative_to(trial)) for p in trial.rglob("*") if p.is_file())
        assert files == sorted(["checkpoint_000001/model.safetensors",
                                "checkpoint_000002/model.safetensors", fmt.COMPLETE_MARKER,
                                fmt.PARAMS_FILE, fmt.RESULT_FILE])
        source = annotated_zoo / trial.name
        for name in (fmt.PARAMS_FILE, fmt.RESULT_FILE, "checkpoint_000002/model.safetensors"):
            assert (trial / name).read_bytes() == (source / name).read_bytes()

    zoo = Zoo.open(folder)
    assert len(zoo) == record.num_models == 12
    assert zoo.verify() == []
    assert zoo.revision == record.revision != Zoo.open(annotated_zoo).revision
    assert record.source_revision == Zoo.open(annotated_zoo).revision
    assert record.size_bytes == releases.folder_size(folder)
    assert releases.read_index(registry) == [record]
    split = make_split(zoo, SPLITS.get("epochs"))
    assert split.epochs == {"train": (1,), "val": (1,), "test": (2,)}


def test_release_resolves_by_name_without_fetching(released, monkeypatch):
    record, registry = released
    monkeypatch.setenv("WSLBENCH_RELEASES", str(registry))
    folder = (registry / record.path).resolve()
    assert Zoo.resolve(NAME).root == folder
    assert Zoo.resolve(f"{NAME}@v1").root == folder
    assert known_zoos()[NAME] == folder
    with pytest.raises(ReleaseError, match=r"no version 2; versions: tiny-bench@v1"):
        Zoo.resolve(f"{NAME}@v2")
    assert not (cache_dir() / "releases").exists()


def test_releases_never_change(released, annotated_zoo, tmp_path):
    record, registry = released
    with pytest.raises(ReleaseError, match="exists.*make version 2"):
        make_release(annotated_zoo, NAME, 1, out=tmp_path / "elsewhere", registry=registry)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ReleaseError, match="not empty"):
        make_release(annotated_zoo, NAME, 2, out=tmp_path / "taken", registry=registry)
    assert releases.read_index(registry) == [record]


def test_unannotated_zoo_is_refused_unless_partial(tiny_zoo, tmp_path):
    registry = tmp_path / "releases"
    assert len(missing_annotations(Zoo.open(tiny_zoo))) == 12
    with pytest.raises(ReleaseError, match=r"(?s)12 of 12 models .* lack landscape targets.*"
                                           r"NN_tune_trainable_.*hessian_trace_train"):
        make_release(tiny_zoo, "partial", 1, registry=registry, progress=False)
    assert not registry.exists()
    with pytest.raises(ReleaseError, match=r"drops epoch\(s\) \[1\]"):
        make_release(tiny_zoo, "partial", 1, epochs=[0, 2], allow_partial=False,
                     registry=registry, progress=False)
    record = make_release(tiny_zoo, "partial", 1, epochs=[0, 2], allow_partial=True,
                          registry=registry, progress=False)
    assert record.epochs == (0, 2)
    assert Zoo.open(registry / record.path).models[0].checkpoint_epochs == (0, 2)


# --------------------------------------------------------------------------- fetching


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server for the files in ``tmp_path / "www"``: (base URL, folder, request
    paths)."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    httpd.shutdown()
    httpd.server_close()


def _remote_registry(tmp_path, record, url, sha256, monkeypatch) -> Path:
    """A registry that knows the release only by URL (as an installed wheel would)."""
    registry = tmp_path / "installed" / "index.json"
    releases.write_index([dataclasses.replace(record, path=None, url=url, sha256=sha256)],
                         registry)
    monkeypatch.setenv("WSLBENCH_RELEASES", str(registry))
    return registry


def test_release_is_fetched_once_from_its_url(released, server, tmp_path, monkeypatch):
    record, registry = released
    base, www, requests = server
    digest = pack(record, www / "tiny-bench-v1.tar.gz", registry=registry)
    assert releases.pack_release(registry / record.path, tmp_path / "again.tar.gz",
                                 top="tiny-bench-v1") == digest  # reproducible bytes
    _remote_registry(tmp_path, record, f"{base}/tiny-bench-v1.tar.gz", digest, monkeypatch)

    zoo = Zoo.resolve(NAME)
    assert zoo.root == (cache_dir() / "releases" / NAME / "v1").resolve()
    assert zoo.revision == record.revision and zoo.verify() == []
    assert requests == ["/tiny-bench-v1.tar.gz"]
    assert Zoo.resolve(f"{NAME}@v1").root == zoo.root
    assert known_zoos()[NAME] == zoo.root
    assert requests == ["/tiny-bench-v1.tar.gz"]  # the second resolve used the cache
    assert [p.name for p in (cache_dir() / "releases").iterdir()] == [NAME]


def test_sha256_mismatch_is_named_and_keeps_nothing(released, server, tmp_path, monkeypatch):
    record, registry = released
    base, www, requests = server
    pack(record, www / "tiny-bench-v1.tar", registry=registry)
    _remote_registry(tmp_path, record, f"{base}/tiny-bench-v1.tar", "0" * 64, monkeypatch)
    with pytest.raises(ReleaseIntegrityError, match="has sha256 .* expects 0000.*nothing was kept"):
        Zoo.resolve(NAME)
    assert requests == ["/tiny-bench-v1.tar"]
    assert list((cache_dir() / "releases").iterdir()) == []


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member, problem", [
    (_file("tiny-bench-v1/../../escaped.txt"), "climbs out"),
    (_file("/tmp/escaped-absolute.txt"), "absolute path"),
    (_link("tiny-bench-v1/zoo.json", "/etc/passwd", tarfile.SYMTYPE), "link"),
    (_link("tiny-bench-v1/hard", "../../escaped.txt", tarfile.LNKTYPE), "link"),
])
def test_malicious_archive_is_refused(released, server, tmp_path, monkeypatch, member, problem):
    record, _ = released
    base, www, _requests = server
    data = _tar_gz([_file("tiny-bench-v1/params.json", b"{}"), member])
    (www / "evil.tar.gz").write_bytes(data)
    digest = fmt.sha256_file(www / "evil.tar.gz")  # the registry trusts it: only the
    _remote_registry(tmp_path, record, f"{base}/evil.tar.gz", digest, monkeypatch)  # layout is bad
    with pytest.raises(UnsafeArchiveError, match=problem):
        Zoo.resolve(NAME)
    assert list((cache_dir() / "releases").iterdir()) == []
    assert not (cache_dir() / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_release_without_folder_or_url_says_so(released, tmp_path, monkeypatch):
    record, _ = released
    registry = tmp_path / "index.json"
    releases.write_index([dataclasses.replace(record, path="missing/v1")], registry)
    monkeypatch.setenv("WSLBENCH_RELEASES", str(registry))
    with pytest.raises(ReleaseError, match="not on this machine.*no URL"):
        Zoo.resolve(NAME)


def test_registry_records_are_strict(tmp_path):
    registry = tmp_path / "index.json"
    registry.write_text(json.dumps({"releases": [{"name": "x", "version": 1, "colour": "red"}]}))
    with pytest.raises(ReleaseError, match=r"unknown field\(s\) \['colour'\]"):
        releases.read_index(registry)
    with pytest.raises(ReleaseError, match="a url needs the archive's sha256"):
        releases.ReleaseRecord(name="x", version=1, revision="r", spec="s", preset="p",
                               num_models=1, epochs=(1,), size_bytes=1, created="today",
                               url="https://example.org/x.tar.gz")


# --------------------------------------------------------------------------- commands


def test_release_and_pack_commands(annotated_zoo, tmp_path, monkeypatch, capsys):
    from wslbench.cli import main as wslbench_main
    from zoo_builder.cli import main as zoo_builder_main

    registry = tmp_path / "releases"
    monkeypatch.setenv("WSLBENCH_RELEASES", str(registry))
    archive = tmp_path / "out.tar.gz"
    assert zoo_builder_main(["release", str(annotated_zoo), "--name", NAME, "--version", "1",
                             "--epochs", "1,2", "--archive", str(archive),
                             "--url", "https://example.org/tiny-bench-v1.tar.gz"]) == 0
    out = capsys.readouterr().out
    digest = fmt.sha256_file(archive)
    assert f"release {NAME}@v1: 12 models, epochs [1, 2]" in out and digest in out
    (record,) = releases.read_index(registry)
    assert (record.url, record.sha256) == ("https://example.org/tiny-bench-v1.tar.gz", digest)

    assert zoo_builder_main(["release", str(annotated_zoo), "--name", NAME, "--version",
                             "1"]) == 2
    assert "releases never change" in capsys.readouterr().err
    assert zoo_builder_main(["pack", f"{NAME}@v1", "--out", str(tmp_path / "p.tar")]) == 0
    assert "sha256" in capsys.readouterr().out

    assert wslbench_main(["ls", "zoos"]) == 0
    listing = capsys.readouterr().out
    assert f"{NAME}@v1" in listing and "12 models, epochs 1,2" in listing
    assert str(registry / NAME / "v1") in listing


# --------------------------------------------------------------------------- one table for all


def test_a_users_entry_on_the_release_joins_the_baselines_table(released, tmp_path,
                                                                monkeypatch):
    """`wslbench evaluate my_model.py --zoo <release>` then `wslbench submit` lands in the table
    of the baselines: everyone who evaluates the release evaluates the same revision."""
    from test_user_models import readme_template
    from wslbench.cli import main as wslbench_main
    from wslbench.leaderboard_cli import main as leaderboard_main

    record, registry = released
    monkeypatch.setenv("WSLBENCH_RELEASES", str(registry))
    board = tmp_path / "leaderboards"
    (tmp_path / "my_model.py").write_text(readme_template())
    for model, flags in (("linear-probe", ["--baseline"]),
                         (str(tmp_path / "my_model.py"), [])):
        out = tmp_path / f"{Path(model).stem}.json"
        assert wslbench_main(["evaluate", model, "--task", "test_acc", "--zoo", NAME,
                              "--seeds", "0", "1", "--output", str(out)]) == 0
        assert json.loads(out.read_text())["zoo"]["revision"] == record.revision
        assert wslbench_main(["submit", str(out), "--leaderboard", str(board), *flags]) == 0
    entries = sorted(p.relative_to(board) for p in board.glob("entries/**/*.json"))
    assert len(entries) == 2 and len({p.parent for p in entries}) == 1, entries
    assert leaderboard_main(["leaderboard", "render", "--leaderboard", str(board)]) == 0
    table = (board / "README.md").read_text()
    assert table.count("| linear-probe") == 1 and "norm-probe" in table
