"""The open-set protocol on real CLINC150 queries, checked against independent computations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from perennial.datasets import Dataset, Split, load_dataset
from perennial.encoders import FunctionEncoder
from perennial.heads import RidgeHead
from perennial.protocols.openset import auroc, fpr_at_tpr, run_open_set


def hashed_words(texts):
    """A cheap deterministic text encoder: hashed word counts, L2-normalised."""
    out = np.zeros((len(texts), 256))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % 256] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module")
def small_clinc():
    data = load_dataset("clinc150")
    keep = sorted(set(data.train.labels.tolist()))[:30]

    def subset(split):
        rows = [i for i, label in enumerate(split.labels.tolist()) if label in keep]
        return Split([split.inputs[i] for i in rows], split.labels[rows])

    oos = data.extra["oos_test"]
    return Dataset(
        "clinc150-30",
        subset(data.train),
        subset(data.test),
        extra={"oos_test": Split(list(oos.inputs[:300]), oos.labels[:300])},
        metadata={"kind": "text"},
    )


def test_auroc_and_fpr_match_independent_references():
    rng = np.random.default_rng(0)
    inside, outside = rng.normal(0, 1, 500), rng.normal(1.5, 1, 200)
    labels = np.r_[np.zeros(500), np.ones(200)]
    assert auroc(inside, outside) == pytest.approx(roc_auc_score(labels, np.r_[inside, outside]))
    threshold = np.sort(inside)[int(np.ceil(0.95 * 500)) - 1]
    assert fpr_at_tpr(inside, outside) == pytest.approx(np.mean(outside <= threshold), abs=0.01)


def test_protocol_figures_are_consistent_with_the_final_model(small_clinc):
    encoder = FunctionEncoder(hashed_words, name="hashed-words-256")
    result = run_open_set(
        small_clinc, encoder, RidgeHead(n_features=256), unknown_rate=0.05, progress=None
    )
    assert len(result.steps) == 3 and result.n_classes == 30
    # Figures are fractions, and the rejection of in-scope queries is near its target.
    for key in ("in_scope_accuracy", "oos_recall", "auroc", "fpr_at_95tpr"):
        assert 0.0 <= getattr(result, key) <= 1.0
    assert result.in_scope_accuracy <= result.closed_set_accuracy
    assert abs(result.in_scope_rejection - 0.05) < 0.04
    # Hashed words separate CLINC's out-of-scope queries far better than chance.
    assert result.auroc > 0.75 and result.oos_recall > 0.2
    doc = result.to_dict()
    assert json.loads(json.dumps(doc))["auroc"] == result.auroc


def test_cli_refuses_a_data_set_without_out_of_scope_queries(tmp_path):
    csv = tmp_path / "intents.csv"
    csv.write_text(
        "text,category\n" + "".join(f"hello {i},greet\nbye {i},leave\n" for i in range(5))
    )
    done = subprocess.run(
        [sys.executable, "-m", "perennial.cli", "openset", "--data", str(csv), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 2
    assert "no out-of-scope split 'oos_test'" in done.stderr
