"""scikit-learn's check_estimator on PerennialClassifier with every head at its defaults.

The tests run the same checks with fewer random features for the ridge heads (to stay fast);
this script shows the default configuration passes them too, and how long each head takes.
Prints one line per head; nothing here is a test.
Run: .venv/bin/python benchmarks/bench_sklearn_checks.py  (about a minute on 2 cores)
"""

from __future__ import annotations

import time
import warnings

import sklearn
from sklearn.utils.estimator_checks import check_estimator

from perennial.heads import HEADS
from perennial.sklearn import PerennialClassifier


def main() -> None:
    print(f"scikit-learn {sklearn.__version__}")
    for head in sorted(HEADS):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = check_estimator(PerennialClassifier(head=head), on_fail=None)
        seconds = time.perf_counter() - start
        counts = {status: 0 for status in ("passed", "failed", "skipped", "xfail")}
        for result in results:
            counts[result["status"]] = counts.get(result["status"], 0) + 1
        failed = [r["check_name"] for r in results if r["status"] == "failed"]
        print(
            f"{head:15s} {len(results)} checks: {counts['passed']} passed, "
            f"{counts['failed']} failed, {counts['skipped']} skipped  ({seconds:.1f} s)"
            + (f"  failed: {', '.join(failed)}" if failed else "")
        )


if __name__ == "__main__":
    main()
