"""Helpers for the service tests: a real ``perennial serve`` process on a free loopback port.

(Named ``test_*`` so that it may sit beside the tests; the one test here checks the helper.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from perennial.heads import RidgeHead
from perennial.learner import LifelongClassifier


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``perennial serve --model DIR ...`` in a subprocess; its log goes to ``DIR.log``."""

    def __init__(self, model: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.model = Path(model)
        self.args = list(args)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.log = self.model.with_name(self.model.name + ".log")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "perennial.cli",
            "serve",
            "--model",
            str(self.model),
            *self.args,
        ]

    def start(self, timeout: float = 90.0) -> Server:
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*self.command(), "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.process.returncode}):\n{self.output()}"
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the server did not answer within {timeout} s:\n{self.output()}")

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, timeout=60.0, headers=headers)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM: a clean shutdown (which snapshots); returns the exit status.

        uvicorn re-raises SIGTERM once it has shut down cleanly, so a clean stop is -SIGTERM.
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.returncode)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def refresher_pid(self) -> int:
        """The process id of the server's refresher, its child process (Linux: reads /proc)."""
        assert self.process is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # "pid (name) state ppid ..."
            if parent == self.process.pid and b"spawn_main" in command:
                return int(entry.name)
        raise RuntimeError(f"the server {self.process.pid} has no refresher process")


def run_serve(model: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``perennial serve`` expected to refuse to start: its status and output."""
    return subprocess.run(
        [sys.executable, "-m", "perennial.cli", "serve", "--model", str(model), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def clusters(
    rng: np.random.Generator, labels: list[str], n: int, dim: int = 8
) -> tuple[np.ndarray, list[str]]:
    """``n`` points around a fixed centre per label (centre i: 4 on axis i)."""
    X, y = [], []
    for i, label in enumerate(labels):
        centre = np.zeros(dim)
        centre[i % dim] = 4.0
        X.append(centre + rng.normal(0.0, 0.5, (n, dim)))
        y += [label] * n
    return np.vstack(X), y


#: The ridge strength the service tests fix (see :func:`reference`).
RIDGE = 0.5


def reference(batches: list[tuple[str, Any, Any]], n_features: int) -> LifelongClassifier:
    """A learner fed exactly ``batches`` of (operation, inputs, labels), as the service is."""
    # A fixed ridge strength: with "auto" the strength is chosen when the solution is rebuilt,
    # so a model learned record by record may use a strength some examples old (RidgeHead).
    model = LifelongClassifier(
        head=RidgeHead(n_features=n_features, ridge=RIDGE), unknown_rate=0.02
    )
    for operation, X, y in batches:
        features = np.asarray(X, dtype=np.float64).astype(np.float32)
        if operation == "learn":
            model.learn_many(features, list(y))
        elif operation == "unlearn":
            model.unlearn_many(features, list(y))
        else:
            model.forget(y)
    return model


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
