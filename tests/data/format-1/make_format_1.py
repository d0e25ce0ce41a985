"""Models saved by perennial 0.1 at commit 73ac1ec (format 1, a NoveltyDetector beside the head)."""

import json
import sys

import numpy as np

from perennial import LifelongClassifier
from perennial.heads import NCMHead, RidgeHead, SLDAHead


def main(out: str) -> None:
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 3, (4, 5))
    X = np.vstack([rng.normal(c, 1.0, (12, 5)) for c in centres])
    y = [f"c{i}" for i in range(4) for _ in range(12)]
    order = rng.permutation(len(y))
    probe = rng.normal(0, 4, (6, 5))
    expected = {}
    for name, head, score in [
        ("ncm-relative", NCMHead(), "relative"),
        ("ridge-combined", RidgeHead(n_features=32), "combined"),
        ("slda-relative", SLDAHead(), "relative"),
    ]:
        model = LifelongClassifier(head=head, unknown_rate=0.1, novelty_score=score)
        for part in np.array_split(order, 4):
            model.learn_many(X[part], [y[i] for i in part])
        model.save(f"{out}/{name}")
        expected[name] = {
            "classes": model.classes_,
            "scores": model.decision_scores(probe).tolist(),
            "novelty": model.novelty_scores(probe).tolist(),
            "threshold": model.unknown_threshold_,
            "predictions": model.predict_many(probe),
        }
    # a closed-set model whose open-set statistics went out of sync (forget with the ridge head)
    model = LifelongClassifier(head=RidgeHead(n_features=32), unknown_rate=0.1)
    model.learn_many(X, y)
    model.forget("c1")
    model.save(f"{out}/ridge-forgotten")
    expected["ridge-forgotten"] = {
        "classes": model.classes_,
        "scores": model.decision_scores(probe).tolist(),
    }
    np.save(f"{out}/probe.npy", probe)
    with open(f"{out}/expected.json", "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":  # run with PYTHONPATH pointing at the src/ of commit 73ac1ec
    main(sys.argv[1])
