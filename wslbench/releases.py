"""Released zoos: frozen zoo folders known by name and version, in the repository or at a URL.

A release is a zoo in the standard layout (:mod:`wslbench.zoo_format`) cut down to what the
benchmark reads: per model params.json, result.json and ``model.safetensors`` at the kept
checkpoint epochs (no torch pickles, no training logs), the manifest rewritten for those
files, and the summary tables. ``zoo-builder release`` makes one. The registry,
``releases/index.json``, holds one record per release version (name, version, zoo revision,
kept epochs, size, and for a hosted archive its URL and sha256)::

    releases/
      index.json                          the registry (this module reads and writes it)
      digits-resnet18-bench/v1/           a release in the repository: a zoo folder

``Zoo.resolve("digits-resnet18-bench")`` (newest version) or ``"digits-resnet18-bench@v1"``
finds the release's folder beside the index; where it is absent (an installation without the
repository's ``releases/`` folder) it uses the copy that an earlier fetch unpacked into
``cache_dir()/releases/<name>/v<N>/``, else downloads the archive from the record's URL,
checks its sha256 (a mismatch raises :class:`ReleaseIntegrityError` and keeps nothing),
unpacks it refusing absolute paths, ``..`` and links (:class:`UnsafeArchiveError`), and
moves it into the cache in one rename.

The registry is read only when a zoo is resolved or listed, never at import. Its location is
``$WSLBENCH_RELEASES`` (an index file, or a folder holding ``index.json``), else the
repository's ``releases/index.json``; functions also take it as an argument.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from wslbench import zoo_format as fmt

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
INDEX_FORMAT_VERSION = 1
#: The repository's registry, beside the package (a source checkout or an editable install).
DEFAULT_REGISTRY = Path(__file__).resolve().parent.parent / "releases" / INDEX_FILE
#: Its copy inside an installed wheel (in the repository, a link to the file above).
PACKAGED_REGISTRY = Path(__file__).resolve().parent / "release_index.json"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_REFERENCE = re.compile(r"^(?P<name>[^@]+)@v(?P<version>\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_URL_SCHEMES = ("http://", "https://", "file://")


class ReleaseError(ValueError):
    """A release cannot be found, made or fetched; the message names it and what to do."""


class ReleaseIntegrityError(ReleaseError):
    """A downloaded archive does not have the sha256 its record promises; nothing is kept."""


class UnsafeArchiveError(ReleaseError):
    """An archive holds a member that would land outside its folder (absolute path, ``..``)
    or is not a plain file or folder (a link, a device); nothing is extracted."""


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class ReleaseRecord:
    """One release version, as stored in the registry (unknown fields are refused)."""

    name: str
    version: int
    #: ``Zoo.revision`` of the release's content, as every result computed on it records
    revision: str
    spec: str
    preset: str
    num_models: int
    #: the checkpoint epochs kept for every model
    epochs: tuple[int, ...]
    #: total size of the release folder's files
    size_bytes: int
    created: str
    #: the revision of the zoo the release was cut from
    source_revision: str | None = None
    #: the release folder, relative to the registry's folder (or absolute); None: not local
    path: str | None = None
    #: where the archive (tar.gz or tar) is hosted, and its sha256
    url: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            problems.append(f"name {self.name!r} must be lower case letters, digits, '.', '_' "
                            "or '-'")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            problems.append(f"version {self.version!r} must be an integer >= 1")
        if not all(isinstance(e, int) and e >= 0 for e in self.epochs) or not self.epochs:
            problems.append(f"epochs {list(self.epochs)} must be non-negative integers")
        if self.url is not None and not self.url.startswith(_URL_SCHEMES):
            problems.append(f"url {self.url!r} must start with {', '.join(_URL_SCHEMES)}")
        if self.url is not None and self.sha256 is None:
            problems.append("a url needs the archive's sha256")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            problems.append(f"sha256 {self.sha256!r} must be 64 lower-case hex digits")
        if self.path is None and self.url is None:
            problems.append("a release needs a path, a url, or both")
        if problems:
            raise ReleaseError(f"release record {self.name!r}: " + "; ".join(problems))

    @property
    def reference(self) -> str:
        """``name@vN``."""
        return f"{self.name}@v{self.version}"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "the registry") -> "ReleaseRecord":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ReleaseError(f"release record in {where} has unknown field(s) {unknown}; "
                               f"known: {sorted(known)}")
        try:
            return cls(**{**data, "epochs": tuple(data.get("epochs", ()))})
        except TypeError as err:
            raise ReleaseError(f"release record in {where} is incomplete ({err})") from err

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["epochs"] = list(self.epochs)
        return data


# --------------------------------------------------------------------------- the registry


def registry_path(registry: str | os.PathLike | None = None) -> Path:
    """The registry file: ``registry`` if given, else ``$WSLBENCH_RELEASES``, else the
    repository's ``releases/index.json`` (in an installed wheel, the copy packaged with
    wslbench). A folder stands for its ``index.json``."""
    chosen = registry if registry is not None else os.environ.get("WSLBENCH_RELEASES")
    if not chosen:
        return DEFAULT_REGISTRY if DEFAULT_REGISTRY.is_file() or not PACKAGED_REGISTRY.is_file() \
            else PACKAGED_REGISTRY
    path = Path(chosen).expanduser()
    return path / INDEX_FILE if path.is_dir() or not path.suffix else path


def read_index(registry: str | os.PathLike | None = None) -> list[ReleaseRecord]:
    """Every release record of the registry (none if the file does not exist)."""
    path = registry_path(registry)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReleaseError(f"release registry '{path}' is not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("releases"), list):
        raise ReleaseError(f"release registry '{path}' must hold an object with a 'releases' "
                           "list")
    return [ReleaseRecord.from_dict(entry, str(path)) for entry in data["releases"]]


def write_index(records: list[ReleaseRecord], registry: str | os.PathLike | None = None) -> Path:
    """Write the registry atomically, records sorted by name and version."""
    path = registry_path(registry)
    ordered = sorted(records, key=lambda r: (r.name, r.version))
    fmt.atomic_write_json(path, {"format_version": INDEX_FORMAT_VERSION,
                                 "releases": [r.to_dict() for r in ordered]})
    return path


def add_record(record: ReleaseRecord, registry: str | os.PathLike | None = None,
               replace_existing: bool = False) -> Path:
    """Add a release to the registry; an existing name and version is refused (releases are
    immutable) unless ``replace_existing`` (used only to add a hosting URL)."""
    records = read_index(registry)
    same = [r for r in records if (r.name, r.version) == (record.name, record.version)]
    if same and not replace_existing:
        raise ReleaseError(f"release {record.reference} is already in '{registry_path(registry)}'"
                           "; releases never change: make version "
                           f"{max(r.version for r in records if r.name == record.name) + 1}")
    return write_index([r for r in records if r not in same] + [record], registry)


def parse_reference(reference: str) -> tuple[str, int | None]:
    """``name@vN`` -> (name, N); ``name`` -> (name, None)."""
    match = _REFERENCE.match(reference)
    return (match["name"], int(match["version"])) if match else (reference, None)


def find_release(reference: str, registry: str | os.PathLike | None = None
                 ) -> ReleaseRecord | None:
    """The record of ``name`` (newest version) or ``name@vN``; None when no release has that
    name, an error when the name exists but the version does not."""
    name, version = parse_reference(str(reference))
    versions = sorted((r for r in read_index(registry) if r.name == name),
                      key=lambda r: r.version)
    if not versions:
        return None
    if version is None:
        return versions[-1]
    for record in versions:
        if record.version == version:
            return record
    raise ReleaseError(f"release {name!r} has no version {version}; versions: "
                       f"{', '.join(r.reference for r in versions)}")


def release_names(registry: str | os.PathLike | None = None) -> list[str]:
    return sorted({r.name for r in read_index(registry)})


# --------------------------------------------------------------------------- where a release is


def local_dir(record: ReleaseRecord, registry: str | os.PathLike | None = None) -> Path | None:
    """The release's folder beside the registry, if it is there."""
    if record.path is None:
        return None
    folder = registry_path(registry).parent / record.path  # an absolute path stays absolute
    return folder if (folder / fmt.MANIFEST_FILE).is_file() else None


def cached_dir(record: ReleaseRecord) -> Path:
    """Where a fetched release is unpacked: ``cache_dir()/releases/<name>/v<N>``."""
    from wslbench.paths import cache_dir

    return cache_dir() / "releases" / record.name / f"v{record.version}"


def available_dir(record: ReleaseRecord, registry: str | os.PathLike | None = None
                  ) -> Path | None:
    """The release's folder on this machine (in the repository, else in the cache), if any."""
    local = local_dir(record, registry)
    if local is not None:
        return local
    cached = cached_dir(record)
    return cached if (cached / fmt.MANIFEST_FILE).is_file() else None


def local_releases(registry: str | os.PathLike | None = None) -> dict[str, Path]:
    """Release name -> folder of its newest version, for the releases present on this machine."""
    found: dict[str, Path] = {}
    for record in sorted(read_index(registry), key=lambda r: r.version):
        folder = available_dir(record, registry)
        if folder is not None:
            found[record.name] = folder
    return found


def materialize(record: ReleaseRecord, registry: str | os.PathLike | None = None) -> Path:
    """The release's folder, fetched into the cache from its URL if it is not here."""
    folder = available_dir(record, registry)
    if folder is not None:
        return folder
    if record.url is None:
        where = registry_path(registry).parent / (record.path or "")
        raise ReleaseError(
            f"release {record.reference} is not on this machine (no zoo in '{where}') and its "
            "record has no URL to fetch it from; restore the folder from the repository "
            "(git checkout), or add a URL with `zoo-builder pack --url`")
    return fetch_release(record)


# --------------------------------------------------------------------------- fetching


def fetch_release(record: ReleaseRecord) -> Path:
    """Download the release's archive, check its sha256, unpack it safely into the cache.

    Everything happens in a staging folder inside the cache that is removed at the end, and
    the unpacked zoo reaches its place in one rename, so that a failure leaves nothing behind.
    """
    assert record.url is not None and record.sha256 is not None
    target = cached_dir(record)
    staging_root = target.parent.parent
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".fetch-{record.name}-v{record.version}-",
                                    dir=staging_root))
    try:
        archive = staging / "archive"
        digest = download(record.url, archive)
        if digest != record.sha256:
            raise ReleaseIntegrityError(
                f"release {record.reference}: the archive at {record.url} has sha256 {digest}, "
                f"but the registry expects {record.sha256}; nothing was kept. The hosted file "
                "changed or the download was damaged: try again, or tell the release's "
                "maintainers")
        root = extract_safely(archive, staging / "unpacked")
        _check_unpacked(record, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(root, target)
        except OSError:
            if not (target / fmt.MANIFEST_FILE).is_file():
                raise
            # another process fetched the same release meanwhile: keep theirs
        log.info("release %s fetched into %s", record.reference, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if target.parent.is_dir() and not any(target.parent.iterdir()):
            target.parent.rmdir()


def download(url: str, dest: Path, timeout: float = 60) -> str:
    """Stream ``url`` into ``dest``; return the sha256 of what was written."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = response.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                      desc=f"downloading {url.rsplit('/', 1)[-1]}", disable=None) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    except OSError as err:  # URLError, HTTPError and timeouts are OSErrors
        raise ReleaseError(f"could not download {url} ({err}); check the connection, or fetch "
                           "the archive by hand and pass its unpacked folder as the zoo") from err
    return digest.hexdigest()


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be extracted, or None."""
    name = member.name
    parts = PurePosixPath(name).parts
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in parts or "\\" in name:
        return "a path that climbs out of the folder"
    if not (member.isfile() or member.isdir()):
        return "a link or special file"
    return None


def extract_safely(archive: Path, dest: Path) -> Path:
    """Unpack a tar or tar.gz into ``dest`` after checking every member; return the zoo root
    (``dest``, or its single top-level folder)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                problem = _member_problem(member)
                if problem is not None:
                    raise UnsafeArchiveError(
                        f"archive '{archive}' member {member.name!r} is {problem}; refusing to "
                        "unpack it. A release archive holds only files and folders below one "
                        "top folder: do not use this archive")
            dest.mkdir(parents=True)
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as err:
        raise ReleaseError(f"'{archive}' is not a readable tar or tar.gz archive ({err})") from err
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (dest / fmt.MANIFEST_FILE).exists():
        return entries[0]
    return dest


def _check_unpacked(record: ReleaseRecord, root: Path) -> None:
    from wslbench.zoo import Zoo

    if not (root / fmt.MANIFEST_FILE).is_file():
        raise ReleaseError(f"release {record.reference}: the archive holds no "
                           f"{fmt.MANIFEST_FILE}; it is not a release archive")
    zoo = Zoo.open(root)
    if zoo.revision != record.revision:
        log.warning("release %s: unpacked zoo has revision %s, the registry records %s",
                    record.reference, zoo.revision[:12], record.revision[:12])


# --------------------------------------------------------------------------- packing


def folder_size(folder: Path) -> int:
    """Bytes in the files below ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def pack_release(folder: Path, archive: Path, top: str) -> str:
    """Write ``folder`` as a reproducible tar.gz (``.tar``: uncompressed) with every member
    under ``top/``; return the archive's sha256. Members are sorted and carry no time or
    owner, so packing the same release twice gives the same bytes."""
    folder, archive = Path(folder), Path(archive)
    with fmt.atomic_open(archive) as raw:
        compressed = (gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0)
                      if not archive.name.endswith(".tar") else None)
        with tarfile.open(fileobj=compressed or raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in [folder, *sorted(folder.rglob("*"))]:
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    raise ReleaseError(f"'{path}' is not a plain file or folder; a release "
                                       "holds only those")
                info = tar.gettarinfo(str(path), arcname=str(PurePosixPath(top) /
                                                             path.relative_to(folder)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if path.is_dir() else 0o644
                if path.is_file():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
        if compressed is not None:
            compressed.close()
    return fmt.sha256_file(archive)

