"""One pass of a text model for every pooling: ``encode_per_layer``, ``pool`` and the cache.

The reference is the encoder's own ``encode`` (tested against plain transformers in
``tests/test_text_encoder.py``): features pooled from the per-layer means must equal it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perennial.encoders import FeatureCache
from perennial.encoders.text import ONNX_FORMAT_VERSION, TextEncoder
from perennial.exceptions import InvalidParameterError

SENTENCES = [
    "How do I reset the PIN of my debit card?",
    "My card PIN needs changing, how can I do that?",
    "What is the weather going to be like in Paris tomorrow?",
    "Book me a table for two at an Italian restaurant tonight",
    "ok",  # a text of one token besides the special ones
]
VIEWS = [
    {"pooling": "mean-layers"},
    {"pooling": "last"},
    {"pooling": "layers"},
    {"pooling": "layers", "layers": [2, 5]},
    {"pooling": "mean-layers", "layers": [6]},
]


@pytest.mark.parametrize("view", VIEWS)
def test_pooled_per_layer_means_equal_the_encoders_features(view):
    encoder = TextEncoder(**view)
    per_layer = encoder.encode_per_layer(SENTENCES)
    assert per_layer.shape == (len(SENTENCES), 6, 384) and per_layer.dtype == np.float32
    np.testing.assert_allclose(encoder.pool(per_layer), encoder.encode(SENTENCES), atol=2e-6)


def test_the_per_layer_name_names_the_model_and_backend_only():
    names = {TextEncoder(**view).per_layer_name for view in VIEWS}
    assert len(names) == 1 and "all-MiniLM-L6-v2@" in names.pop()
    assert TextEncoder(backend="onnx").per_layer_name.endswith(f"+onnx-int8#v{ONNX_FORMAT_VERSION}")


def test_the_cache_keys_onnx_features_by_their_export_format(tmp_path, monkeypatch):
    # Features cached from an earlier int8 recipe must not be read back as the current one's.
    import perennial.encoders.text as text_module

    cache = FeatureCache(tmp_path)
    texts = ["hello there"]
    encoder = TextEncoder(backend="onnx")
    assert encoder.cache_name == f"{encoder.name}#v{ONNX_FORMAT_VERSION}"
    assert TextEncoder().cache_name == TextEncoder().name
    current = cache.path_for(encoder, texts)
    torch_path = cache.path_for(TextEncoder(), texts)
    monkeypatch.setattr(text_module, "ONNX_FORMAT_VERSION", ONNX_FORMAT_VERSION + 1)
    assert cache.path_for(encoder, texts) != current
    assert cache.path_for(TextEncoder(), texts) == torch_path  # torch's features are unchanged


def test_pool_refuses_another_models_shape():
    with pytest.raises(InvalidParameterError, match=r"shape \(n, 6, 384\)"):
        TextEncoder().pool(np.zeros((2, 12, 768), dtype=np.float32))


class Counting(TextEncoder):
    """A text encoder that counts the texts it runs through the model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def encode(self, inputs):
        self.calls += 1
        return super().encode(inputs)

    def encode_per_layer(self, inputs):
        self.calls += 1
        return super().encode_per_layer(inputs)


def test_a_per_layer_cache_encodes_once_for_every_pooling(tmp_path: Path):
    cache = FeatureCache(tmp_path, per_layer=True)
    first = Counting(pooling="mean-layers")
    features, read = cache.read_or_encode(first, SENTENCES)
    assert not read and first.calls == 1
    np.testing.assert_allclose(features, first.encode(SENTENCES), atol=2e-6)
    for view in VIEWS:
        other = Counting(**view)
        features, read = cache.read_or_encode(other, SENTENCES)
        assert read and other.calls == 0  # pooled from the file, the model never ran
        np.testing.assert_allclose(features, other.encode(SENTENCES), atol=2e-6)
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_a_plain_cache_reads_per_layer_files_and_prefers_pooled_ones(tmp_path: Path):
    FeatureCache(tmp_path, per_layer=True).encode(TextEncoder(), SENTENCES)
    plain = FeatureCache(tmp_path)
    last = Counting(pooling="last")
    _, read = plain.read_or_encode(last, SENTENCES)
    assert read and last.calls == 0
    # A batch cached pooled (by a cache without per_layer) is read as it was written.
    marked = np.full((len(SENTENCES), 384), 0.5, dtype=np.float32)
    np.save(plain.path_for(last, SENTENCES), marked)
    np.testing.assert_array_equal(plain.encode(last, SENTENCES), marked)
    # Other texts are not in the cache: a plain cache stores them pooled, as before.
    fresh = Counting(pooling="last")
    plain.encode(fresh, SENTENCES[:2])
    assert fresh.calls == 1 and plain.path_for(fresh, SENTENCES[:2]).exists()


def test_a_damaged_per_layer_file_is_encoded_again(tmp_path: Path):
    cache = FeatureCache(tmp_path, per_layer=True)
    encoder = Counting(pooling="layers")
    expected = cache.encode(encoder, SENTENCES)
    (path,) = tmp_path.glob("*.npy")
    path.write_bytes(path.read_bytes()[:100])  # truncated by a crash
    again = Counting(pooling="layers")
    np.testing.assert_allclose(cache.encode(again, SENTENCES), expected, atol=1e-6)
    assert again.calls == 1
    np.save(path, np.zeros((2, 6, 384), dtype=np.float32))  # wrong number of rows
    third = Counting(pooling="layers")
    np.testing.assert_allclose(cache.encode(third, SENTENCES), expected, atol=1e-6)
    assert third.calls == 1


# --- perennial incremental --select --------------------------------------------------------------


def _cli(*args: str, cache: Path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PERENNIAL_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "perennial.cli", "incremental", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def intents_csv(tmp_path_factory) -> Path:
    """Eight BANKING77 intents, 30 training texts each."""
    import csv

    from perennial.datasets import data_root

    keep: dict[str, int] = {}
    rows = []
    with open(data_root() / "banking77" / "train.csv", newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            if row["category"] not in keep and len(keep) < 8:
                keep[row["category"]] = 0
            if keep.get(row["category"], 30) < 30:
                keep[row["category"]] += 1
                rows.append({"text": row["text"], "category": row["category"]})
    path = tmp_path_factory.mktemp("select") / "intents.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_select_chooses_on_training_data_and_runs_the_choice(intents_csv, tmp_path):
    from perennial.datasets import load_dataset
    from perennial.protocols.incremental import run_incremental
    from perennial.selection import select_by_holdout, text_candidates

    done = _cli("--data", str(intents_csv), "--select", "--no-baselines", "--json",
                cache=tmp_path / "cache")  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    selection = document["selection"]
    # The same selection, computed here without the command line, on the same training split
    # and from the per-layer features the command cached ($PERENNIAL_CACHE holds the feature
    # files): the same numbers in, so the same accuracies and choice out, exactly.
    from perennial.encoders import FeatureCache

    cache = FeatureCache(tmp_path / "cache", per_layer=True)
    assert list((tmp_path / "cache").glob("*.npy"))
    data = load_dataset(str(intents_csv), test_fraction=0.2, seed=0)
    candidates = text_candidates(["minilm"])
    here = select_by_holdout(data.train.inputs, data.train.labels.tolist(), candidates,
                             seed=0, cache=cache, progress=None)  # fmt: skip
    assert list(selection["candidates"]) == list(here.names)
    np.testing.assert_allclose(list(selection["candidates"].values()), here.accuracies,
                               rtol=0, atol=1e-12)  # fmt: skip
    assert selection["chosen"] == here.best_name
    # The measured run used the chosen configuration.
    chosen = candidates[list(here.names).index(selection["chosen"])]
    assert document["encoder"] == chosen.encoder.name
    reference = run_incremental(data, chosen.encoder, chosen.head, step=10, seed=0, cache=cache,
                                baselines=False, progress=None)  # fmt: skip
    assert document["final_accuracy"] == pytest.approx(reference.final_accuracy, rel=0, abs=1e-12)
    # One encoding pass of the training texts served the four candidates.
    assert "5 configurations" in done.stderr
    assert "encoding inputs for all-MiniLM-L6-v2 mean-layers + ridge" in done.stderr  # progress


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--select-models", "minilm"], "add --select"),
        (["--select", "--pooling", "last"], "drop --pooling last"),
        (["--select", "--head", "ncm"], "drop --head ncm"),
        # Given, even at the value a plain run would take: --select would override it silently.
        (["--select", "--pooling", "mean-layers"], "drop --pooling mean-layers"),
        (["--select", "--head", "ridge"], "drop --head ridge"),
        (["--select", "--select-models", "minilm,bert"], "model must be one of"),
        (["--select", "--select-models", "minilm,all-MiniLM-L6-v2"], "names a model twice"),
    ],
)
def test_select_refuses_bad_options_before_reading_data(args, message, tmp_path):
    done = _cli("--data", "banking77", *args, cache=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "encoding" not in done.stderr and not list(tmp_path.rglob("*.npy"))


def test_select_refuses_an_image_data_set(tmp_path):
    done = _cli("--data", "mnist", "--select", "--no-baselines", cache=tmp_path)
    assert done.returncode == 2
    assert "--select chooses among text encoders" in done.stderr


def test_a_model_fitted_on_per_layer_cached_features_predicts_raw_texts_alike(tmp_path):
    """Fit on features pooled from the per-layer cache, pickle, reload, predict uncached texts.

    The reloaded pipeline encodes the texts directly (no cache): its scores must match those
    of the same pipeline reading the cache, to the rounding between the two paths (2e-6 on the
    features), and so must its predictions.
    """
    import pickle

    from sklearn.pipeline import make_pipeline

    from perennial.datasets import load_banking77
    from perennial.encoders.sklearn import EncoderTransformer
    from perennial.sklearn import PerennialClassifier

    train = load_banking77().train
    keep = np.isin(train.labels, np.unique(train.labels)[:6])
    texts = [str(text) for text in np.asarray(train.inputs, dtype=object)[keep][:120]]
    labels = np.asarray(train.labels)[keep][:120]
    # The cache holds every layer's token means only (as `incremental --select` leaves it).
    FeatureCache(tmp_path, per_layer=True).encode(TextEncoder(pooling="last"), texts)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    params = {"pooling": "last"}
    cached = make_pipeline(
        EncoderTransformer("text", encoder_params=params, cache=tmp_path),
        PerennialClassifier("slda"),
    ).fit(texts, labels)
    assert len(list(tmp_path.glob("*.npy"))) == 1  # read back, not encoded again
    reloaded = pickle.loads(pickle.dumps(cached))
    reloaded.set_params(encodertransformer__cache=None)
    direct = reloaded.decision_function(texts)
    through_cache = cached.decision_function(texts)
    scale = np.abs(through_cache).max()
    np.testing.assert_allclose(direct, through_cache, rtol=0, atol=1e-4 * scale)
    np.testing.assert_array_equal(reloaded.predict(texts), cached.predict(texts))
    assert (cached.predict(texts) == labels).mean() > 0.9  # a model that learned, not noise
