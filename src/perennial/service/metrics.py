"""Request and model metrics in the Prometheus text exposition format (no client library)."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable

__all__ = ["LATENCY_BUCKETS", "Metrics"]

#: Upper bounds (seconds) of the latency histogram buckets.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    text = ",".join(f'{key}="{_escape(value)}"' for key, value in pairs)
    return "{" + text + "}" if text else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Metrics:
    """Counters and latency histograms, rendered for ``GET /metrics``.

    Examples
    --------
    >>> metrics = Metrics()
    >>> metrics.observe_request("POST", "/v1/predict", 200, 0.004)
    >>> metrics.increment("perennial_learned_examples_total", 3)
    >>> "perennial_learned_examples_total 3" in metrics.render({})
    True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], list[int]] = {}  # per-bucket counts, then +Inf
        self._latency_sum: dict[tuple[str, str], float] = {}
        self._counters: dict[str, float] = {
            "perennial_learned_examples_total": 0,
            "perennial_unlearned_examples_total": 0,
            "perennial_forgotten_classes_total": 0,
            "perennial_predicted_inputs_total": 0,
            "perennial_unknown_inputs_total": 0,
        }
        self._help = {
            "perennial_learned_examples_total": "Examples learned (acknowledged, durable).",
            "perennial_unlearned_examples_total": "Examples unlearned (acknowledged, durable).",
            "perennial_forgotten_classes_total": "Classes forgotten (acknowledged, durable).",
            "perennial_predicted_inputs_total": "Inputs predicted.",
            "perennial_unknown_inputs_total": "Inputs predicted unknown (open set).",
        }

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        with self._lock:
            key = (method, route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            where = (method, route)
            buckets = self._latency.setdefault(where, [0] * (len(LATENCY_BUCKETS) + 1))
            buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum[where] = self._latency_sum.get(where, 0.0) + seconds

    def increment(self, name: str, amount: float = 1) -> None:
        """Add to one of the counters listed by :meth:`render`."""
        with self._lock:
            if name not in self._counters:
                raise KeyError(f"unknown counter {name!r}")
            self._counters[name] += amount

    def counter(self, name: str) -> float:
        """The value of one of the counters :meth:`increment` adds to."""
        with self._lock:
            if name not in self._counters:
                raise KeyError(f"unknown counter {name!r}")
            return self._counters[name]

    def render(
        self,
        gauges: dict[str, tuple[str, float]],
        labelled: dict[str, tuple[str, str, str, dict[str, float]]] | None = None,
    ) -> str:
        """The exposition text of the counters and of values read at scrape time.

        ``gauges`` maps a name to (help, value); ``labelled`` maps a name to (type, help, label,
        {label value: value}), one series per label value, for example background failures by
        task.
        """
        lines: list[str] = []
        with self._lock:
            lines += [
                "# HELP perennial_requests_total HTTP requests answered, by route and status.",
                "# TYPE perennial_requests_total counter",
            ]
            for (method, route, status), count in sorted(self._requests.items()):
                labels = _labels([("method", method), ("route", route), ("status", status)])
                lines.append(f"perennial_requests_total{labels} {count}")
            lines += [
                "# HELP perennial_request_duration_seconds Time to answer a request.",
                "# TYPE perennial_request_duration_seconds histogram",
            ]
            for (method, route), buckets in sorted(self._latency.items()):
                base = [("method", method), ("route", route)]
                cumulative = 0
                for bound, count in zip((*LATENCY_BUCKETS, math.inf), buckets, strict=True):
                    cumulative += count
                    labels = _labels([*base, ("le", _number(bound))])
                    lines.append(f"perennial_request_duration_seconds_bucket{labels} {cumulative}")
                lines.append(
                    f"perennial_request_duration_seconds_sum{_labels(base)} "
                    f"{self._latency_sum[(method, route)]!r}"
                )
                lines.append(
                    f"perennial_request_duration_seconds_count{_labels(base)} {cumulative}"
                )
            for name, value in self._counters.items():
                lines += [
                    f"# HELP {name} {self._help[name]}",
                    f"# TYPE {name} counter",
                    f"{name} {_number(value)}",
                ]
        for name, (text, value) in gauges.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        for name, (kind, text, label, values) in (labelled or {}).items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for key, value in sorted(values.items()):
                lines.append(f"{name}{_labels([(label, key)])} {_number(value)}")
        return "\n".join(lines) + "\n"
