"""A benchmark report a person would rather look at than read: tables and plots.

:func:`write_report` writes, into one directory, ``report.md`` (the settings, a table of every
metric with its 90% interval, what each metric means, the accuracy matrices as tables, and the
figures), a self-contained ``report.html`` with the same content, the accuracy matrices as
coloured tables and the figures inlined, and the figures as PNG files:

- ``accuracy_matrices.png``: the accuracy matrix of each strategy (mean over seeds) as a heatmap,
  each cell labelled with its value in percent;
- ``average_accuracy.png``: average accuracy over the experiences seen so far, after each one;
- ``forgetting.png``: forgetting per strategy with its interval;
- ``accuracy_vs_time.png`` and ``accuracy_vs_memory.png``: final average accuracy against
  training seconds and against peak memory (MiB);
- ``train_time.png``: training seconds per strategy with the interval.

Every strategy keeps one colour and one marker in every figure. The intervals are those of
:func:`perennial.bench.aggregate` (a percentile bootstrap over seeds), so a positive quantity
never gets a negative bound. matplotlib is imported here only, with its non-interactive backend.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perennial.bench import INTERVAL_METHOD, METRICS, RunResult, mean_matrix
from perennial.exceptions import PersistenceError
from perennial.metrics import bootstrap_ci90

__all__ = [
    "METRIC_EXPLANATIONS",
    "format_table",
    "report_from_json",
    "seen_average_curve",
    "settings_line",
    "strategy_styles",
    "write_report",
]

_PERCENT = {"average_accuracy", "forgetting", "bwt", "fwt", "cw_forgetting", "ft_auc"}

#: What each metric of the table means, in the report's words (units as the table shows them).
METRIC_EXPLANATIONS: dict[str, str] = {
    "average_accuracy": (
        "accuracy on the test sets of all experiences after the last one, averaged over "
        "experiences (percent; higher is better)."
    ),
    "forgetting": (
        "for each experience but the last, its best accuracy after any earlier training step "
        "minus its accuracy at the end, averaged (Chaudhry et al. 2018, Riemannian Walk; "
        "`perennial.metrics.forgetting`). A difference of two accuracies, so it lies between "
        "-100 and 100 points; lower is better. A figure above 100% can only be an interval's "
        "bound: the Student-t interval of earlier reports passed 100 when a strategy forgot "
        "almost everything on most seeds and less on one; the bootstrap interval stays within "
        "the values."
    ),
    "bwt": (
        "backward transfer: final accuracy on each earlier experience minus its accuracy right "
        "after it was trained, averaged (Lopez-Paz & Ranzato 2017; negative means forgetting)."
    ),
    "fwt": (
        "forward transfer: accuracy on each experience just before it is trained minus the "
        "untrained model's accuracy on it, averaged over experiences 2..T (Lopez-Paz & "
        "Ranzato 2017)."
    ),
    "cw_forgetting": (
        "Continual World forgetting (Wołczyk et al. 2021): accuracy on each experience when "
        "its training ended minus at the end of the stream, averaged over all experiences, the "
        "last one included (its term is 0), so it reads (T-1)/T of a forgetting without that "
        "term, and uses the accuracy right after training, not the best one."
    ),
    "ft_auc": (
        "Continual World forward transfer (Wołczyk et al. 2021): how much faster each "
        "experience is learned in the stream than from scratch, as the normalised gain in area "
        "under its accuracy curve, (AUC - AUC_scratch) / (1 - AUC_scratch), averaged. Measured "
        "only with `--curves` (it trains every experience again from scratch)."
    ),
    "train_seconds": (
        "wall-clock seconds spent training, evaluation and curve sampling excluded; other work "
        "on the machine makes it larger."
    ),
    "peak_memory_mb": (
        "the largest growth of the process's resident memory while training, in MiB, sampled "
        "by a thread (memory freed by earlier runs and reused shows as 0)."
    ),
    "stored_mb": "MiB of training examples the strategy keeps (replay memory, joint data).",
}

#: Why a cell can read n/a.
NOT_AVAILABLE = (
    "n/a: the metric is undefined for that strategy. Joint training sees the whole stream at "
    "once, so only its final row of the accuracy matrix exists and every metric that needs "
    "earlier rows (forgetting, bwt, fwt, cw_forgetting) is undefined; a stream of one "
    "experience has no forgetting or transfer; ft_auc is n/a without `--curves`; and a "
    "strategy whose training diverged on every seed has no value at all."
)

# Thirteen colours (matplotlib's tab10, then black, light blue and dark brown) and thirteen
# markers and four line styles, so that every strategy of the registry is told apart even where
# two colours are close.
_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#000000",
    "#a1caf1",
    "#654522",
)
# 14 markers against 13 colours: the pair (colour, marker) repeats only after 13 x 14 names, so
# plots drawn without lines (scatter) still tell the 14th name from the 1st.
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p", "d", "8")
_HATCHES = ("", "//", "..", "xx")  # bars: one per round of the colours, like the line styles
_LINES = ("-", "--", ":", "-.")


def strategy_styles(names: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """``{name: (colour, marker, line style)}``, fixed by position.

    The first 13 names get 13 colours and 13 markers. From the 14th on the colours come round
    again with the next line style (solid, dashed, dotted, dash-dot), and the markers, one more
    than the colours, come round shifted: every one of up to 52 names has its own line style and
    colour, and its own colour and marker for plots without lines (bars add a hatching per
    round of the colours).

    Examples
    --------
    >>> styles = strategy_styles(["naive", "ewc"])
    >>> styles["naive"], styles["ewc"]
    (('#1f77b4', 'o', '-'), ('#ff7f0e', 's', '-'))
    """
    return {
        name: (
            _COLOURS[k % len(_COLOURS)],
            _MARKERS[k % len(_MARKERS)],
            _LINES[(k // len(_COLOURS)) % len(_LINES)],
        )
        for k, name in enumerate(names)
    }


def _cell(metric: str, entry: dict[str, Any]) -> str:
    mean, ci = entry.get("mean"), entry.get("ci90") or [None, None]
    if mean is None:
        return "n/a"
    if ci[0] is None or ci[1] is None:
        ci = [mean, mean]
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


def _value(value: Any) -> str:
    if isinstance(value, list):
        value = tuple(value)
    return str(value)


def settings_line(config: dict[str, Any], runs: Sequence[RunResult]) -> str:
    """The run's settings: ``config`` (scenario, seeds, options) and every strategy parameter.

    The parameters come from the runs themselves (defaults included); each applies to the
    strategies that take it. A parameter with one value is listed once; one whose value differs
    between strategies is listed with each value followed by the strategies that had it.

    Examples
    --------
    >>> from perennial.bench import RunResult
    >>> import numpy as np
    >>> def run(name, params):
    ...     return RunResult(name, 0, np.eye(1), np.zeros(1), 0.0, 0, 0, params=params)
    >>> runs = [run("naive", {"lr": 0.1, "hidden": (8,)}), run("er", {"lr": 0.5, "memory": 2})]
    >>> settings_line({"seeds": 1}, runs)
    'seeds=1; lr=0.1 (naive), lr=0.5 (er), hidden=(8,), memory=2'
    """
    head = ", ".join(f"{key}={_value(value)}" for key, value in config.items())
    by_strategy: dict[str, dict[str, Any]] = {}
    for run in runs:
        by_strategy.setdefault(run.strategy, run.params)
    keys = list(dict.fromkeys(key for params in by_strategy.values() for key in params))
    parts = []
    for key in keys:
        groups: dict[str, list[str]] = {}
        for name, params in by_strategy.items():
            if key in params:
                groups.setdefault(_value(params[key]), []).append(name)
        for value, names in groups.items():
            parts.append(f"{key}={value}" + ("" if len(groups) == 1 else f" ({', '.join(names)})"))
    return "; ".join(part for part in (head, ", ".join(parts)) if part)


def _heatmap_colour(value: float) -> tuple[str, str]:
    """Background (viridis) and a readable text colour for an accuracy in [0, 1]."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    red, green, blue, _ = colormaps["viridis"](float(np.clip(value, 0.0, 1.0)))
    text = "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "#ffffff"
    return to_hex((red, green, blue)), text


def _matrix_markdown(name: str, matrix: np.ndarray) -> list[str]:
    n = matrix.shape[0]
    lines = [
        f"**{name}** (rows: after training experience i; columns: tested on experience j; "
        "percent; `-`: not measured)",
        "",
        "| i \\ j | " + " | ".join(str(j + 1) for j in range(n)) + " |",
        "|---|" + "---|" * n,
    ]
    for i in range(n):
        cells = [f"{100 * v:.1f}" if math.isfinite(v) else "-" for v in matrix[i]]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _matrix_html(name: str, matrix: np.ndarray) -> str:
    n = matrix.shape[0]
    head = "".join(f"<th>{j + 1}</th>" for j in range(n))
    rows = []
    for i in range(n):
        cells = []
        for j in range(n):
            value = float(matrix[i, j])
            if not math.isfinite(value):
                cells.append('<td class="na">-</td>')
                continue
            background, text = _heatmap_colour(value)
            cells.append(
                f'<td style="background:{background};color:{text}" data-value="{value:.6f}" '
                f'title="after {i + 1}, tested on {j + 1}">{100 * value:.1f}</td>'
            )
        rows.append(f"<tr><th>{i + 1}</th>{''.join(cells)}</tr>")
    return (
        f'<div class="heatmap"><h3>{html.escape(name)}</h3>'
        f'<table class="heatmap" data-strategy="{html.escape(name)}">'
        f"<tr><th>i \\ j</th>{head}</tr>{''.join(rows)}</table></div>"
    )


def _entry(results: dict[str, Any], name: str, metric: str) -> tuple[float, float, float]:
    entry = results[name].get(metric) or {}
    mean = entry.get("mean")
    ci = entry.get("ci90") or [None, None]
    if mean is None:
        return math.nan, math.nan, math.nan
    low = mean if ci[0] is None else ci[0]
    high = mean if ci[1] is None else ci[1]
    return float(mean), float(low), float(high)


def _plots(runs: Sequence[RunResult], results: dict[str, Any], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(results)
    styles = strategy_styles(names)
    files = []

    # Heatmaps: each cell labelled, ticks numbered 1..T like the curves.
    n = max(run.matrix.shape[0] for run in runs)
    side = max(2.8, 0.34 * n + 1.0)
    columns = min(3 if n > 8 else 4, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(side * columns + 1.0, (side + 0.4) * rows),
        squeeze=False,
        layout="constrained",
    )
    font = max(5.0, min(9.0, 90.0 / (n + 4)))
    image = None
    for ax, name in zip(axes.flat, names, strict=False):
        matrix = mean_matrix(runs, name)
        size = matrix.shape[0]
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        for i in range(size):
            for j in range(size):
                value = float(matrix[i, j])
                if math.isfinite(value):
                    ax.text(
                        j,
                        i,
                        f"{100 * value:.0f}",
                        ha="center",
                        va="center",
                        fontsize=font,
                        color=_heatmap_colour(value)[1],
                    )
        ticks = np.arange(size)
        ax.set_xticks(ticks, [str(t + 1) for t in ticks], fontsize=min(font, 8))
        ax.set_yticks(ticks, [str(t + 1) for t in ticks], fontsize=min(font, 8))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("tested on experience", fontsize=8)
        ax.set_ylabel("after training experience", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="accuracy")
    fig.savefig(directory / "accuracy_matrices.png", dpi=100)
    plt.close(fig)
    files.append("accuracy_matrices.png")

    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for name in names:
        colour, marker, line = styles[name]
        curves = np.stack([seen_average_curve(run.matrix) for run in runs if run.strategy == name])
        x = np.arange(1, curves.shape[1] + 1)
        stats = [bootstrap_ci90(curves[:, i]) for i in range(curves.shape[1])]
        mean = np.array([s[0] for s in stats])
        low = np.array([s[1][0] for s in stats])
        high = np.array([s[1][1] for s in stats])
        if np.isfinite(mean).sum() == 1:  # joint training: one point after the whole stream
            ax.plot(
                x[np.isfinite(mean)],
                mean[np.isfinite(mean)],
                marker,
                markersize=10,
                color=colour,
                label=name,
            )
            continue
        ax.plot(x, mean, line, marker=marker, markersize=4, color=colour, label=name)
        ax.fill_between(x, low, high, alpha=0.12, color=colour)
    ax.set_xlabel("experiences trained")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("average accuracy on experiences seen")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(directory / "average_accuracy.png", dpi=110)
    plt.close(fig)
    files.append("average_accuracy.png")

    def bars(metric: str, scale: float, label: str, filename: str) -> None:
        stats = [_entry(results, name, metric) for name in names]
        shown = [(name, s) for name, s in zip(names, stats, strict=True) if math.isfinite(s[0])]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(names) + 2), 4.0), layout="constrained")
        if shown:
            labels = [name for name, _ in shown]
            means = np.array([s[0] for _, s in shown]) * scale
            errors = np.array([[s[0] - s[1], s[2] - s[0]] for _, s in shown]).T * scale
            drawn = ax.bar(
                labels,
                means,
                yerr=errors,
                capsize=3,
                color=[styles[name][0] for name in labels],
                edgecolor="black",
                linewidth=0.5,
            )
            for patch, name in zip(drawn.patches, labels, strict=True):
                patch.set_hatch(_HATCHES[(names.index(name) // len(_COLOURS)) % len(_HATCHES)])
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=45)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        ax.grid(axis="y", alpha=0.3)
        fig.savefig(directory / filename, dpi=110)
        plt.close(fig)
        files.append(filename)

    bars("forgetting", 100.0, "forgetting, points (90% interval)", "forgetting.png")

    def scatter(metric: str, label: str, filename: str, log: bool) -> None:
        fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
        for name in names:
            colour, marker, _ = styles[name]
            x, x_low, x_high = _entry(results, name, metric)
            y, y_low, y_high = _entry(results, name, "average_accuracy")
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            ax.errorbar(
                [x],
                [100 * y],
                xerr=[[x - x_low], [x_high - x]],
                yerr=[[100 * (y - y_low)], [100 * (y_high - y)]],
                fmt=marker,
                color=colour,
                markersize=8,
                capsize=2,
                label=name,
            )
        if log:
            from matplotlib.ticker import ScalarFormatter

            ax.set_xscale("symlog", linthresh=1.0)
            ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel(label)
        ax.set_ylabel("average accuracy, % (90% interval)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.savefig(directory / filename, dpi=110)
        plt.close(fig)
        files.append(filename)

    scatter("train_seconds", "training seconds", "accuracy_vs_time.png", log=False)
    scatter(
        "peak_memory_mb", "peak memory growth, MiB (symlog)", "accuracy_vs_memory.png", log=True
    )
    bars("train_seconds", 1.0, "training seconds (90% interval)", "train_time.png")
    return files


_CAPTIONS = {
    "accuracy_matrices.png": (
        "Accuracy matrix per strategy, mean over seeds, in percent (row i: after training "
        "experience i; column j: tested on experience j)."
    ),
    "average_accuracy.png": (
        "Average accuracy over the experiences seen so far (mean and 90% interval over seeds)."
    ),
    "forgetting.png": "Forgetting per strategy (mean and 90% interval over seeds; lower is better).",
    "accuracy_vs_time.png": "Final average accuracy against training time (mean and 90% intervals).",
    "accuracy_vs_memory.png": (
        "Final average accuracy against peak memory growth while training (mean and 90% intervals)."
    ),
    "train_time.png": "Training time per strategy (mean and 90% interval over seeds).",
}


def write_report(
    runs: Sequence[RunResult],
    results: dict[str, dict[str, dict[str, Any]]],
    directory: str | Path,
    *,
    title: str,
    config: dict[str, Any],
) -> Path:
    """Write ``report.md``, ``report.html`` and the figures into ``directory``; return the HTML path.

    Parameters
    ----------
    runs
        Every run (from :func:`perennial.bench.run_benchmark`); the accuracy matrices, curves and
        strategy parameters come from them.
    results
        :func:`perennial.bench.aggregate` of ``runs``.
    directory
        Created if missing; files of the same names are replaced.
    title
        The report's heading.
    config
        The run's settings besides the strategies' own (scenario, seeds, scenario options).
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PersistenceError(
            f"cannot create report directory {str(directory)!r}: {error}"
        ) from error
    figures = _plots(runs, results, directory)
    settings = settings_line(config, runs)
    intervals = (
        f"Mean over seeds with its 90% interval: {INTERVAL_METHOD}. The interval lies between the "
        "smallest and the largest value over seeds, so no positive quantity gets a negative bound; "
        "with few seeds it is narrow and describes the spread more than it bounds the mean. "
        "Accuracies, forgetting and transfer in percent; time in seconds; memory in MiB."
    )
    explanations = [(metric, METRIC_EXPLANATIONS[metric]) for metric in METRICS]
    matrices = {name: mean_matrix(runs, name) for name in results}

    markdown = [f"# {title}", "", f"Settings: {settings}", "", intervals, ""]
    markdown += [format_table(results, markdown=True), "", "## Metrics", ""]
    markdown += [f"- `{metric}`: {text}" for metric, text in explanations]
    markdown += [f"- {NOT_AVAILABLE}", "", "## Accuracy matrices", ""]
    for name, matrix in matrices.items():
        markdown += _matrix_markdown(name, matrix)
    markdown += ["## Figures", ""]
    for name in figures:
        markdown += [f"![{_CAPTIONS[name]}]({name})", "", f"*{_CAPTIONS[name]}*", ""]
    (directory / "report.md").write_text("\n".join(markdown), encoding="utf-8")

    table_rows = "".join(
        "<tr><td>"
        + html.escape(_name_cell(name, metrics))
        + "</td>"
        + "".join(f"<td>{html.escape(_cell(m, metrics[m]))}</td>" for m in METRICS)
        + "</tr>"
        for name, metrics in results.items()
    )
    metric_items = (
        "".join(
            f"<li><code>{html.escape(metric)}</code>: {html.escape(text)}</li>"
            for metric, text in explanations
        )
        + f"<li>{html.escape(NOT_AVAILABLE)}</li>"
    )
    heatmaps = "".join(_matrix_html(name, matrix) for name, matrix in matrices.items())
    images = "".join(
        f'<figure><img src="data:image/png;base64,'
        f'{base64.b64encode((directory / name).read_bytes()).decode()}" '
        f'alt="{html.escape(_CAPTIONS[name])}">'
        f"<figcaption>{html.escape(_CAPTIONS[name])}</figcaption></figure>"
        for name in figures
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}"
        "div.heatmap{display:inline-block;vertical-align:top;margin:0 1em 1em 0}"
        "table.heatmap td,table.heatmap th{padding:2px 4px;font-size:11px;text-align:center}"
        "td.na{color:#999}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Settings: {html.escape(settings)}</p>"
        f"<p>{html.escape(intervals)}</p>"
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in ["strategy", *METRICS])
        + f"</tr>{table_rows}</table><h2>Metrics</h2><ul>{metric_items}</ul>"
        "<h2>Accuracy matrices</h2><p>Mean over seeds, in percent; row i: after training "
        "experience i, column j: tested on experience j; -: not measured.</p>"
        f"{heatmaps}<h2>Figures</h2>{images}</body></html>"
    )
    path = directory / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def report_from_json(
    path: str | Path, directory: str | Path, *, title: str | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Write the report of a ``perennial bench --json`` file again, with this version's report.

    The runs are read back and aggregated again (so the intervals are this version's); runs
    saved before they recorded their parameters get those the file's settings give them. The
    JSON file is not changed. Returns the new aggregate.
    """
    import json

    from perennial.bench import aggregate, params_for
    from perennial.strategies import STRATEGIES, make_strategy

    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        config = dict(document["config"])
        runs = [RunResult.from_json(record) for record in document["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PersistenceError(f"cannot read benchmark results {str(path)!r}: {error}") from error
    known = {key for cls in STRATEGIES.values() for key in cls.param_names()}
    shared = {key: value for key, value in config.items() if key in known}
    if "hidden" in shared and isinstance(shared["hidden"], list):
        shared["hidden"] = tuple(shared["hidden"])
    for run in runs:
        if not run.params:
            strategy = make_strategy(run.strategy, **params_for(run.strategy, shared))
            run.params = {k: v for k, v in strategy.get_params().items() if k != "seed"}
    results = aggregate(runs)
    settings = {key: value for key, value in config.items() if key not in known}
    name = title or f"perennial bench: {config.get('scenario', Path(path).stem)}"
    write_report(runs, results, directory, title=name, config=settings)
    return results
