"""How long each kind of update takes to be served, and how long a restart takes.

Starts ``perennial serve`` on a new model directory (text encoder, ridge head of
``--n-features``), teaches it ``--examples`` BANKING77 training texts in batches of 64 (1,600
by default: past the dual form's limit, so the head keeps ``G``), then, one at a time, sends

* ``POST /v1/learn`` of one text,
* ``POST /v1/unlearn`` of one text it learned,
* ``DELETE /v1/classes/{label}``,

and after each one measures how long until ``POST /v1/predict`` with ``min_version`` set to the
update's version answers 200 (that is, until the update is served). Then it stops the server
with SIGTERM and restarts it ``--restarts`` times on the same directory, measuring how long until
``/healthz`` answers and until a first prediction does, and which statuses predictions got in
between.

Nothing here is a test; the figures depend on what else runs on the machine (the load average is
printed).

Run: .venv/bin/python benchmarks/bench_service_operations.py [--examples 1600] [--restarts 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_service import Connection, start_server
from perennial.datasets import load_banking77


def served_after(port: int, version: int, limit: float) -> tuple[float, dict[int, int]]:
    """Seconds until a prediction at ``min_version=version`` answers 200; statuses meanwhile."""
    started = time.perf_counter()
    statuses: dict[int, int] = {}
    while time.perf_counter() - started < limit:
        status, _, _ = Connection(port).request(
            "POST", "/v1/predict", {"inputs": ["hello"], "min_version": version}
        )
        if status == 200:
            return time.perf_counter() - started, statuses
        statuses[status] = statuses.get(status, 0) + 1
        time.sleep(0.01)
    return float("inf"), statuses


def update(port: int, method: str, path: str, body: Any = None) -> int:
    status, answer, _ = Connection(port).request(method, path, body)
    if status != 200:
        raise SystemExit(f"{method} {path} answered {status}: {answer}")
    return int(answer["version"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1600, help="texts learned first")
    parser.add_argument("--n-features", type=int, default=4096)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--limit", type=float, default=300.0, help="longest wait, seconds")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    server_args = argparse.Namespace(
        backend=None,
        n_features=args.n_features,
        background_nice=None,
        no_background_idle=False,
        encoder_threads=None,
        snapshot_every=100_000,
    )
    data = load_banking77()
    texts = [str(text) for text in data.train.inputs[: args.examples]]
    labels = [str(label) for label in data.train.labels[: args.examples]]
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    directory = Path(tempfile.mkdtemp(prefix="bench-operations-"))
    process, port = start_server(directory, server_args)
    rows: list[tuple[str, str]] = []
    try:
        version = 0
        for start in range(0, len(texts), 64):
            version = update(
                port,
                "POST",
                "/v1/learn",
                {"inputs": texts[start : start + 64], "labels": labels[start : start + 64]},
            )
        seconds, _ = served_after(port, version, args.limit)
        rows.append((f"{len(texts)} texts learned, all served", f"{seconds:.2f} s"))
        steps = [
            (
                "learn of one text",
                "POST",
                "/v1/learn",
                {"inputs": texts[-1:], "labels": labels[-1:]},
            ),
            (
                "unlearn of one text",
                "POST",
                "/v1/unlearn",
                {"inputs": texts[:1], "labels": labels[:1]},
            ),
            ("forget of a class", "DELETE", f"/v1/classes/{labels[1]}", None),
        ]
        for name, method, path, body in steps:
            time.sleep(2.0)  # a quiet start: no step still under way
            version = update(port, method, path, body)
            seconds, statuses = served_after(port, version, args.limit)
            rows.append((f"{name}, served", f"{seconds:.2f} s (meanwhile {statuses or 'none'})"))
        for restart in range(args.restarts):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
            started = time.perf_counter()
            process, port = start_server(directory, server_args)
            healthy = time.perf_counter() - started
            seconds, statuses = served_after(port, version, args.limit)
            rows.append(
                (
                    f"restart {restart + 1}: /healthz, then the first prediction",
                    f"{healthy:.2f} s, {healthy + seconds:.2f} s (meanwhile {statuses or 'none'})",
                )
            )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    print(f"\n| figure ({len(texts)} texts, {args.n_features} features) | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
