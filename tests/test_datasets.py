"""Tests of perennial.datasets against independent reads of the real files and generated ones."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import math
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perennial.datasets.base as base_module
from perennial.datasets import (
    DATASET_NAMES,
    Dataset,
    Split,
    data_root,
    load_banking77,
    load_cifar10,
    load_cifar100,
    load_clinc150,
    load_dataset,
    load_intent_csv,
    load_mnist,
    read_idx,
    stratified_split,
)
from perennial.exceptions import DatasetError, DatasetNotFoundError, InvalidParameterError

MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# ----------------------------------------------------------------------------- helpers


def pixels(split: Split) -> np.ndarray:
    """The images of an image split (narrows the inputs union for the type checker)."""
    assert isinstance(split.inputs, np.ndarray)
    return split.inputs


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Hand-encode an IDX file, optionally with a forged magic number."""
    if magic is None:
        magic = 0x0800 + array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_folder(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for name, array in zip(MNIST_NAMES[split], (images, labels), strict=True):
            payload = idx_bytes(array)
            if gz:
                (folder / name).write_bytes(gzip.compress(payload))
            else:
                (folder / name.removesuffix(".gz")).write_bytes(payload)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def root() -> Path:
    try:
        return data_root()
    except DatasetNotFoundError as error:
        pytest.skip(f"real data not available: {error}")


@pytest.fixture(scope="module")
def mnist(root: Path) -> Dataset:
    return load_mnist()


@pytest.fixture(scope="module")
def banking(root: Path) -> Dataset:
    return load_banking77()


@pytest.fixture(scope="module")
def clinc(root: Path) -> Dataset:
    return load_clinc150()


# ----------------------------------------------------------------------------- data_root


def test_data_root_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERENNIAL_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()


def test_data_root_env_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("PERENNIAL_DATA", str(missing))
    with pytest.raises(DatasetNotFoundError, match="nowhere") as info:
        data_root()
    assert "PERENNIAL_DATA" in str(info.value)


def test_data_root_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.delenv("PERENNIAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "repo")
    assert data_root() == (tmp_path / "shared" / "data").resolve()


def test_data_root_relative_to_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    fake_source = repo / "src" / "perennial" / "datasets" / "base.py"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere" / "cwd").mkdir(parents=True)
    monkeypatch.delenv("PERENNIAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "elsewhere" / "cwd")
    monkeypatch.setattr(base_module, "__file__", str(fake_source))
    assert data_root() == (tmp_path / "shared" / "data").resolve()


def test_data_root_names_both_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_source = tmp_path / "a" / "repo" / "src" / "perennial" / "datasets" / "base.py"
    (tmp_path / "b" / "cwd").mkdir(parents=True)
    monkeypatch.delenv("PERENNIAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path / "b" / "cwd")
    monkeypatch.setattr(base_module, "__file__", str(fake_source))
    with pytest.raises(DatasetNotFoundError) as info:
        data_root()
    message = str(info.value)
    assert str(tmp_path / "b" / "shared" / "data") in message
    assert str(tmp_path / "a" / "shared" / "data") in message
    assert "PERENNIAL_DATA" in message


# ----------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize(
    ("split", "n", "stem"),
    [("train", 8000, "train"), ("test", 2000, "t10k")],
)
def test_mnist_matches_hand_decoding(
    mnist: Dataset, root: Path, split: str, n: int, stem: str
) -> None:
    folder = root / "mnist-10k"
    raw_images = gzip.decompress((folder / f"{stem}-images-idx3-ubyte.gz").read_bytes())
    raw_labels = gzip.decompress((folder / f"{stem}-labels-idx1-ubyte.gz").read_bytes())
    magic, count, rows, cols = struct.unpack(">4I", raw_images[:16])
    assert (magic, count, rows, cols) == (2051, n, 28, 28)
    assert struct.unpack(">2I", raw_labels[:8]) == (2049, n)
    expected_images = np.frombuffer(raw_images[16:], dtype=np.uint8).reshape(n, 28, 28)
    expected_labels = list(raw_labels[8:])

    part: Split = getattr(mnist, split)
    assert len(part) == n
    assert isinstance(part.inputs, np.ndarray)
    assert part.inputs.dtype == np.uint8 and part.inputs.shape == (n, 28, 28)
    assert part.labels.dtype == np.int64 and part.labels.shape == (n,)
    np.testing.assert_array_equal(part.inputs, expected_images)
    assert part.labels.tolist() == expected_labels
    assert set(expected_labels) == set(range(10))
    assert collections.Counter(part.labels.tolist()) == collections.Counter(expected_labels)


def test_mnist_dataset_facts(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.classes == list(range(10))
    assert mnist.metadata["kind"] == "image"
    assert mnist.extra == {}
    # the 10k subset is a stratified 80/20 split: every class is ~20% test
    train_counts = collections.Counter(mnist.train.labels.tolist())
    test_counts = collections.Counter(mnist.test.labels.tolist())
    for digit in range(10):
        share = test_counts[digit] / (train_counts[digit] + test_counts[digit])
        assert share == pytest.approx(0.2, abs=0.01)


def test_read_idx_plain_and_gzip_agree(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(idx_bytes(array))
    (tmp_path / "packed.gz").write_bytes(gzip.compress(idx_bytes(array)))
    # gzip is detected from the content, not the name
    (tmp_path / "packed_no_suffix").write_bytes(gzip.compress(idx_bytes(array)))
    for name in ("plain", "packed.gz", "packed_no_suffix"):
        out = read_idx(tmp_path / name)
        np.testing.assert_array_equal(out, array)
        assert out.dtype == np.uint8 and out.flags.writeable
    assert read_idx(str(tmp_path / "plain"), ndim=3).shape == (2, 3, 4)


def _corrupt_idx(kind: str) -> tuple[bytes, str]:
    """(file content, text the error message must contain) for each kind of damage."""
    good = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    if kind == "wrong_magic":
        return idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8), magic=1234), "1234"
    if kind == "float_type_code":
        return b"\x00\x00\x0d\x03" + good[4:], "0x0D"
    if kind == "truncated_payload":
        return good[:-10], "truncated"
    if kind == "trailing_bytes":
        return good + b"\x00" * 5, "trailing"
    if kind == "truncated_header":
        return good[:9], "header"
    if kind == "tiny":
        return b"\x00\x00", "2 bytes"
    if kind == "bad_gzip":
        return gzip.compress(good)[:40], "gzip"
    if kind == "zero_dims":
        return b"\x00\x00\x08\x00", "0"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "wrong_magic",
        "float_type_code",
        "truncated_payload",
        "trailing_bytes",
        "truncated_header",
        "tiny",
        "bad_gzip",
        "zero_dims",
    ],
)
def test_read_idx_rejects_damage(tmp_path: Path, kind: str) -> None:
    content, needle = _corrupt_idx(kind)
    path = tmp_path / f"{kind}-idx3-ubyte"
    path.write_bytes(content)
    ndim = None if kind in ("float_type_code", "zero_dims") else 3
    with pytest.raises(DatasetError) as info:
        read_idx(path, ndim=ndim)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent-idx1-ubyte.gz"
    with pytest.raises(DatasetNotFoundError, match="absent-idx1-ubyte"):
        read_idx(path)


def test_load_mnist_wrong_magic_message(tmp_path: Path) -> None:
    write_mnist_folder(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(np.zeros((6, 28, 28), np.uint8), magic=1234)))
    with pytest.raises(DatasetError) as info:
        load_mnist(tmp_path)
    assert str(info.value) == (
        f"expected an MNIST IDX image file (magic 2051) at {bad}, got magic 1234"
    )


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_any_standard_folder(tmp_path: Path, gz: bool) -> None:
    write_mnist_folder(tmp_path, n_train=6, n_test=4, gz=gz)
    data = load_mnist(tmp_path)
    assert (len(data.train), len(data.test)) == (6, 4)
    assert pixels(data.train).shape == (6, 28, 28)
    assert data.test.labels.dtype == np.int64


def test_load_mnist_count_mismatch(tmp_path: Path) -> None:
    write_mnist_folder(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(3, dtype=np.uint8))))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte") as info:
        load_mnist(tmp_path)
    assert "4 images" in str(info.value) and "3 labels" in str(info.value)


def test_load_mnist_labels_where_images_belong(tmp_path: Path) -> None:
    write_mnist_folder(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(6, dtype=np.uint8))))
    with pytest.raises(DatasetError, match="got magic 2049"):
        load_mnist(tmp_path)


def test_load_mnist_missing_file_and_folder(tmp_path: Path) -> None:
    write_mnist_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no-such-folder") as info:
        load_mnist(tmp_path / "no-such-folder")
    assert "train-images-idx3-ubyte.gz" in str(info.value)


# ----------------------------------------------------------------------------- BANKING77


def _read_csv(path: Path) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["text"] for r in rows], [r["category"] for r in rows]


@pytest.mark.parametrize(("split", "n"), [("train", 10003), ("test", 3080)])
def test_banking77_matches_csv_module(banking: Dataset, root: Path, split: str, n: int) -> None:
    texts, labels = _read_csv(root / "banking77" / f"{split}.csv")
    part: Split = getattr(banking, split)
    assert len(part) == len(texts) == n
    assert part.inputs == texts
    assert part.labels.dtype == object
    assert all(type(label) is str for label in part.labels)
    assert part.labels.tolist() == labels
    assert len(set(labels)) == 77


def test_banking77_facts(banking: Dataset, root: Path) -> None:
    categories = json.loads((root / "banking77" / "categories.json").read_text(encoding="utf-8"))
    assert banking.name == "banking77"
    assert banking.metadata["kind"] == "text"
    assert len(banking.classes) == 77
    assert banking.classes == sorted(categories)
    assert banking.metadata["label_names"] == categories
    # the official test set is balanced, 40 per class
    assert set(collections.Counter(banking.test.labels.tolist()).values()) == {40}


# ----------------------------------------------------------------------------- CLINC150


@pytest.mark.parametrize(
    ("key", "n", "n_classes"),
    [
        ("train", 15000, 150),
        ("test", 4500, 150),
        ("val", 3000, 150),
        ("oos_train", 100, 1),
        ("oos_val", 100, 1),
        ("oos_test", 1000, 1),
    ],
)
def test_clinc150_split_sizes(clinc: Dataset, root: Path, key: str, n: int, n_classes: int) -> None:
    raw = json.loads((root / "clinc150" / "data_full.json").read_text(encoding="utf-8"))[key]
    part = clinc.train if key == "train" else clinc.test if key == "test" else clinc.extra[key]
    assert len(part) == len(raw) == n
    assert part.inputs == [text for text, _ in raw]
    assert part.labels.tolist() == [intent for _, intent in raw]
    assert len(set(part.labels.tolist())) == n_classes
    if key.startswith("oos"):
        assert set(part.labels.tolist()) == {"oos"}
    else:
        assert "oos" not in set(part.labels.tolist())


def test_clinc150_domains_cover_intents(clinc: Dataset) -> None:
    domains = clinc.metadata["domains"]
    assert len(domains) == 10
    intents = [intent for members in domains.values() for intent in members]
    assert len(intents) == len(set(intents)) == 150
    assert sorted(intents) == clinc.classes
    assert set(clinc.extra) == {"val", "oos_train", "oos_val", "oos_test"}
    assert clinc.name == "clinc150" and clinc.metadata["kind"] == "text"


def _write_clinc(folder: Path, payload: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data_full.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), "utf-8")
    return path


GOOD_CLINC = {"train": [["hi", "greet"], ["bye", "leave"]], "test": [["hello", "greet"]]}


@pytest.mark.parametrize(
    ("payload", "needles"),
    [
        ({"train": [["a", "x"], "not a pair"], "test": [["b", "x"]]}, ["'train'", "index 1"]),
        ({"train": [["a", "x"]], "test": [["b", "x", "y"]]}, ["'test'", "index 0"]),
        ({"train": [["a", 3]], "test": [["b", "x"]]}, ["'train'", "index 0"]),
        ({"train": [["a", "x"]], "test": [["", "x"]]}, ["'test'", "index 0"]),
        ({**GOOD_CLINC, "oos_test": [["q", "oos"], [1, 2]]}, ["'oos_test'", "index 1"]),
        ({"train": [["a", "x"]]}, ["'test'", "missing"]),
        ({"train": {"a": "x"}, "test": [["b", "x"]]}, ["'train'", "dict"]),
        (["train"], ["list"]),
        ("{not json", ["not valid JSON"]),
    ],
)
def test_clinc150_rejects_malformed(tmp_path: Path, payload: Any, needles: list[str]) -> None:
    path = _write_clinc(tmp_path, payload)
    with pytest.raises(DatasetError) as info:
        load_clinc150(tmp_path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_clinc150_minimal_folder(tmp_path: Path) -> None:
    _write_clinc(tmp_path, GOOD_CLINC)
    data = load_clinc150(tmp_path)
    assert data.classes == ["greet", "leave"]
    assert data.extra == {} and "domains" not in data.metadata
    (tmp_path / "domains.json").write_text(json.dumps({"social": "greet"}), "utf-8")
    with pytest.raises(DatasetError, match=re.escape("domains.json")):
        load_clinc150(tmp_path)


def test_clinc150_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=re.escape("data_full.json")):
        load_clinc150(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="nope"):
        load_clinc150(tmp_path / "nope")


# ----------------------------------------------------------------------------- intent CSV


def test_intent_csv_any_column_order(tmp_path: Path) -> None:
    train = tmp_path / "mine.csv"
    train.write_text(
        '\ufeffid,category,text\n1,a," one, with comma"\n2,b,"two\nlines"\n\n3, a ,three\n',
        encoding="utf-8",
    )
    test = tmp_path / "held.csv"
    test.write_text("text,category\nfour,b\n", encoding="utf-8")
    data = load_intent_csv(train, test)
    assert data.name == "mine"
    assert data.train.inputs == [" one, with comma", "two\nlines", "three"]
    assert data.train.labels.tolist() == ["a", "b", "a"]
    assert data.test.inputs == ["four"] and data.test.labels.tolist() == ["b"]
    assert "split" not in data.metadata


def test_intent_csv_own_split_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "all.csv"
    rows = [f"text {i},{'abc'[i % 3]}" for i in range(30)]
    path.write_text("text,category\n" + "\n".join(rows) + "\n", encoding="utf-8")
    data = load_intent_csv(path, test_fraction=0.3, seed=4, name="toy")
    assert data.name == "toy"
    assert (len(data.train), len(data.test)) == (21, 9)
    assert collections.Counter(data.test.labels.tolist()) == {"a": 3, "b": 3, "c": 3}
    assert set(data.train.inputs).isdisjoint(data.test.inputs)
    assert data.metadata["split"] == {
        "method": "stratified_split",
        "test_fraction": 0.3,
        "seed": 4,
    }
    again = load_intent_csv(path, test_fraction=0.3, seed=4)
    assert again.test.inputs == data.test.inputs


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("text,label\nhi,a\n", ["'category'", "header"]),
        ("category\na\n", ["'text'"]),
        ("text,category,text\nhi,a,b\n", ["more than one", "'text'"]),
        ("text,category\nhi,a\n  ,b\n", ["empty text", "line 3"]),
        ('text,category\n"multi\nline",a\n"",b\n', ["empty text", "line 4"]),
        ("text,category\nhi,\n", ["empty category", "line 2"]),
        ("text,category\nhi\n", ["line 2", "field"]),
        ("text,category\n", ["no data rows"]),
        ("", ["empty file"]),
    ],
)
def test_intent_csv_rejects_malformed(tmp_path: Path, content: str, needles: list[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_intent_csv(path, path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_intent_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,category\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="UTF-8"):
        load_intent_csv(path, path)


def test_intent_csv_missing_files(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("text,category\nhi,a\n", encoding="utf-8")
    with pytest.raises(DatasetNotFoundError, match=re.escape("absent.csv")):
        load_intent_csv(tmp_path / "absent.csv")
    with pytest.raises(DatasetNotFoundError, match=re.escape("absent_test.csv")):
        load_intent_csv(good, tmp_path / "absent_test.csv")


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, math.nan, True, "0.2"])
def test_intent_csv_bad_test_fraction(tmp_path: Path, fraction: Any) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,category\nhi,a\nho,a\n", encoding="utf-8")
    for test_path in (None, path):
        with pytest.raises(InvalidParameterError, match="test_fraction") as info:
            load_intent_csv(path, test_path, test_fraction=fraction)
        assert repr(fraction) in str(info.value)


# ----------------------------------------------------------------------------- stratified_split


@pytest.mark.parametrize(
    ("sizes", "fraction", "expected_test"),
    [
        ({"a": 10, "b": 20, "c": 30}, 0.2, {"a": 2, "b": 4, "c": 6}),
        ({"a": 10, "b": 20, "c": 30}, 0.5, {"a": 5, "b": 10, "c": 15}),
        ({"a": 1, "b": 2, "c": 3}, 0.2, {"a": 0, "b": 1, "c": 1}),
        ({"a": 2, "b": 5}, 0.9, {"a": 1, "b": 4}),
        ({"a": 7}, 0.01, {"a": 1}),
        ({3: 100, 7: 50}, 0.25, {3: 25, 7: 12}),  # round(12.5) == 12 (half to even)
    ],
)
def test_stratified_split_counts(
    sizes: dict[Any, int], fraction: float, expected_test: dict[Any, int]
) -> None:
    labels = [label for label, n in sizes.items() for _ in range(n)]
    rng = np.random.default_rng(0)
    labels = [labels[i] for i in rng.permutation(len(labels))]
    train_idx, test_idx = stratified_split(labels, fraction, seed=3)
    test_counts = collections.Counter(labels[i] for i in test_idx)
    train_counts = collections.Counter(labels[i] for i in train_idx)
    for label, n in sizes.items():
        assert test_counts[label] == expected_test[label]
        assert train_counts[label] == n - expected_test[label]


def test_stratified_split_deterministic_and_partition() -> None:
    labels = np.array([i % 7 for i in range(500)])
    first = stratified_split(labels, 0.2, seed=11)
    second = stratified_split(list(labels), 0.2, seed=11)
    other = stratified_split(labels, 0.2, seed=12)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    train_idx, test_idx = first
    assert train_idx.dtype == np.int64 and test_idx.dtype == np.int64
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(test_idx) > 0)
    assert np.intersect1d(train_idx, test_idx).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, test_idx), np.arange(500))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=25), min_size=1, max_size=6),
    fraction=st.floats(min_value=0.01, max_value=0.99),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_stratified_split_properties(counts: list[int], fraction: float, seed: int) -> None:
    labels = [f"c{k}" for k, n in enumerate(counts) for _ in range(n)]
    train_idx, test_idx = stratified_split(labels, fraction, seed)
    assert sorted([*train_idx.tolist(), *test_idx.tolist()]) == list(range(len(labels)))
    for k, n in enumerate(counts):
        n_test = sum(labels[i] == f"c{k}" for i in test_idx)
        wanted = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        assert n_test == wanted
        assert n - n_test >= 1


@pytest.mark.parametrize("fraction", [0, 0.0, 1, 1.0, -0.5, 2, math.nan, math.inf, None, "0.5"])
def test_stratified_split_bad_fraction(fraction: Any) -> None:
    with pytest.raises(InvalidParameterError, match="test_fraction") as info:
        stratified_split(["a", "b"], fraction, seed=0)
    assert repr(fraction) in str(info.value)


@pytest.mark.parametrize(
    ("labels", "seed", "needle"),
    [
        (["a", "b"], -1, "seed"),
        (["a", "b"], 1.5, "seed"),
        ([], 0, "at least one"),
        (["a", 1], 0, "mix"),
        (np.zeros((2, 2), dtype=int), 0, "1-D"),
    ],
)
def test_stratified_split_bad_input(labels: Any, seed: Any, needle: str) -> None:
    with pytest.raises(InvalidParameterError, match=needle):
        stratified_split(labels, 0.5, seed=seed)


# ----------------------------------------------------------------------------- Split / Dataset


def test_split_subset_text_and_images() -> None:
    texts = Split(inputs=["a", "b", "c"], labels=np.array(["x", "y", "x"]))
    assert texts.labels.dtype == object and type(texts.labels[0]) is str
    sub = texts.subset([2, 0])
    assert sub.inputs == ["c", "a"] and sub.labels.tolist() == ["x", "x"]
    assert texts.subset(np.array([False, True, False])).inputs == ["b"]
    assert len(texts.subset([])) == 0

    images = Split(inputs=np.arange(12, dtype=np.uint8).reshape(3, 2, 2), labels=[0, 1, 2])  # type: ignore[arg-type]
    assert images.labels.dtype == np.int64  # lists are coerced
    sub_images = images.subset(np.array([1]))
    assert isinstance(sub_images.inputs, np.ndarray)
    np.testing.assert_array_equal(sub_images.inputs, np.array([[[4, 5], [6, 7]]], np.uint8))
    assert sub_images.labels.tolist() == [1]


@pytest.mark.parametrize(
    ("indices", "needle"),
    [([3], "index 3"), ([-1], "index -1"), ([0.5], "dtype"), ([True, False], "mask")],
)
def test_split_subset_rejects_bad_indices(indices: Any, needle: str) -> None:
    split = Split(inputs=["a", "b", "c"], labels=np.array(["x", "y", "z"]))
    with pytest.raises(InvalidParameterError, match=needle):
        split.subset(indices)


def test_split_rejects_length_mismatch_and_bad_labels() -> None:
    with pytest.raises(InvalidParameterError, match="2 inputs and 1 labels"):
        Split(inputs=["a", "b"], labels=np.array(["x"]))
    with pytest.raises(InvalidParameterError, match="dtype float64"):
        Split(inputs=["a"], labels=np.array([0.5]))
    with pytest.raises(InvalidParameterError, match="list of str or a numpy array"):
        Split(inputs="ab", labels=np.array(["x", "y"]))  # type: ignore[arg-type]


def test_dataset_classes_sorted() -> None:
    split = Split(inputs=["a", "b", "c", "d"], labels=np.array(["z", "a", "m", "a"]))
    data = Dataset(name="toy", train=split, test=split.subset([0]))
    assert data.classes == ["a", "m", "z"]
    assert data.extra == {} and data.metadata == {}


# ----------------------------------------------------------------------------- CIFAR


def _write_pickle(path: Path, obj: Any, protocol: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def _cifar_batch(n: int, seed: int, label_keys: dict[bytes, int]) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    batch: dict[bytes, Any] = {
        b"batch_label": b"generated batch",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }
    for key, n_classes in label_keys.items():
        batch[key] = [int(v) for v in rng.integers(0, n_classes, size=n)]
    return batch


def make_cifar10(folder: Path, protocol: int = 2, n: int = 4) -> dict[str, dict[bytes, Any]]:
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    _write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(n + i, seed=i, label_keys={b"labels": 10})
        _write_pickle(folder / name, batches[name], protocol)
    return batches


def make_cifar100(folder: Path, protocol: int = 2) -> dict[str, dict[bytes, Any]]:
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    _write_pickle(folder / "meta", meta, protocol)
    batches = {}
    for i, name in enumerate(["train", "test"]):
        keys = {b"fine_labels": 100, b"coarse_labels": 20}
        batches[name] = _cifar_batch(7 - 2 * i, seed=10 + i, label_keys=keys)
        _write_pickle(folder / name, batches[name], protocol)
    return batches


def _expected_hwc(data: np.ndarray) -> np.ndarray:
    """Decode CIFAR rows pixel by pixel: value of (row r, column c, channel ch)."""
    n = data.shape[0]
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for ch in range(3):
        for r in range(32):
            start = ch * 1024 + r * 32
            out[:, r, :, ch] = data[:, start : start + 32]
    return out


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10_round_trip(tmp_path: Path, protocol: int) -> None:
    batches = make_cifar10(tmp_path, protocol=protocol)
    data = load_cifar10(tmp_path)
    train_names = [f"data_batch_{k}" for k in range(1, 6)]
    expected_train = np.concatenate([batches[b][b"data"] for b in train_names])
    assert data.name == "cifar10"
    train_images = pixels(data.train)
    assert train_images.shape == (len(expected_train), 32, 32, 3)
    assert train_images.dtype == np.uint8 and train_images.flags.c_contiguous
    np.testing.assert_array_equal(data.train.inputs, _expected_hwc(expected_train))
    assert data.train.labels.dtype == np.int64
    assert data.train.labels.tolist() == [v for b in train_names for v in batches[b][b"labels"]]
    np.testing.assert_array_equal(data.test.inputs, _expected_hwc(batches["test_batch"][b"data"]))
    assert data.test.labels.tolist() == batches["test_batch"][b"labels"]
    assert data.metadata["label_names"][:3] == ["airplane", "automobile", "bird"]
    assert data.metadata["kind"] == "image"
    # one pixel checked by hand: red, green, blue of row 1, column 2 of the first test image
    raw = batches["test_batch"][b"data"][0]
    assert pixels(data.test)[0, 1, 2].tolist() == [raw[34], raw[1024 + 34], raw[2048 + 34]]


def test_cifar10_reads_pickles_naming_numpy_core(tmp_path: Path) -> None:
    # The published files were written by numpy 1.x, whose arrays refer to numpy.core.
    batches = make_cifar10(tmp_path, protocol=2)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        raw = (tmp_path / name).read_bytes()
        assert b"numpy._core.multiarray" in raw
        (tmp_path / name).write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    data = load_cifar10(tmp_path)
    np.testing.assert_array_equal(pixels(data.test), _expected_hwc(batches["test_batch"][b"data"]))


@pytest.mark.parametrize(("mode", "n_classes"), [("fine", 100), ("coarse", 20)])
def test_cifar100_round_trip(tmp_path: Path, mode: str, n_classes: int) -> None:
    batches = make_cifar100(tmp_path)
    data = load_cifar100(tmp_path, label_mode=mode)
    key = f"{mode}_labels".encode()
    np.testing.assert_array_equal(data.train.inputs, _expected_hwc(batches["train"][b"data"]))
    assert data.train.labels.tolist() == batches["train"][key]
    assert data.test.labels.tolist() == batches["test"][key]
    assert len(data.metadata["label_names"]) == n_classes
    assert data.metadata["label_names"][0] == f"{mode}0"
    assert data.metadata["label_mode"] == mode


def test_cifar100_bad_label_mode(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    with pytest.raises(InvalidParameterError, match="'medium'"):
        load_cifar100(tmp_path, label_mode="medium")


@pytest.mark.parametrize("missing", ["data_batch_3", "test_batch", "batches.meta"])
def test_cifar10_missing_file(tmp_path: Path, missing: str) -> None:
    make_cifar10(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path)
    assert str(tmp_path / missing) in str(info.value)


def test_cifar_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="data_batch_1"):
        load_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        load_cifar100(tmp_path / "cifar-100-python")


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda b: {k: v for k, v in b.items() if k != b"labels"}, "b'labels'"),
        (lambda b: {k: v for k, v in b.items() if k != b"data"}, "b'data'"),
        (lambda b: {**b, b"data": b[b"data"][:, :100]}, "shape"),
        (lambda b: {**b, b"labels": b[b"labels"][:-1]}, "one label per image"),
        (lambda b: {**b, b"labels": [99] * len(b[b"labels"])}, "0..9"),
        (lambda b: [b], "list"),
        (lambda b: {**b, b"extra": _Evil()}, "refusing"),
    ],
)
def test_cifar10_malformed_batch(tmp_path: Path, damage: Any, needle: str) -> None:
    batches = make_cifar10(tmp_path)
    path = tmp_path / "data_batch_2"
    _write_pickle(path, damage(batches["data_batch_2"]), protocol=2)
    with pytest.raises(DatasetError) as info:
        load_cifar10(tmp_path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_cifar_garbage_and_bad_meta(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(DatasetError, match="test_batch"):
        load_cifar10(tmp_path)
    make_cifar100(tmp_path / "c100")
    _write_pickle(tmp_path / "c100" / "meta", {b"fine_label_names": []}, 2)
    with pytest.raises(DatasetError, match="coarse_label_names"):
        load_cifar100(tmp_path / "c100", label_mode="coarse")


# ----------------------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert DATASET_NAMES == ("banking77", "cifar10", "cifar100", "clinc150", "mnist")


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("mnist", (8000, 2000)),
        ("MNIST", (8000, 2000)),
        ("banking77", (10003, 3080)),
        ("clinc150", (15000, 4500)),
    ],
)
def test_registry_real_names(root: Path, name: str, sizes: tuple[int, int]) -> None:
    data = load_dataset(name)
    assert data.name == name.lower()
    assert (len(data.train), len(data.test)) == sizes


def test_registry_cifar_under_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cifar10(tmp_path / "cifar-10-batches-py", n=2)
    make_cifar100(tmp_path / "cifar-100-python")
    monkeypatch.setenv("PERENNIAL_DATA", str(tmp_path))
    assert len(load_dataset("cifar10").test) == 7
    assert load_dataset("cifar100").metadata["label_mode"] == "fine"


def test_registry_csv_paths(tmp_path: Path) -> None:
    path = tmp_path / "intents.csv"
    path.write_text("text,category\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)), "utf-8")
    data = load_dataset(str(path), test_fraction=0.4, seed=1)
    assert (len(data.train), len(data.test)) == (6, 4)
    assert data.metadata["split"]["seed"] == 1
    both = load_dataset(path, test=path)
    assert len(both.train) == len(both.test) == 10


@pytest.mark.parametrize("name", ["imagenet", "", "banking", "/no/such/file.txt"])
def test_registry_unknown_name(name: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        load_dataset(name)
    message = str(info.value)
    assert repr(name) in message
    assert all(known in message for known in DATASET_NAMES)
    assert ".csv" in message


def test_registry_missing_csv_and_misused_test(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=re.escape("ghost.csv")):
        load_dataset(str(tmp_path / "ghost.csv"))
    with pytest.raises(InvalidParameterError, match="test="):
        load_dataset("clinc150", test=str(tmp_path / "x.csv"))
    path = tmp_path / "x.csv"
    path.write_text("text,category\nhi,a\nho,a\n", "utf-8")
    with pytest.raises(InvalidParameterError, match=re.escape("1.5")):
        load_dataset(str(path), test_fraction=1.5)
