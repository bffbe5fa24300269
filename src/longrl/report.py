"""Reports: token efficiency of several checkpoints (SPEC §7) and a run's training curves.

- `efficiency_plot` draws held-out pass@1 against mean response tokens, one labelled point per
  checkpoint (the shape of the k1.5 paper's Figure 7: up and to the left is better);
  `efficiency_table` is the same numbers as a markdown table; `write_efficiency_report` writes
  both plus a JSON copy into one directory (`longrl report --model NAME=DIR ...`).
- `write_run_report` renders a run's `metrics.jsonl` as `report.html` in the run directory
  (`longrl report --run RUN_DIR`). It opens with what a reader asks first: a summary line, then
  held-out pass@1 and mean response tokens against iteration and against training time, the
  training reward and the weight-sync check; then the run's settings (`config.toml`) as a table;
  then every metric, one small plot per namespace. Plots are embedded as PNG: one file.

Plots use matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import tomllib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from longrl.evaluate import EfficiencyRow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------------
# Token efficiency
# ----------------------------------------------------------------------------------------------


def efficiency_table(rows: Sequence[EfficiencyRow]) -> str:
    """Markdown table: model, held-out pass@1 (%), mean response tokens."""
    lines = ["| model | pass@1 (%) | mean tokens |", "|---|---|---|"]
    lines += [f"| {r.name} | {100 * r.pass_at_1:.1f} | {r.mean_tokens:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def efficiency_plot(rows: Sequence[EfficiencyRow], path: str | Path,
                    title: str = "Token efficiency: held-out pass@1 vs mean response tokens") -> Path:
    """Scatter plot of pass@1 (%) against mean tokens: points numbered, the legend names them."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    for i, r in enumerate(rows, start=1):  # numbers, not names, beside points: close points stay legible
        ax.scatter(r.mean_tokens, 100 * r.pass_at_1, s=40, zorder=3, label=f"{i}. {r.name}")
        ax.annotate(str(i), (r.mean_tokens, 100 * r.pass_at_1), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("mean response tokens")
    ax.set_ylabel("pass@1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_efficiency_report(rows: Sequence[EfficiencyRow], out_dir: str | Path,
                            stem: str = "token_efficiency") -> dict[str, Path]:
    """`<stem>.png`, `<stem>.md` and `<stem>.json` in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": efficiency_plot(rows, out_dir / f"{stem}.png"),
             "md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    paths["md"].write_text(efficiency_table(rows))
    paths["json"].write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return paths


# ----------------------------------------------------------------------------------------------
# Run report
# ----------------------------------------------------------------------------------------------

_SECTIONS = ("eval", "reward", "rollout", "loss", "train")


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a `metrics.jsonl`; a line that is not JSON names the file and line."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
    return rows


def metric_series(rows: Sequence[dict], key: str, step_key: str = "iteration") -> tuple[list[float], list[float]]:
    """(steps, values) of every row that has `key`."""
    pairs = [(row.get(step_key, i), row[key]) for i, row in enumerate(rows)
             if isinstance(row.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _section_png(rows: Sequence[dict], section: str, step_key: str) -> str | None:
    keys = sorted({k for row in rows for k in row if k.startswith(f"{section}/")})
    if not keys:
        return None
    plt = _pyplot()
    cols = min(len(keys), 3)
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = metric_series(rows, key, step_key)
        ax.plot(steps, values, marker="o" if len(values) < 20 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def training_time(rows: Sequence[dict]) -> list[float]:
    """Seconds of training before each row: the running sum of `perf/iteration_s` (rollout,
    scoring, training and sync of each iteration; evaluation excluded), so resumes add no gaps."""
    return list(itertools.accumulate((row.get("perf/iteration_s") or 0.0 for row in rows), initial=0.0))[1:]


# (metric, label) pairs of the headline figure: each row of panels is one quantity, drawn against
# iteration and against training time
_HEADLINE = (
    (("eval/pass@1",), "held-out pass@1"),
    (("eval/mean_tokens", "rollout/mean_tokens"), "mean response tokens"),
)


def _headline_png(rows: Sequence[dict], step_key: str) -> str | None:
    minutes = [t / 60 for t in training_time(rows)]
    panels = [(keys, label) for keys, label in _HEADLINE if any(k in r for k in keys for r in rows)]
    tail = [k for k in ("reward/mean", "sync/probe_max_diff") if any(k in r for r in rows)]
    if not panels and not tail:
        return None
    plt = _pyplot()
    nrows = len(panels) + (1 if tail else 0)
    fig, axes = plt.subplots(nrows, 2, figsize=(9, 2.8 * nrows), squeeze=False)
    for (keys, label), (by_step, by_time) in zip(panels, axes):
        for key in keys:
            if not any(key in r for r in rows):
                continue
            series = [(r.get(step_key, i), t, r[key]) for i, (r, t) in enumerate(zip(rows, minutes))
                      if isinstance(r.get(key), (int, float))]
            steps, times, values = zip(*series)
            who = "held-out" if key.startswith("eval/") else "training"
            style = {"marker": "o" if len(values) < 30 else None, "markersize": 3, "label": f"{who} ({key})"}
            by_step.plot(steps, values, **style)
            by_time.plot(times, values, **style)
        by_step.set_title(f"{label} by {step_key}", fontsize=9)
        by_time.set_title(f"{label} by training time", fontsize=9)
        by_time.set_xlabel("minutes (evaluation excluded)", fontsize=8)
        if len(keys) > 1:
            by_step.legend(fontsize=7)
    if tail:
        for ax, key in zip(axes[-1], tail):
            steps, values = metric_series(rows, key, step_key)
            ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3)
            ax.set_title({"reward/mean": "training reward (reward/mean)",
                          "sync/probe_max_diff": "weight-sync check (sync/probe_max_diff)"}[key], fontsize=9)
            if key == "sync/probe_max_diff" and max(values, default=0) > 0:
                ax.set_yscale("log")
        for ax in axes[-1][len(tail):]:
            ax.axis("off")
    for ax in axes.flat:
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _summary(rows: Sequence[dict], step_key: str) -> str:
    evals = [(r.get(step_key), r["eval/pass@1"]) for r in rows if isinstance(r.get("eval/pass@1"), (int, float))]
    parts = [f"{len(rows)} logged rows"]
    if evals:
        best = max(evals, key=lambda e: e[1])
        parts.append(f"held-out pass@1 {evals[0][1]:.3f} at {step_key} {evals[0][0]} &rarr; {evals[-1][1]:.3f} "
                     f"at {evals[-1][0]} (best {best[1]:.3f} at {best[0]})")
    if any("perf/iteration_s" in r for r in rows):
        parts.append(f"training time {training_time(rows)[-1] / 60:.1f} min")
    return "; ".join(parts)


def _settings_table(config_file: Path) -> str:
    """The run's settings as an HTML table, one row per field (`section.field`)."""
    def flat(table: dict, prefix: str = ""):
        for key, value in table.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    cells = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td><code>{html.escape(json.dumps(v))}</code></td></tr>"
                    for k, v in flat(tomllib.loads(config_file.read_text())))
    return f"<table><tr><th>setting</th><th>value</th></tr>{cells}</table>"


_STYLE = ("<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;"
          "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style>")


def write_run_report(run_dir: str | Path) -> Path:
    """`<run_dir>/report.html`: summary, headline figure, settings, then every metric (module docstring)."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl to report on")
    rows = read_metrics(metrics_file)
    step_key = "iteration" if any("iteration" in r for r in rows) else "step"
    parts = [f"<h1>{html.escape(run_dir.name)}</h1>",
             f"<p>{_summary(rows, step_key)} (from {html.escape(str(metrics_file))})</p>"]
    headline = _headline_png(rows, step_key)
    if headline:
        parts.append(f"<img id=\"headline\" src=\"data:image/png;base64,{headline}\">")
    if (run_dir / "config.toml").is_file():
        parts.append(f"<h2 id=\"settings\">settings</h2>{_settings_table(run_dir / 'config.toml')}")
    parts.append("<h2 id=\"all\">all metrics</h2>")
    sections = [s for s in _SECTIONS if any(k.startswith(f"{s}/") for r in rows for k in r)]
    sections += sorted({k.split("/")[0] for r in rows for k in r if "/" in k} - set(sections))
    for section in sections:
        png = _section_png(rows, section, step_key)
        if png:
            parts.append(f"<h3>{html.escape(section)}</h3><img src=\"data:image/png;base64,{png}\">")
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(run_dir.name)}</title>{_STYLE}</head><body>" + "\n".join(parts) + "</body></html>\n")
    out = run_dir / "report.html"
    out.write_text(page)
    return out
