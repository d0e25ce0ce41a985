"""Writes tests/data/ridge-v1/*: ridge heads saved as perennial saved them at commit 73ac1ec.

Run at that commit from the repository root (it is kept to show how the fixture was made):
PYTHONPATH=src python tests/data/ridge-v1/make_fixture.py
"""

import numpy as np

from perennial.heads import HEADS, RidgeEnsembleHead, RidgeHead
from perennial.persistence import write_model_files

rng = np.random.default_rng(2024)
centers = rng.normal(0, 2, (3, 5))
X = np.vstack([c + rng.normal(0, 1, (6, 5)) for c in centers])
y = [f"c{k}" for k in range(3) for _ in range(6)]
probes = rng.normal(0, 2, (4, 5))
np.save("tests/data/ridge-v1/inputs.npy", np.vstack([X, probes]))
for head in [
    RidgeHead(n_features=16, ridge=0.5, seed=7),
    RidgeEnsembleHead(n_members=2, n_features=12, seed=3),
    RidgeHead(n_features=8, exact_forget=True),
]:
    name = next(n for n, cls in HEADS.items() if type(head) is cls)
    head.learn_many(X, y)
    meta, arrays = head.get_state()
    arrays["expected_scores"] = head.decision_scores(probes)  # as the old code predicted
    tag = f"{name}-exact" if getattr(head, "exact_forget", False) else name
    write_model_files(
        f"tests/data/ridge-v1/{tag}",
        {"head": {"name": name, "params": head.get_params(), "state": meta}},
        arrays,
    )
