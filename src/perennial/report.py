"""A benchmark report a person would rather look at than read: tables and plots.

:func:`write_report` writes, into one directory, ``report.md`` (a table of every metric with its
90% confidence interval, and the figures), a self-contained ``report.html`` with the same content
and the figures inlined, and the figures as PNG files:

- ``accuracy_matrices.png``: the accuracy matrix of each strategy (mean over seeds) as a heatmap;
- ``average_accuracy.png``: average accuracy over the experiences seen so far, after each one;
- ``train_time.png``: training seconds per strategy with the 90% interval.

matplotlib is imported here only, with its non-interactive backend.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perennial.bench import METRICS, RunResult, mean_matrix
from perennial.exceptions import PersistenceError
from perennial.metrics import mean_ci90

__all__ = ["format_table", "seen_average_curve", "write_report"]

_PERCENT = {"average_accuracy", "forgetting", "bwt", "fwt", "cw_forgetting", "ft_auc"}


def _cell(metric: str, entry: dict[str, Any]) -> str:
    mean, ci = entry.get("mean"), entry.get("ci90") or [None, None]
    if mean is None:
        return "n/a"
    if metric in _PERCENT:
        return f"{100 * mean:.2f} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
    return f"{mean:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _name_cell(name: str, metrics: dict[str, Any]) -> str:
    failed = int((metrics.get("failed_runs") or {}).get("mean") or 0)
    if not failed:
        return name
    total = failed + int((metrics.get("runs") or {}).get("mean") or 0)
    return f"{name} ({failed}/{total} diverged)"


def format_table(results: dict[str, dict[str, dict[str, Any]]], markdown: bool = False) -> str:
    """One row per strategy: each metric's mean and [90% interval]; accuracies in percent."""
    header = ["strategy", *METRICS]
    rows = [
        [_name_cell(name, metrics)] + [_cell(m, metrics[m]) for m in METRICS]
        for name, metrics in results.items()
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def seen_average_curve(matrix: np.ndarray) -> np.ndarray:
    """Average accuracy over experiences ``0..i`` after training experience ``i``."""
    n = matrix.shape[0]
    curve = np.full(n, np.nan)
    for i in range(n):
        row = matrix[i, : i + 1]
        if np.isfinite(row).all():
            curve[i] = float(np.mean(row))
    return curve


def _plots(runs: Sequence[RunResult], results: dict[str, Any], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    files = []

    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        matrix = mean_matrix(runs, name)
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("evaluated on experience")
        ax.set_ylabel("after training")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy")
    fig.savefig(directory / "accuracy_matrices.png", dpi=110)
    plt.close(fig)
    files.append("accuracy_matrices.png")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    palette = [plt.get_cmap("tab20")(i) for i in range(20)]
    styles = ["-", "--", ":", "-."]
    for k, name in enumerate(names):
        curves = np.stack([seen_average_curve(run.matrix) for run in runs if run.strategy == name])
        x = np.arange(1, curves.shape[1] + 1)
        stats = [mean_ci90(curves[:, i]) for i in range(curves.shape[1])]
        mean = np.array([s[0] for s in stats])
        low = np.array([s[1][0] for s in stats])
        high = np.array([s[1][1] for s in stats])
        if np.isfinite(mean).sum() == 1:  # joint training: one point after the whole stream
            ax.plot(
                x[np.isfinite(mean)],
                mean[np.isfinite(mean)],
                "*",
                markersize=12,
                color=palette[(2 * k) % 20],
                label=name,
            )
            continue
        color = palette[(2 * k) % 20 + (k // 10) % 2]
        ax.plot(x, mean, styles[k % 4], marker=".", color=color, label=name)
        ax.fill_between(x, low, high, alpha=0.15, color=color)
    ax.set_xlabel("experiences trained")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("average accuracy on experiences seen")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(directory / "average_accuracy.png", dpi=110)
    plt.close(fig)
    files.append("average_accuracy.png")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    means = [results[name]["train_seconds"]["mean"] or 0.0 for name in names]
    ci = [results[name]["train_seconds"]["ci90"] or [0.0, 0.0] for name in names]
    errors = np.array([[m - (c[0] or m), (c[1] or m) - m] for m, c in zip(means, ci, strict=True)])
    ax.bar(names, means, yerr=errors.T, capsize=3, color="tab:blue")
    ax.set_ylabel("training seconds (90% CI)")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(directory / "train_time.png", dpi=110)
    plt.close(fig)
    files.append("train_time.png")
    return files


def write_report(
    runs: Sequence[RunResult],
    results: dict[str, dict[str, dict[str, Any]]],
    directory: str | Path,
    *,
    title: str,
    config: dict[str, Any],
) -> Path:
    """Write ``report.md``, ``report.html`` and the figures into ``directory``; return the HTML path."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PersistenceError(
            f"cannot create report directory {str(directory)!r}: {error}"
        ) from error
    figures = _plots(runs, results, directory)
    settings = ", ".join(f"{key}={value}" for key, value in config.items())
    captions = {
        "accuracy_matrices.png": "Accuracy matrix per strategy (row: after training experience i; column: tested on j).",
        "average_accuracy.png": "Average accuracy over the experiences seen so far (mean and 90% CI over seeds).",
        "train_time.png": "Training time per strategy (mean and 90% CI over seeds).",
    }
    markdown = [
        f"# {title}",
        "",
        f"Settings: {settings}",
        "",
        "Mean over seeds with the 90% confidence interval (Student's t). Accuracies, forgetting and "
        "transfer in percent; time in seconds; memory in MiB.",
        "",
        format_table(results, markdown=True),
        "",
    ]
    for name in figures:
        markdown += [f"![{captions[name]}]({name})", "", f"*{captions[name]}*", ""]
    (directory / "report.md").write_text("\n".join(markdown), encoding="utf-8")

    table_rows = "".join(
        "<tr><td>"
        + html.escape(_name_cell(name, metrics))
        + "</td>"
        + "".join(f"<td>{html.escape(_cell(m, metrics[m]))}</td>" for m in METRICS)
        + "</tr>"
        for name, metrics in results.items()
    )
    images = "".join(
        f'<figure><img src="data:image/png;base64,'
        f'{base64.b64encode((directory / name).read_bytes()).decode()}" alt="{html.escape(captions[name])}">'
        f"<figcaption>{html.escape(captions[name])}</figcaption></figure>"
        for name in figures
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Settings: {html.escape(settings)}</p>"
        "<p>Mean over seeds [90% confidence interval]. Accuracies, forgetting and transfer in percent.</p>"
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in ["strategy", *METRICS])
        + f"</tr>{table_rows}</table>{images}</body></html>"
    )
    path = directory / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
