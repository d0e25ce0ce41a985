"""The factory camera: image classes learned from folders, and a folder that a camera writes into.

What ``perennial camera`` runs. A *class folder* holds one sub-folder per class, named after
its label, with that class's images in it (see
:func:`~perennial.encoders.image_loading.list_image_files` for the extensions read). A model
is opened or created with :func:`open_model`, taught class by class with
:func:`learn_class_folders`, and :class:`FolderWatcher` follows a folder as a camera fills it:

* a file in a sub-folder ``FOLDER/LABEL/`` is learned as ``LABEL`` (a new sub-folder is a new
  class) and moved to ``FOLDER/done/learned/LABEL/``;
* a file at the top level ``FOLDER/`` is predicted and moved to ``FOLDER/done/predicted/``;
* a file is taken only once its size and modification time stayed the same over one whole
  scan interval, so a file still being written is waited for;
* a file that cannot be read is reported (naming it) and left where it is; the files of a class
  found on one scan are learned as one batch, and a batch with a bad file teaches nothing; it is
  tried again only once something in it changes (a file replaced, removed or added). Files to
  predict are taken one by one;
* the sub-folder ``done`` is the watcher's own and never a class;
* no failure of a file or a class folder ends the watch: a file or class folder gone between
  being listed and being read is skipped (a batch that lost a file teaches nothing and is
  taken again, without it, on the next scan); a class folder that cannot be listed is reported
  once and skipped until it can; a file learned or predicted that cannot be moved away stays
  where it is, reported, and is not taken again while it is unchanged; a model that cannot be
  saved is reported once and saved again on every scan until that works;
* the watched folder must exist when watching starts. If it disappears (or cannot be listed)
  later, the watcher says so once and waits for it to come back, scanning as before, rather
  than stopping: a camera's share that drops out for a while must not end the watch.

The model is saved (atomically, :meth:`~perennial.LifelongClassifier.save`) after every batch
learned, before its files are moved: a crash in between learns those files once more at the
next start, it never loses them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perennial.encoders.image_loading import IMAGE_EXTENSIONS, list_image_files
from perennial.exceptions import DatasetNotFoundError, EmptyInputError, PerennialError

__all__ = [
    "DONE_FOLDER",
    "FolderWatcher",
    "StepResult",
    "class_folders",
    "format_prediction",
    "learn_class_folders",
    "open_model",
    "predict_files",
]

#: The watcher's own sub-folder of a watched folder (never a class).
DONE_FOLDER = "done"


def class_folders(folder: str | os.PathLike[str]) -> list[tuple[str, list[Path]]]:
    """The classes of a class folder: ``(label, image files)`` per sub-folder, sorted by label.

    Hidden sub-folders and :data:`DONE_FOLDER` are skipped.

    Raises
    ------
    DatasetNotFoundError
        ``folder`` does not exist.
    EmptyInputError
        ``folder`` has no sub-folder, or a sub-folder holds no image file (naming it).
    """
    root = Path(os.fsdecode(folder))
    if not root.is_dir():
        if not root.exists():
            raise DatasetNotFoundError(f"image folder {str(root)!r} does not exist")
        raise EmptyInputError(f"{str(root)!r} is not a folder; expected one sub-folder per class")
    classes = []
    for sub in sorted(root.iterdir()):
        if not sub.is_dir() or sub.name.startswith(".") or sub.name == DONE_FOLDER:
            continue
        files = list_image_files(sub)
        if not files:
            raise EmptyInputError(
                f"class folder {str(sub)!r} holds no image file ({', '.join(IMAGE_EXTENSIONS)})"
            )
        classes.append((sub.name, files))
    if not classes:
        raise EmptyInputError(
            f"{str(root)!r} has no sub-folder; expected one sub-folder of images per class"
        )
    return classes


def open_model(
    directory: str | os.PathLike[str],
    *,
    pretrained: bool = True,
    encoder_params: dict[str, Any] | None = None,
    head: Any = None,
) -> tuple[Any, bool]:
    """The image model saved in ``directory``, or a new one; returns ``(model, created)``.

    A new model is ``LifelongClassifier.from_pretrained("efficientnet-lite0")`` (it keeps the
    1,000 ImageNet classes) or, with ``pretrained=False``, a plain ``LifelongClassifier`` on the
    image encoder. ``encoder_params`` (``image_size``, ``resize``, ...) and ``head`` apply to a
    new model only. A missing or empty directory means a new model.
    """
    from perennial import LifelongClassifier
    from perennial.encoders import make_encoder

    path = Path(os.fsdecode(directory))
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        return LifelongClassifier.load(path), False
    encoder = make_encoder("image", **(encoder_params or {}))
    if pretrained:
        kwargs = {} if head is None else {"head": head}
        return LifelongClassifier.from_pretrained(encoder=encoder, **kwargs), True
    return LifelongClassifier(encoder, "ridge" if head is None else head), True


@dataclass
class StepResult:
    """One class learned by :func:`learn_class_folders`."""

    label: str
    images: int
    seconds: float  # reading, encoding and learning (not saving)
    accuracy: float | None = None  # on the test images of the classes learned so far
    tested: int = 0


def learn_class_folders(
    model: Any,
    folder: str | os.PathLike[str],
    *,
    test: str | os.PathLike[str] | None = None,
    save_to: str | os.PathLike[str] | None = None,
    progress: Callable[[StepResult], None] | None = None,
) -> list[StepResult]:
    """Learn a class folder one class at a time (class-incremental), saving after each class.

    Every folder is listed and checked before anything is learned. With ``test`` (a class folder
    of held-out images), the accuracy on the test images of the classes known so far (those the
    model knew before included) is measured after each step; a test class that neither the model
    nor ``folder`` holds is an error.
    """
    classes = class_folders(folder)
    tests = dict(class_folders(test)) if test is not None else {}
    known = set(model.classes_) if model.n_seen_ or model.pretrained_ is not None else set()
    unknown = sorted(set(tests) - known - {label for label, _ in classes})
    if unknown:
        raise EmptyInputError(
            f"test folder {os.fsdecode(test)!r} has classes that neither the model nor "  # type: ignore[arg-type]
            f"{os.fsdecode(folder)!r} holds: {', '.join(unknown)}"
        )
    results = []
    seen = [label for label in tests if label in known]
    for label, files in classes:
        started = time.perf_counter()
        model.learn_many(files, [label] * len(files))
        step = StepResult(label, len(files), time.perf_counter() - started)
        if save_to is not None:
            model.save(save_to)
        seen.append(label)
        test_files = [(path, name) for name in seen for path in tests.get(name, [])]
        if test_files:
            predicted = model.predict_many([path for path, _ in test_files])
            right = sum(str(p) == name for p, (_, name) in zip(predicted, test_files, strict=True))
            step.accuracy, step.tested = right / len(test_files), len(test_files)
        results.append(step)
        if progress is not None:
            progress(step)
    return results


Signature = tuple[int, int]  # size, modification time in ns


@dataclass
class _Pending:
    """Files seen on the last scan, by path, with their signatures then."""

    seen: dict[Path, Signature] = field(default_factory=dict)


class FolderWatcher:
    """Follow a folder a camera writes into: learn its sub-folders, predict its loose files.

    Parameters
    ----------
    model
        A :class:`~perennial.LifelongClassifier` on the image encoder.
    folder
        The watched folder (see the module's description for what happens to its files).
    save_to
        Where the model is saved after each batch learned (None: not saved).
    report
        Called with each line of output (a prediction, a class learned, an error).

    Examples
    --------
    >>> import tempfile
    >>> from perennial import LifelongClassifier
    >>> from perennial.encoders import IdentityEncoder
    >>> watcher = FolderWatcher(LifelongClassifier(IdentityEncoder()), tempfile.mkdtemp())
    >>> watcher.scan()  # nothing there yet
    0
    """

    def __init__(
        self,
        model: Any,
        folder: str | os.PathLike[str],
        *,
        save_to: str | os.PathLike[str] | None = None,
        report: Callable[[str], None] = print,
    ) -> None:
        self.model = model
        self.folder = Path(os.fsdecode(folder))
        self.save_to = save_to
        self.report = report
        self.done = self.folder / DONE_FOLDER
        self._pending = _Pending()
        # Batches that failed, by their files' signatures: not tried again until they change.
        self._failed: set[frozenset[tuple[Path, Signature]]] = set()
        # Files learned or predicted that could not be moved away: not taken again while they
        # stay as they were.
        self._kept: set[tuple[Path, Signature]] = set()
        # Problems that last (an unreadable folder, the watched folder gone), by what they are
        # about: each is reported when it starts and when it ends, not on every scan.
        self._problems: dict[str, str] = {}
        self._unsaved = False

    def _candidates(self, problems: dict[str, str]) -> dict[str, list[Path]]:
        """Image files by class label; ``""`` for the top level (to predict).

        A class folder that cannot be listed is left out, its trouble put in ``problems``; one
        removed since the watched folder was listed is left out silently. Raises
        :class:`OSError` or :class:`~perennial.exceptions.PerennialError` when the watched
        folder itself cannot be listed.
        """
        found: dict[str, list[Path]] = {"": list_image_files(self.folder)}
        for sub in sorted(self.folder.iterdir()):
            if not sub.is_dir() or sub.name.startswith(".") or sub.name == DONE_FOLDER:
                continue
            try:
                found[sub.name] = list_image_files(sub)
            except (OSError, PerennialError) as error:
                if sub.is_dir():  # still there, yet unreadable (gone: nothing to learn)
                    problems[str(sub)] = (
                        f"cannot read class folder {str(sub)!r} ({_reason(error)}); it is "
                        "skipped until it can be read"
                    )
        return found

    def _update_problems(self, problems: dict[str, str]) -> None:
        """Report the problems that started on this scan and those that ended."""
        for key, message in problems.items():
            if key not in self._problems:
                self.report(f"error: {message}")
        for key in sorted(self._problems.keys() - problems.keys()):
            if key == str(self.folder):
                self.report(f"the watched folder {key!r} is back; watching it again")
            else:
                self.report(f"class folder {key!r} can be read again")
        self._problems = problems

    def scan(self) -> int:
        """One pass over the folder; returns the number of files learned or predicted.

        A file counts only once it is *stable*: seen with the same size and modification time
        on the previous scan, so the time between scans is how long a file must stay unchanged.
        No failure ends a scan early but the watched folder's own: a file or a class folder
        that cannot be read, or is gone since it was listed, is reported (or skipped, when
        gone) and the other files are taken. When the watched folder is gone or cannot be
        listed, the scan reports it (once, until it is back) and returns 0.
        """
        if self._unsaved:
            self._save()
        problems: dict[str, str] = {}
        try:
            candidates = self._candidates(problems)
        except (OSError, PerennialError) as error:
            gone = not self.folder.is_dir()
            problems[str(self.folder)] = (
                f"the watched folder {str(self.folder)!r} is gone; waiting for it to come back"
                if gone
                else f"cannot read the watched folder {str(self.folder)!r} ({_reason(error)}); "
                "trying again on every scan"
            )
            self._update_problems(problems)
            self._pending.seen = {}  # files must be seen stable again once it is back
            return 0
        self._update_problems(problems)
        current: dict[Path, Signature] = {}
        for files in candidates.values():
            for path in files:
                try:
                    stat = path.stat()
                except OSError:
                    continue  # gone since it was listed
                current[path] = (stat.st_size, stat.st_mtime_ns)
        previous, self._pending.seen = self._pending.seen, current
        handled = 0
        for label, files in candidates.items():
            stable = [
                path
                for path in files
                if path in current
                and previous.get(path) == current[path]
                and (path, current[path]) not in self._kept
            ]
            # A class's files are learned as one batch; files to predict go one by one, so that
            # a bad one holds up no other.
            for batch in [stable] if label else [[path] for path in stable]:
                if not batch:
                    continue
                key = frozenset((path, current[path]) for path in batch)
                if key in self._failed:
                    continue
                if self._handle(label, batch, current):
                    handled += len(batch)
                else:
                    self._failed.add(key)
        # Forget failures and kept files that are gone or changed: they are tried anew.
        self._failed = {key for key in self._failed if all(current.get(p) == s for p, s in key)}
        self._kept = {(path, sign) for path, sign in self._kept if current.get(path) == sign}
        return handled

    def _handle(self, label: str, files: list[Path], signatures: dict[Path, Signature]) -> bool:
        """Learn or predict ``files``; False (reported) when that failed and changed nothing."""
        try:
            if label:
                self._learn(label, files, signatures)
            else:
                self._predict(files, signatures)
        except Exception as error:  # one bad batch must not end the watch
            # Before anything was learned or moved (_learn and _predict report what fails
            # later), so the model is as it was.
            if label:
                self.report(
                    f"error learning {len(files)} image(s) of {label!r}: {_reason(error)}; "
                    "nothing learned from them, the files stay where they are"
                )
            else:
                self.report(f"error predicting: {_reason(error)}; the files stay where they are")
            return False
        return True

    def _learn(self, label: str, files: list[Path], signatures: dict[Path, Signature]) -> None:
        new = label not in self.model.classes_
        started = time.perf_counter()
        self.model.learn_many(files, [label] * len(files))
        seconds = time.perf_counter() - started
        self.report(
            f"learned {len(files)} image(s) of {label!r}"
            f"{' (a new class)' if new else ''} in {1000 * seconds:.0f} ms"
        )
        self._save()  # before the files move: a crash in between learns them again, later
        for path in files:
            trouble = self._move_or_keep(path, self.done / "learned" / label, signatures[path])
            if isinstance(trouble, str):
                self.report(
                    f"error: {trouble}; it was learned, stays where it is and is not learned "
                    "again while it is unchanged"
                )

    def _predict(self, files: list[Path], signatures: dict[Path, Signature]) -> None:
        rows = self.model.predict_detailed(files, top=1)
        for path, row in zip(files, rows, strict=True):
            moved = self._move_or_keep(path, self.done / "predicted", signatures[path])
            line = format_prediction(path.name, row)
            if isinstance(moved, Path):
                self.report(f"{line} -> {moved}")
            else:
                self.report(
                    f"{line} (error: {moved}; it stays where it is and is not predicted again "
                    "while it is unchanged)"
                )

    def _save(self) -> None:
        """Save the model; on failure, report it once and try again on every scan."""
        if self.save_to is None:
            return
        try:
            self.model.save(self.save_to)
        except Exception as error:  # the model in memory is intact: go on
            if not self._unsaved:
                self.report(
                    f"error saving the model to {os.fsdecode(self.save_to)!r}: "
                    f"{_reason(error)}; watching goes on and the save is tried again on every "
                    "scan and when watching stops"
                )
            self._unsaved = True
            return
        if self._unsaved:
            self.report(f"model saved to {os.fsdecode(self.save_to)!r} (an earlier save failed)")
        self._unsaved = False

    def _move_or_keep(self, path: Path, folder: Path, signature: Signature) -> Path | str:
        """Move ``path`` into ``folder``; if that fails, keep it in place and say why."""
        try:
            return self._move(path, folder)
        except OSError as error:
            self._kept.add((path, signature))
            return f"cannot move {str(path)!r} to {str(folder)!r} ({_reason(error)})"

    def _move(self, path: Path, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / path.name
        counter = 1
        while target.exists():  # never overwrite an earlier file of the same name
            target = folder / f"{path.stem}-{counter}{path.suffix}"
            counter += 1
        os.replace(path, target)
        return target

    def run(self, interval: float, *, should_stop: Callable[[], bool]) -> None:
        """Scan every ``interval`` seconds until ``should_stop()`` is true.

        Raises
        ------
        DatasetNotFoundError
            The watched folder does not exist when watching starts. Once started, watching
            outlives it: a folder that disappears is waited for (see :meth:`scan`).
        """
        if not self.folder.is_dir():
            raise DatasetNotFoundError(f"watched folder {str(self.folder)!r} does not exist")
        while not should_stop():
            self.scan()
            deadline = time.monotonic() + interval
            while not should_stop() and time.monotonic() < deadline:
                time.sleep(min(0.05, interval))


def _reason(error: BaseException) -> str:
    """An error's message: perennial's own as it is, an OS error's reason, others with a type."""
    if isinstance(error, PerennialError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"


def format_prediction(name: str, row: dict[str, Any]) -> str:
    """One line for a prediction: ``name: label (source, confidence)``.

    ``row`` is one of :meth:`~perennial.LifelongClassifier.predict_detailed`'s rows; the
    confidence is the answering head's score of the label (a probability for the pretrained
    head, the instant head's score otherwise).

    Examples
    --------
    >>> format_prediction("a.jpg", {"label": "tabby", "score": 0.8, "source": "pretrained"})
    'a.jpg: tabby (pretrained, 0.80)'
    """
    label = "unknown" if row.get("unknown") else row["label"]
    source = row.get("source", "instant")
    return f"{name}: {label} ({source}, {row['score']:.2f})"


def predict_files(model: Any, files: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """``predict_detailed`` rows of image files, each with its ``file`` and ``source``."""
    rows = model.predict_detailed(list(files), top=3)
    out = []
    for path, row in zip(files, rows, strict=True):
        out.append({"file": os.fsdecode(path), "source": "instant", **row})
    return out
