"""Reports: token efficiency of several checkpoints (SPEC §7) and a run's training curves.

- `efficiency_plot` draws held-out pass@1 against mean response tokens, one labelled point per
  checkpoint (the shape of the k1.5 paper's Figure 7: up and to the left is better);
  `efficiency_table` is the same numbers as a markdown table; `write_efficiency_report` writes
  both plus a JSON copy into one directory (`longrl report --model NAME=DIR ...`).
- `write_run_report` renders a run's `metrics.jsonl` as `report.html` in the run directory: one
  small plot per metric namespace (eval, reward, rollout, loss, train), embedded as PNG, so the
  page is a single file (`longrl report --run RUN_DIR`).

Plots use matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
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


def write_run_report(run_dir: str | Path) -> Path:
    """`<run_dir>/report.html`: the run's curves, one figure per metric namespace."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl to report on")
    rows = read_metrics(metrics_file)
    step_key = "iteration" if any("iteration" in r for r in rows) else "step"
    parts = [f"<h1>{html.escape(run_dir.name)}</h1>",
             f"<p>{len(rows)} logged rows from {html.escape(str(metrics_file))}</p>"]
    sections = [s for s in _SECTIONS if any(k.startswith(f"{s}/") for r in rows for k in r)]
    sections += sorted({k.split("/")[0] for r in rows for k in r if "/" in k} - set(sections))
    for section in sections:
        png = _section_png(rows, section, step_key)
        if png:
            parts.append(f"<h2>{html.escape(section)}</h2><img src=\"data:image/png;base64,{png}\">")
    page = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(run_dir.name)}</title></head><body>" + "\n".join(parts) + "</body></html>\n")
    out = run_dir / "report.html"
    out.write_text(page)
    return out
