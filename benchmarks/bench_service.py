"""Load on ``perennial serve``: concurrent clients on loopback for a fixed time.

Starts the service on a new model directory (text encoder, default ridge head of 4096 features),
teaches it BANKING77 (77 classes, ``--per-class`` training texts each, in batches of 64), then
runs two phases of ``--seconds`` each with ``--clients`` concurrent clients (threads with
keep-alive HTTP/1.1 connections, one request at a time each):

* predict: every request is one test text;
* mix: 90% predictions as above, 10% learn requests of one training text not learned yet.

After each phase it waits for the published version to catch up with the acknowledged one (so
that every phase starts from a solved model) and prints how long that took.

It prints throughput, p50 and p99 latency and the error count per phase and request kind, each
figure beside the issue's target (2 cores, text encoder: single-text predict p50 <= 15 ms,
p99 <= 60 ms, no errors; learn acknowledged, i.e. durable, p50 <= 30 ms). Then the freshness
figures, beside the targets of issue 14:

* first learn: how long after the new model's first learn was acknowledged predictions could
  see it (<= 1 s);
* lag, per mix phase: ten times a second a sampler reads the acknowledged and the published
  version; the lag at that moment is the age of the oldest acknowledged version not published
  yet (0 when none is waiting), in seconds since its acknowledgement: max and p99 (<= 2 s);
* catch-up: how long after the mix stopped the published version reached the acknowledged one
  (<= 2 s);
* shutdown: after ``--burst-seconds`` of learn requests of 32 texts each from every client, the
  server gets SIGTERM at once, with whatever backlog the burst left; the time it takes to exit
  (<= 10 s), and, after a restart on the same directory, whether its version and example count
  hold every acknowledged update.

Nothing here is a test; figures depend on what else runs on the machine (the load average is
printed).

Run: .venv/bin/python benchmarks/bench_service.py [--seconds 30] [--clients 1,2,4] [--backend torch]
     [--encoder mpnet]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from perennial.datasets import load_banking77


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Connection:
    """One keep-alive connection; ``post`` returns (status, body, seconds)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        start = time.perf_counter()
        try:
            self.http.request(method, path, body=data, headers=headers)
            response = self.http.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.http.close()
            self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            return 0, str(error), time.perf_counter() - start
        seconds = time.perf_counter() - start
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        return response.status, parsed, seconds


def start_server(directory: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "perennial.cli",
        "serve",
        "--model",
        str(directory / "model"),
        "--encoder",
        args.encoder,
        *(["--backend", args.backend] if args.backend else []),
        "--n-features",
        str(args.n_features),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--review-ttl",
        "60",
        *(
            ["--background-nice", str(args.background_nice)]
            if args.background_nice is not None
            else []
        ),
        *(["--no-background-idle"] if args.no_background_idle else []),
        *(["--encoder-threads", str(args.encoder_threads)] if args.encoder_threads else []),
        "--snapshot-every",
        str(args.snapshot_every),
    ]
    log = open(directory / "server.log", "ab")  # noqa: SIM115 - kept open for the subprocess
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit((directory / "server.log").read_text())
        try:
            status, _, _ = Connection(port).request("GET", "/healthz")
            if status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start within 300 s")


def catch_up(port: int, version: int, limit: float, every: float = 0.02) -> float | None:
    """Seconds until the served version reaches ``version`` (None: not within ``limit``)."""
    started = time.perf_counter()
    connection = Connection(port)
    while time.perf_counter() - started < limit:
        _, info, _ = connection.request("GET", "/v1/model")
        if isinstance(info, dict) and info["served_version"] >= version:
            return time.perf_counter() - started
        time.sleep(every)
    return None


def sample_versions(port: int, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    """Append (monotonic time, published version) ten times a second until ``stop``."""
    connection = Connection(port)
    while not stop.is_set():
        status, info, _ = connection.request("GET", "/v1/model")
        if status == 200 and isinstance(info, dict):
            samples.append((time.monotonic(), int(info["served_version"])))
        stop.wait(0.1)


def lags(samples: list[tuple[float, int]], acknowledged: dict[int, float]) -> list[float]:
    """At each sample, seconds since the oldest acknowledged version not yet published was
    acknowledged (0 if every acknowledged version was published)."""
    ordered = sorted(acknowledged.items())
    versions = np.array([v for v, _ in ordered])
    times = np.array([t for _, t in ordered])
    result = []
    for when, served in samples:
        waiting = times[(versions > served) & (times <= when)]
        result.append(float(when - waiting.min()) if waiting.size else 0.0)
    return result


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0 if values else float("nan")


def run_phase(
    port: int,
    clients: int,
    seconds: float,
    learn_share: float,
    queries: list[str],
    to_learn: list[tuple[str, str]],
    learn_batch: int = 1,
) -> dict[str, Any]:
    stop = time.monotonic() + seconds
    latencies: dict[str, list[float]] = {"predict": [], "learn": []}
    errors: dict[str, list[str]] = {"predict": [], "learn": []}
    acknowledged: dict[int, float] = {}  # version: when its answer arrived (monotonic)
    learned = [0]  # examples acknowledged
    samples: list[tuple[float, int]] = []
    lock = threading.Lock()
    pool = list(to_learn)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        connection = Connection(port)
        while time.monotonic() < stop:
            if rng.random() < learn_share:
                with lock:
                    if not pool:
                        continue
                    chunk = [pool.pop() for _ in range(min(learn_batch, len(pool)))]
                kind = "learn"
                status, body, took = connection.request(
                    "POST",
                    "/v1/learn",
                    {"inputs": [t for t, _ in chunk], "labels": [c for _, c in chunk]},
                )
            else:
                kind = "predict"
                status, body, took = connection.request(
                    "POST", "/v1/predict", {"inputs": [rng.choice(queries)]}
                )
            answered = time.monotonic()
            with lock:
                if status == 200:
                    latencies[kind].append(took)
                    if kind == "learn":
                        acknowledged[int(body["version"])] = answered
                        learned[0] += len(chunk)
                else:
                    errors[kind].append(f"{status}: {str(body)[:200]}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    sampling = threading.Event()
    sampler = threading.Thread(target=sample_versions, args=(port, sampling, samples))
    started = time.perf_counter()
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    sampling.set()
    sampler.join()
    del to_learn[: len(to_learn) - len(pool)]  # the texts learned in this phase are used up
    return {
        "elapsed": elapsed,
        "latencies": latencies,
        "errors": errors,
        "acknowledged": acknowledged,
        "learned": learned[0],
        "lags": lags(samples, acknowledged) if acknowledged else [],
    }


def report(name: str, result: dict[str, Any], clients: int) -> bool:
    elapsed = result["elapsed"]
    good = True
    for kind in ("predict", "learn"):
        values = result["latencies"][kind]
        errors = result["errors"][kind]
        if not values and not errors:
            continue
        p50, p99 = percentile(values, 50), percentile(values, 99)
        rate = len(values) / elapsed
        if kind == "predict":
            marks = [p50 <= 15.0, p99 <= 60.0, not errors]
            target = "p50 <= 15 ms, p99 <= 60 ms, 0 errors"
        else:
            marks = [p50 <= 30.0, not errors]
            target = "p50 <= 30 ms (durable), 0 errors"
        good = good and all(marks)
        print(
            f"| {name} | {clients} | {kind} | {len(values)} | {rate:7.1f}/s | {p50:7.1f} ms | "
            f"{p99:7.1f} ms | {len(errors)} | {target}: {'ok' if all(marks) else 'MISSED'} |"
        )
        for error in errors[:3]:
            print(f"    error: {error}")
    return good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase")
    parser.add_argument("--clients", default="1,2,4", help="comma-separated client counts")
    parser.add_argument("--per-class", type=int, default=10, help="texts learned per class first")
    parser.add_argument("--n-features", type=int, default=4096)
    parser.add_argument(
        "--backend",
        default=None,
        choices=["torch", "onnx", "onnx-fp32"],
        help="passed to perennial serve (default: its default, onnx)",
    )
    parser.add_argument(
        "--encoder",
        default="text",
        help="passed to perennial serve: text (all-MiniLM-L6-v2, the default) or mpnet",
    )
    parser.add_argument(
        "--background-nice", type=int, default=None, help="passed to perennial serve (default 10)"
    )
    parser.add_argument(
        "--no-background-idle", action="store_true", help="passed to perennial serve"
    )
    parser.add_argument(
        "--encoder-threads", type=int, default=None, help="passed to perennial serve (default 1)"
    )
    parser.add_argument("--snapshot-every", type=int, default=256, help="passed to perennial serve")
    parser.add_argument(
        "--catch-up",
        type=float,
        default=300.0,
        help="after a phase, wait this long at most for the served version to catch up",
    )
    parser.add_argument(
        "--burst-seconds",
        type=float,
        default=5.0,
        help="learn requests before the SIGTERM that measures shutdown (0: skip that part)",
    )
    parser.add_argument("--keep", default=None, help="keep the model and log in this directory")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    data = load_banking77()
    train = list(zip(data.train.inputs, data.train.labels, strict=True))
    random.Random(0).shuffle(train)
    seen: dict[str, int] = {}
    seed_set, rest = [], []
    for text, label in train:
        if seen.get(label, 0) < args.per_class:
            seen[label] = seen.get(label, 0) + 1
            seed_set.append((str(text), str(label)))
        else:
            rest.append((str(text), str(label)))
    queries = [str(text) for text in data.test.inputs]

    directory = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-service-"))
    directory.mkdir(parents=True, exist_ok=True)
    process, port = start_server(directory, args)
    freshness: list[tuple[str, str, str, bool]] = []  # (figure, value, target, met)
    try:
        connection = Connection(port)
        started = time.perf_counter()
        version, learned = 0, 0
        for i in range(0, len(seed_set), 64):
            chunk = seed_set[i : i + 64]
            status, body, _ = connection.request(
                "POST",
                "/v1/learn",
                {"inputs": [t for t, _ in chunk], "labels": [c for _, c in chunk]},
            )
            assert status == 200, body
            version = body["version"]
            learned += len(chunk)
            if i == 0:
                first = catch_up(port, version, args.catch_up, every=0.005)
                value = f"{first:.3f} s" if first is not None else f"> {args.catch_up:g} s"
                freshness.append(
                    (
                        "a new model's first learn (64 texts) visible",
                        value,
                        "<= 1 s",
                        first is not None and first <= 1.0,
                    )
                )
        while True:  # a full re-solve may take longer than one wait of the server
            status, body, _ = Connection(port).request(
                "POST", "/v1/predict", {"inputs": ["hello"], "min_version": version}
            )
            if status != 503:
                break
        assert status == 200, body
        print(
            f"model: {len(seed_set)} BANKING77 texts of {len(seen)} classes learned and served in "
            f"{time.perf_counter() - started:.1f} s (encoder={args.encoder}, "
            f"n_features={args.n_features}, "
            f"backend={args.backend or 'onnx (default)'}, background_nice="
            f"{args.background_nice if args.background_nice is not None else '10 (default)'}, "
            f"encoder_threads={args.encoder_threads or '1 (default)'}"
            f"{', no background-idle' if args.no_background_idle else ''}); load average "
            f"before: {os.getloadavg()[0]:.2f}"
        )
        print()
        print("| phase | clients | request | count | throughput | p50 | p99 | errors | target |")
        print("|---|---|---|---|---|---|---|---|---|")
        good = True
        lag_notes = []
        for clients in [int(c) for c in args.clients.split(",") if c.strip()]:
            for name, share in (("predict", 0.0), ("90/10 mix", 0.1)):
                result = run_phase(port, clients, args.seconds, share, queries, rest)
                learned += result["learned"]
                good = report(name, result, clients) and good
                _, info, _ = Connection(port).request("GET", "/v1/model")  # idle ones time out
                waited = catch_up(port, info["version"], args.catch_up)
                version = max(version, info["version"])
                lag_notes.append(
                    f"{name}, {clients} clients: at the end of the phase, acknowledged version "
                    f"{info['version']}, served {info['served_version']}; served caught up "
                    + (
                        f"{waited:.2f} s later"
                        if waited is not None
                        else f"not within {args.catch_up:g} s"
                    )
                )
                if share and result["lags"]:
                    lag = result["lags"]
                    worst, p99 = max(lag), float(np.percentile(lag, 99))
                    freshness.append(
                        (
                            f"{name}, {clients} clients: lag of the served version, max / p99 "
                            f"({len(lag)} samples)",
                            f"{worst:.2f} / {p99:.2f} s",
                            "<= 2 s",
                            worst <= 2.0,
                        )
                    )
                    freshness.append(
                        (
                            f"{name}, {clients} clients: catch-up after the load stopped",
                            f"{waited:.2f} s" if waited is not None else "never",
                            "<= 2 s",
                            waited is not None and waited <= 2.0,
                        )
                    )
        print()
        for note in lag_notes:
            print(note)
        _, metrics, _ = Connection(port).request("GET", "/metrics")
        solve = [
            line for line in str(metrics).splitlines() if line.startswith("perennial_last_solve")
        ]
        print(*solve, sep="\n")
        if args.burst_seconds > 0:
            process, port, shutdown_rows = measure_shutdown(
                process, port, directory, args, rest, version, learned
            )
            freshness += shutdown_rows
        print()
        print("| freshness | value | target |")
        print("|---|---|---|")
        for figure, value, target, met in freshness:
            print(f"| {figure} | {value} | {target}: {'met' if met else 'MISSED'} |")
            good = good and met
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print("all targets met" if good else "some targets MISSED")
    finally:
        process.terminate()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()


def measure_shutdown(
    process: subprocess.Popen[bytes],
    port: int,
    directory: Path,
    args: argparse.Namespace,
    to_learn: list[tuple[str, str]],
    version: int,
    learned: int,
) -> tuple[subprocess.Popen[bytes], int, list[tuple[str, str, str, bool]]]:
    """A burst of learns, SIGTERM at once, then a restart that counts what it holds."""
    clients = max(int(c) for c in args.clients.split(",") if c.strip())
    burst = run_phase(port, clients, args.burst_seconds, 1.0, [], to_learn, learn_batch=32)
    learned += burst["learned"]
    version = max([version, *burst["acknowledged"]])
    _, info, _ = Connection(port).request("GET", "/v1/model")
    backlog = info["version"] - info["served_version"]
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=300)
        took = time.perf_counter() - started
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        took = float("inf")
    print(
        f"shutdown: SIGTERM with {backlog} versions not yet published (the burst learned "
        f"{burst['learned']} texts in {len(burst['acknowledged'])} requests); exited in "
        f"{took:.2f} s with status {process.returncode}"
    )
    process, port = start_server(directory, args)
    _, info, _ = Connection(port).request("GET", "/v1/model")
    held = sum(info["counts"].values())
    kept = info["version"] >= version and held >= learned
    print(
        f"restart: version {info['version']} (last acknowledged {version}), {held} examples "
        f"(acknowledged {learned})"
    )
    return (
        process,
        port,
        [
            (
                f"shutdown (SIGTERM) with {backlog} versions waiting",
                f"{took:.2f} s",
                "<= 10 s",
                took <= 10.0,
            ),
            (
                "after a restart: versions and examples acknowledged and kept",
                f"{info['version']} of {version}, {held} of {learned}",
                "all kept",
                kept,
            ),
        ],
    )


if __name__ == "__main__":
    main()
