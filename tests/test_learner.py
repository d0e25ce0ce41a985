"""LifelongClassifier: learning, persistence, bad input, and the no-raw-data guarantee."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from perennial import LifelongClassifier, NCMHead, RidgeHead, SLDAHead
from perennial.audit import raw_bytes_in_files, raw_bytes_in_memory, raw_bytes_stored
from perennial.encoders import FunctionEncoder, IdentityEncoder
from perennial.exceptions import (
    CorruptedModelError,
    EmptyInputError,
    EncoderError,
    FeatureDimensionError,
    FormatVersionError,
    InputTypeError,
    InvalidInputError,
    InvalidParameterError,
    LabelLengthError,
    ModelMismatchError,
    NonFiniteInputError,
    NotFittedError,
    PersistenceError,
    UnknownLabelError,
)
from perennial.heads import HEADS, registered_name


def hashed_features(texts):
    """A deterministic toy text encoder: character trigram counts hashed into 64 buckets."""
    out = np.zeros((len(texts), 64))
    for i, text in enumerate(texts):
        for j in range(len(text) - 2):
            bucket = int(hashlib.md5(text[j : j + 3].encode()).hexdigest(), 16) % 64
            out[i, bucket] += 1.0
    return out


def toy_texts(seed: int = 0, per_class: int = 12):
    rng = np.random.default_rng(seed)
    topics = {
        "cards": ["card", "pin", "atm", "blocked", "contactless"],
        "travel": ["flight", "hotel", "luggage", "passport", "visa"],
        "food": ["pizza", "recipe", "restaurant", "vegan", "dinner"],
    }
    texts, labels = [], []
    for label, words in topics.items():
        for k in range(per_class):
            picked = rng.choice(words, size=3)
            texts.append(f"question {k} about my {' and '.join(picked)} please")
            labels.append(label)
    return texts, labels


def text_model(head=None):
    return LifelongClassifier(
        FunctionEncoder(hashed_features, name="trigram-64"), head or RidgeHead(n_features=64)
    )


def test_learner_equals_head_on_encoded_features():
    texts, labels = toy_texts()
    model = text_model()
    model.learn_many(texts, labels)
    head = RidgeHead(n_features=64)
    head.learn_many(hashed_features(texts), labels)
    np.testing.assert_allclose(
        model.decision_scores(texts), head.decision_scores(hashed_features(texts)), rtol=1e-6
    )
    assert model.predict_many(texts[:4]) == head.predict_many(hashed_features(texts[:4]))
    assert model.predict_one(texts[0]) == model.predict_many(texts[:1])[0]
    proba = model.predict_proba_one(texts[0])
    assert set(proba) == set(model.classes_) and abs(sum(proba.values()) - 1) < 1e-9
    assert list(model.predict(texts[:3])) == model.predict_many(texts[:3])


def test_learn_one_then_new_class_at_any_time():
    texts, labels = toy_texts()
    model = text_model(NCMHead())
    for text, label in zip(texts[:24], labels[:24], strict=True):
        model.learn_one(text, label)
    assert model.classes_ == ["cards", "travel"]
    model.learn_many(texts[24:], labels[24:])
    assert model.classes_ == ["cards", "travel", "food"]
    accuracy = np.mean(np.array(model.predict_many(texts)) == np.array(labels))
    assert accuracy > 0.9


def test_fit_resets_and_partial_fit_accumulates():
    texts, labels = toy_texts()
    model = text_model(NCMHead())
    model.partial_fit(texts[:12], labels[:12]).partial_fit(texts[12:], labels[12:])
    assert model.n_seen_ == len(texts)
    model.fit(texts[:12], labels[:12])
    assert model.n_seen_ == 12 and model.classes_ == ["cards"]


@pytest.mark.parametrize(
    "head", [RidgeHead(n_features=32), SLDAHead(exact_forget=True), NCMHead()], ids=repr
)
def test_save_load_round_trip(tmp_path, head):
    texts, labels = toy_texts()
    model = text_model(head)
    model.learn_many(texts, labels)
    model.save(tmp_path / "model")
    loaded = LifelongClassifier.load(
        tmp_path / "model", encoder=FunctionEncoder(hashed_features, name="trigram-64")
    )
    assert loaded.classes_ == model.classes_
    assert loaded.head.get_params() == model.head.get_params()
    np.testing.assert_array_equal(loaded.decision_scores(texts), model.decision_scores(texts))
    # Learning continues from the loaded statistics exactly as from the original.
    model.learn_one("my visa card was blocked abroad", "travel")
    loaded.learn_one("my visa card was blocked abroad", "travel")
    np.testing.assert_allclose(
        loaded.decision_scores(texts), model.decision_scores(texts), rtol=1e-9
    )


def test_identity_model_reloads_without_an_encoder(tmp_path):
    model = LifelongClassifier(head=RidgeHead(n_features=16))
    X = np.random.default_rng(0).normal(size=(30, 4))
    model.learn_many(X, ["a"] * 15 + ["b"] * 15)
    model.save(tmp_path / "m")
    loaded = LifelongClassifier.load(tmp_path / "m")
    assert isinstance(loaded._encoder, IdentityEncoder)
    np.testing.assert_array_equal(loaded.decision_scores(X), model.decision_scores(X))


def saved(tmp_path: Path) -> Path:
    model = LifelongClassifier(head=NCMHead())
    model.learn_many(np.eye(3), ["a", "b", "c"])
    return model.save(tmp_path / "m")


def test_corrupted_arrays_are_refused(tmp_path):
    path = saved(tmp_path)
    arrays_file = next(path.glob("state-*.safetensors"))
    data = bytearray(arrays_file.read_bytes())
    data[-3] ^= 0xFF
    arrays_file.write_bytes(bytes(data))
    with pytest.raises(CorruptedModelError, match="damaged"):
        LifelongClassifier.load(path)


def test_truncated_and_missing_files_are_refused(tmp_path):
    path = saved(tmp_path)
    arrays_file = next(path.glob("state-*.safetensors"))
    arrays_file.write_bytes(arrays_file.read_bytes()[:20])
    with pytest.raises(CorruptedModelError):
        LifelongClassifier.load(path)
    arrays_file.unlink()
    with pytest.raises(CorruptedModelError, match="cannot read"):
        LifelongClassifier.load(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CorruptedModelError, match="not readable JSON"):
        LifelongClassifier.load(path)
    with pytest.raises(PersistenceError, match="no saved model"):
        LifelongClassifier.load(tmp_path / "nowhere")


def edit_meta(path: Path, change) -> None:
    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def test_version_and_shape_mismatches_are_refused(tmp_path):
    path = saved(tmp_path)
    for version in (99, 0, "1", True, None):
        edit_meta(path, lambda m, v=version: m.update(format_version=v))
        with pytest.raises(FormatVersionError, match="format version"):
            LifelongClassifier.load(path)
    edit_meta(path, lambda m: m.update(format_version=2))  # version 2 reads too
    LifelongClassifier.load(path)
    edit_meta(path, lambda m: m.update(format_version=1))
    edit_meta(path, lambda m: m["arrays"]["sums"].update(shape=[4, 3]))
    with pytest.raises(ModelMismatchError, match="sums"):
        LifelongClassifier.load(path)
    edit_meta(path, lambda m: m["arrays"]["sums"].update(shape=[3, 3]))
    edit_meta(path, lambda m: m["payload"]["head"]["state"].update(classes=["a", "b"]))
    with pytest.raises(ModelMismatchError, match="2 classes"):
        LifelongClassifier.load(path)


def test_encoder_mismatch_is_refused(tmp_path):
    texts, labels = toy_texts()
    model = text_model(NCMHead())
    model.learn_many(texts, labels)
    model.save(tmp_path / "m")
    with pytest.raises(PersistenceError, match="custom encoder 'trigram-64'"):
        LifelongClassifier.load(tmp_path / "m")
    with pytest.raises(ModelMismatchError, match="'trigram-64'"):
        LifelongClassifier.load(
            tmp_path / "m", encoder=FunctionEncoder(hashed_features, name="other")
        )


def test_a_failed_save_leaves_the_previous_model_intact(tmp_path, monkeypatch):
    path = saved(tmp_path)
    before = LifelongClassifier.load(path)
    model = LifelongClassifier(head=NCMHead())
    model.learn_many(np.eye(3) * 2, ["x", "y", "z"])
    real_replace = os.replace

    def crash_on_meta(src, dst):
        if str(dst).endswith("meta.json"):
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_meta)
    with pytest.raises(OSError, match="simulated"):
        model.save(path)
    monkeypatch.undo()
    after = LifelongClassifier.load(path)
    assert after.classes_ == before.classes_ == ["a", "b", "c"]
    np.testing.assert_array_equal(after.head.sums_, before.head.sums_)
    assert not list(path.glob("*.tmp"))


# --- bad input through the learner -------------------------------------------------------------------
def test_bad_inputs_raise_typed_errors_and_change_nothing():
    texts, labels = toy_texts()
    model = text_model()
    with pytest.raises(NotFittedError):
        model.predict_one("anything")
    model.learn_many(texts, labels)
    meta, arrays = model.head.get_state()
    cases = [
        (lambda: model.learn_many([], []), EmptyInputError),
        (lambda: model.learn_many("a single string", ["x"]), InputTypeError),
        (lambda: model.learn_many(texts[:3], labels[:2]), LabelLengthError),
        (lambda: model.learn_many([np.nan, "x"], ["a", "b"]), EncoderError),
        (lambda: model.forget("unknown"), UnknownLabelError),
        (lambda: model.learn_many(texts[:2], [None, "a"]), InputTypeError),
    ]
    for call, error in cases:
        with pytest.raises(error):
            call()
    meta_after, arrays_after = model.head.get_state()
    assert meta_after == meta
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], arrays_after[key])

    numeric = LifelongClassifier(head=NCMHead())
    numeric.learn_many(np.eye(3), ["a", "b", "c"])
    with pytest.raises(NonFiniteInputError, match="nan"):
        numeric.learn_one([np.nan, 0, 0], "a")
    with pytest.raises(FeatureDimensionError, match="expected 3"):
        numeric.predict_one([1.0, 2.0])
    assert numeric.n_seen_ == 3


def test_labels_in_any_unicode_spelling_name_one_class_and_bad_ones_change_nothing(tmp_path):
    texts, labels = toy_texts(per_class=16)
    composed = ["caf\u00e9" if label == "food" else label for label in labels]
    decomposed = ["cafe\u0301" if label == "food" else label for label in labels]
    model = LifelongClassifier(
        FunctionEncoder(hashed_features, name="trigram-64"),
        RidgeHead(n_features=32, ridge=1.0),
        unknown_rate=0.05,
    )
    reference = LifelongClassifier(
        FunctionEncoder(hashed_features, name="trigram-64"),
        RidgeHead(n_features=32, ridge=1.0),
        unknown_rate=0.05,
    )
    # The model hears both spellings; the reference only the composed one (NFC).
    model.learn_many(texts[::2], decomposed[::2])
    model.learn_many(texts[1::2], composed[1::2])
    model.unlearn_many(texts[:6], decomposed[:6])
    reference.learn_many(texts[::2], composed[::2])
    reference.learn_many(texts[1::2], composed[1::2])
    reference.unlearn_many(texts[:6], composed[:6])
    assert model.classes_ == reference.classes_ and "caf\u00e9" in model.classes_
    np.testing.assert_allclose(
        model.decision_scores(texts), reference.decision_scores(texts), rtol=1e-9
    )
    np.testing.assert_allclose(model.novelty_scores(texts), reference.novelty_scores(texts))
    assert model.predict_proba_one(texts[0]).keys() == {"cards", "travel", "caf\u00e9"}
    # Labels that are not one line of valid text are refused and change nothing.
    meta, arrays = model.head.get_state()
    for bad, message in [
        ("caf\ud800", "lone surrogate"),
        ("food\n", "control character"),
        ("\u2028", "control character"),
        ("\t", "control character"),
        ("\u3000", "blank"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            model.learn_many(texts[:2], ["cards", bad])
        with pytest.raises(InvalidInputError, match=message):
            model.unlearn_many(texts[:2], ["cards", bad])
    after, arrays_after = model.head.get_state()
    assert after == meta and all(np.array_equal(arrays[k], arrays_after[k]) for k in arrays)
    # Saved and loaded in NFC; forgetting by the other spelling finds the class.
    model.save(tmp_path / "model")
    loaded = LifelongClassifier.load(
        tmp_path / "model", encoder=FunctionEncoder(hashed_features, name="trigram-64")
    )
    assert loaded.classes_ == reference.classes_
    loaded.forget("cafe\u0301")
    reference.forget("caf\u00e9")
    assert loaded.classes_ == reference.classes_ == ["cards", "travel"]
    np.testing.assert_allclose(
        loaded.decision_scores(texts), reference.decision_scores(texts), rtol=1e-9
    )


# --- no raw inputs kept ----------------------------------------------------------------------------
def test_no_raw_input_is_kept_in_memory_or_on_disk(tmp_path):
    texts, labels = toy_texts(per_class=20)
    marked = [f"{text} marker-{i:05d}-zq" for i, text in enumerate(texts)]
    model = text_model(RidgeHead(n_features=32))
    model.learn_many(marked, labels)
    model.predict_many(marked[:5])
    assert raw_bytes_in_memory(model, marked, model.classes_) == 0
    model.save(tmp_path / "m")
    assert raw_bytes_in_files(tmp_path, marked, model.classes_) == 0
    assert raw_bytes_stored(model, marked) == 0


class HoardingHead(NCMHead):
    """A head that (wrongly) keeps what it is given: the audit must notice."""

    def _learn(self, X, columns, n_new):  # the hook every way of learning goes through
        self.kept = [*getattr(self, "kept", []), np.asarray(X)]
        super()._learn(X, columns, n_new)


class HoardingModel(LifelongClassifier):
    def learn_many(self, X, y):
        self.kept_texts = list(X)
        super().learn_many(X, y)


def test_the_raw_input_audit_detects_a_model_that_keeps_inputs(tmp_path):
    texts, labels = toy_texts()
    hoarder = HoardingModel(FunctionEncoder(hashed_features, name="trigram-64"), NCMHead())
    hoarder.learn_many(texts, labels)
    expected = sum(len(t.encode()) for t in texts)
    assert raw_bytes_in_memory(hoarder, texts) == expected
    (tmp_path / "dump.txt").write_text("\n".join(texts[:3]))
    assert raw_bytes_in_files(tmp_path, texts) == sum(len(t.encode()) for t in texts[:3])
    assert raw_bytes_stored(hoarder, texts) >= expected  # memory, and any files it saved
    # Values that survive the float32 encoding unchanged, so the head's copies equal them.
    features = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32).astype(np.float64)
    model = LifelongClassifier(head=HoardingHead())
    model.learn_many(features, ["a", "b", "a", "b"])
    assert raw_bytes_in_memory(model, [features]) == features.nbytes


def test_identity_encoder_flattens_images_to_rows():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    features = IdentityEncoder().encode(images)
    np.testing.assert_array_equal(features, images.reshape(2, 12).astype(np.float32))
    with pytest.raises(EmptyInputError):
        IdentityEncoder().encode(np.zeros((0, 3, 4)))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_head_named_by_string_is_the_registry_head_with_its_defaults(name, tmp_path):
    model = LifelongClassifier(IdentityEncoder(), head=name)
    assert type(model.head) is HEADS[name] and model.head.name == name
    assert model.head.get_params() == HEADS[name]().get_params()
    X = np.random.default_rng(1).normal(size=(12, 4))
    model.learn_many(X, ["a", "b", "c"] * 4)
    loaded = LifelongClassifier.load(model.save(tmp_path / "m"))
    assert type(loaded.head) is HEADS[name]
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("head", ["foo", "SLDA", 3, object()])
def test_an_unknown_head_is_refused_at_construction_naming_the_choices(head):
    with pytest.raises(InvalidParameterError, match="ncm, ridge, ridge-ensemble, slda"):
        LifelongClassifier(head=head)


def test_a_head_subclass_is_not_saved_under_its_parent_name(tmp_path):
    class Custom(NCMHead):
        pass

    assert registered_name(Custom()) is None and registered_name(NCMHead()) == "ncm"
    model = LifelongClassifier(IdentityEncoder(), head=Custom())
    model.learn_many(np.eye(3), ["a", "b", "c"])
    with pytest.raises(PersistenceError, match="Custom"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_get_params_and_set_params_follow_scikit_learn_and_keep_what_was_learned():
    model = LifelongClassifier(IdentityEncoder(), head="ncm", unknown_rate=0.1)
    params = model.get_params()
    assert set(params) >= {"encoder", "head", "unknown_rate", "unknown_label", "novelty_score"}
    assert params["unknown_rate"] == 0.1 and isinstance(params["head"], NCMHead)
    X = np.random.default_rng(2).normal(size=(30, 3))
    model.learn_many(X, ["a", "b", "c"] * 10)
    before = model.predict_detailed(X)
    assert model.set_params(unknown_rate=0.2, unknown_label="?") is model
    assert model.get_params()["unknown_rate"] == 0.2 and model.unknown_label == "?"
    assert model.n_seen_ == 30
    after = model.predict_detailed(X)  # the same statistics, another rate
    assert [a["novelty"] for a in after] == [b["novelty"] for b in before]
    for bad in ({"head": "slda"}, {"encoder": IdentityEncoder()}, {"novelty_score": "relative"}):
        with pytest.raises(InvalidParameterError, match="learned 30 examples"):
            model.set_params(**bad)
    with pytest.raises(InvalidParameterError, match="unknown parameter 'nope'"):
        model.set_params(nope=1)
    with pytest.raises(InvalidParameterError):
        model.set_params(unknown_rate=1.5)
    assert model.get_params()["unknown_rate"] == 0.2
    empty = LifelongClassifier(IdentityEncoder()).set_params(head="slda")
    assert type(empty.head) is SLDAHead
