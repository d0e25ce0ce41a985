"""Text intent-classification data: generic ``text,category`` CSV files, BANKING77, CLINC150.

Texts are kept exactly as written in the files (BANKING77 has a few with leading newlines);
only labels are stripped of surrounding whitespace.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.datasets.base import (
    Dataset,
    Split,
    check_seed,
    check_test_fraction,
    data_root,
    stratified_split,
)
from perennial.exceptions import DatasetError, DatasetNotFoundError

__all__ = ["CLINC150_SPLITS", "load_banking77", "load_clinc150", "load_intent_csv"]

#: Keys of CLINC150's ``data_full.json``; the first two are required, the rest become extras.
CLINC150_SPLITS = ("train", "test", "val", "oos_train", "oos_val", "oos_test")

_CSV_FORMAT = "a CSV file with a header row containing 'text' and 'category' columns"
_CLINC_FORMAT = (
    "a CLINC150 JSON file: an object whose keys (train, test, val, oos_*) map to lists of "
    "[text, intent] pairs"
)


def _str_labels(labels: list[str]) -> NDArray[Any]:
    array = np.empty(len(labels), dtype=object)
    array[:] = labels
    return array


def _read_intent_csv(path: Path) -> Split:
    if not path.is_file():
        raise DatasetNotFoundError(f"expected {_CSV_FORMAT} at {path}, but there is no such file")
    texts: list[str] = []
    labels: list[str] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"expected {_CSV_FORMAT} at {path}, got an empty file")
            columns = [name.strip().lower() for name in header]
            for required in ("text", "category"):
                if columns.count(required) != 1:
                    found = "no" if required not in columns else "more than one"
                    raise DatasetError(
                        f"expected {_CSV_FORMAT} at {path}, found {found} {required!r} column "
                        f"in the header {header}"
                    )
            text_col, label_col = columns.index("text"), columns.index("category")
            width = max(text_col, label_col) + 1
            for row in reader:
                if not row:  # blank line
                    continue
                line = reader.line_num
                if len(row) < width:
                    raise DatasetError(
                        f"expected {_CSV_FORMAT} at {path}: line {line} has {len(row)} "
                        f"field(s), too few to reach the 'text' and 'category' columns"
                    )
                text, label = row[text_col], row[label_col].strip()
                if not text.strip():
                    raise DatasetError(f"empty text at {path}, line {line}; expected {_CSV_FORMAT}")
                if not label:
                    raise DatasetError(
                        f"empty category at {path}, line {line}; expected {_CSV_FORMAT}"
                    )
                texts.append(text)
                labels.append(label)
    except UnicodeDecodeError as error:
        raise DatasetError(f"expected UTF-8 {_CSV_FORMAT} at {path}: {error}") from error
    except csv.Error as error:
        raise DatasetError(f"expected {_CSV_FORMAT} at {path}: {error}") from error
    except OSError as error:
        raise DatasetNotFoundError(f"could not read {_CSV_FORMAT} at {path}: {error}") from error
    if not texts:
        raise DatasetError(f"expected {_CSV_FORMAT} at {path}, got a header but no data rows")
    return Split(inputs=texts, labels=_str_labels(labels))


def load_intent_csv(
    train_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str] | None = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> Dataset:
    """Load labelled texts from CSV files with ``text`` and ``category`` columns.

    Parameters
    ----------
    train_path : str or path-like
        CSV file with a header row; ``text`` and ``category`` may be in any order and other
        columns are ignored. UTF-8, with or without a byte-order mark.
    test_path : str or path-like, optional
        A second CSV file in the same format. Without it, ``train_path`` is split with
        :func:`stratified_split` and the split parameters are recorded in
        ``metadata["split"]``.
    test_fraction : float
        Share of each class held out when ``test_path`` is not given.
    seed : int
        Seed of that split.
    name : str, optional
        Data set name; defaults to the stem of ``train_path``.

    Returns
    -------
    Dataset
        Texts as lists of str, labels as object arrays of str; ``metadata["kind"] == "text"``.

    Raises
    ------
    DatasetNotFoundError
        If a file is missing.
    DatasetError
        If the header lacks a column, a row is short, or a text or category is empty (the
        message gives the line number).
    InvalidParameterError
        If ``test_fraction`` is not strictly between 0 and 1 or ``seed`` is not a non-negative
        integer.
    """
    train_file = Path(train_path)
    metadata: dict[str, Any] = {"kind": "text", "source": {"train": str(train_file)}}
    if test_path is None:
        full = _read_intent_csv(train_file)
        train_idx, test_idx = stratified_split(full.labels, test_fraction, seed)
        train, test = full.subset(train_idx), full.subset(test_idx)
        metadata["split"] = {
            "method": "stratified_split",
            "test_fraction": float(test_fraction),
            "seed": int(seed),
        }
    else:
        # Validate the (unused) split parameters anyway, so a typo never passes silently.
        check_test_fraction(test_fraction)
        check_seed(seed)
        train = _read_intent_csv(train_file)
        test = _read_intent_csv(Path(test_path))
        metadata["source"]["test"] = str(Path(test_path))
    return Dataset(
        name=name if name is not None else train_file.stem,
        train=train,
        test=test,
        metadata=metadata,
    )


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DatasetNotFoundError(f"expected {what} at {path}, but there is no such file")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"expected {what} at {path}, but it is not valid JSON: {error}"
        ) from error
    except UnicodeDecodeError as error:
        raise DatasetError(f"expected UTF-8 {what} at {path}: {error}") from error
    except OSError as error:
        raise DatasetNotFoundError(f"could not read {what} at {path}: {error}") from error


def load_banking77(directory: str | os.PathLike[str] | None = None) -> Dataset:
    """Load BANKING77: 77 online-banking intents, official train and test files.

    Parameters
    ----------
    directory : str or path-like, optional
        Folder with ``train.csv`` and ``test.csv`` (columns ``text,category``) and optionally
        ``categories.json`` (a list of the intent names). Defaults to
        ``data_root() / "banking77"``.

    Returns
    -------
    Dataset
        With ``metadata["label_names"]`` from ``categories.json`` when present.
    """
    folder = Path(directory) if directory is not None else data_root() / "banking77"
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"expected a BANKING77 folder at {folder} holding train.csv and test.csv "
            "(columns text,category), but there is no such folder"
        )
    dataset = load_intent_csv(folder / "train.csv", folder / "test.csv", name="banking77")
    categories_path = folder / "categories.json"
    if categories_path.is_file():
        what = "a BANKING77 categories.json (a JSON list of intent names)"
        names = _read_json(categories_path, what)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"expected {what} at {categories_path}")
        dataset.metadata["label_names"] = names
    return dataset


def _clinc_split(data: dict[str, Any], key: str, path: Path) -> Split:
    items = data[key]
    if not isinstance(items, list):
        raise DatasetError(
            f"expected {_CLINC_FORMAT} at {path}; key {key!r} holds {type(items).__name__}"
        )
    texts: list[str] = []
    labels: list[str] = []
    for index, item in enumerate(items):
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            raise DatasetError(
                f"expected a [text, intent] pair of strings at {path}, key {key!r}, "
                f"index {index}; got {item!r:.80}"
            )
        if not item[0].strip() or not item[1].strip():
            raise DatasetError(
                f"empty text or intent at {path}, key {key!r}, index {index}; "
                f"expected {_CLINC_FORMAT}"
            )
        texts.append(item[0])
        labels.append(item[1].strip())
    if not texts:
        raise DatasetError(f"expected {_CLINC_FORMAT} at {path}; key {key!r} holds no examples")
    return Split(inputs=texts, labels=_str_labels(labels))


def _clinc_domains(path: Path) -> dict[str, list[str]]:
    what = "a CLINC150 domains.json (an object mapping each domain to a list of intents)"
    raw = _read_json(path, what)
    if not isinstance(raw, dict):
        raise DatasetError(f"expected {what} at {path}, got {type(raw).__name__}")
    for domain, intents in raw.items():
        if not isinstance(intents, list) or not all(isinstance(i, str) for i in intents):
            raise DatasetError(f"expected {what} at {path}; domain {domain!r} is not a list of str")
    return {str(domain): list(intents) for domain, intents in raw.items()}


def load_clinc150(directory: str | os.PathLike[str] | None = None) -> Dataset:
    """Load CLINC150 (OOS-eval): 150 in-scope intents in 10 domains, plus out-of-scope queries.

    Parameters
    ----------
    directory : str or path-like, optional
        Folder with ``data_full.json`` and optionally ``domains.json``. Defaults to
        ``data_root() / "clinc150"``.

    Returns
    -------
    Dataset
        ``train`` and ``test`` hold the in-scope queries; ``extra`` holds whichever of
        ``val``, ``oos_train``, ``oos_val`` and ``oos_test`` the file has (out-of-scope
        queries are labelled ``"oos"``); ``metadata["domains"]`` maps each domain to its
        intents when ``domains.json`` is present.

    Raises
    ------
    DatasetNotFoundError
        If the folder or ``data_full.json`` is missing.
    DatasetError
        If the JSON is invalid, ``train`` or ``test`` is missing, or an item is not a
        ``[text, intent]`` pair of non-empty strings (the message names key and index).
    """
    folder = Path(directory) if directory is not None else data_root() / "clinc150"
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"expected a CLINC150 folder at {folder} holding data_full.json, "
            "but there is no such folder"
        )
    path = folder / "data_full.json"
    data = _read_json(path, _CLINC_FORMAT)
    if not isinstance(data, dict):
        raise DatasetError(f"expected {_CLINC_FORMAT} at {path}, got {type(data).__name__}")
    for key in ("train", "test"):
        if key not in data:
            raise DatasetError(f"expected {_CLINC_FORMAT} at {path}; the key {key!r} is missing")
    splits = {key: _clinc_split(data, key, path) for key in CLINC150_SPLITS if key in data}
    metadata: dict[str, Any] = {"kind": "text", "source": str(path)}
    domains_path = folder / "domains.json"
    if domains_path.is_file():
        metadata["domains"] = _clinc_domains(domains_path)
    return Dataset(
        name="clinc150",
        train=splits.pop("train"),
        test=splits.pop("test"),
        extra=splits,
        metadata=metadata,
    )
