"""A self-contained HTML report of a run folder (images embedded) with its PNG plots.

Training stages get their curves from `metrics.jsonl` (PPO: reward, cost, J_C against the
threshold d, λ, KL and response length; supervised: losses and evaluation metrics); safety
evaluations get per-category unsafe rates, and two or more of them a before-vs-after chart.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

PPO_PANELS = [("train/reward", "reward"), ("train/cost", "cost"), ("train/episode_cost", "J_C (episode cost)"),
              ("train/lambda", "λ (Lagrange multiplier)"), ("train/kl", "KL to reference"), ("train/response_length", "response length (tokens)")]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def training_curves(folder: Path, title: str) -> Path | None:
    """curves.png of a training stage (None when it logged nothing)."""
    rows = _rows(folder)
    if not rows:
        return None
    keys = sorted({k for r in rows for k in r if k != "step" and isinstance(r[k], (int, float))})
    panels = [(k, label) for k, label in PPO_PANELS if k in keys]
    if not panels:
        panels = [(k, k.split("/", 1)[1].replace("_", " ")) for k in keys
                  if k in ("train/loss", "train/accuracy") or k.startswith("eval/")][:6]
    plt = _plt()
    cols = 3 if len(panels) > 2 else len(panels)
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").is_file() else {}
    for ax, (key, label) in zip(axes.flat, panels):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None, label=label)
        if key == "train/episode_cost" and "cost_limit" in config:
            ax.axhline(config["cost_limit"], color="black", linestyle="--", linewidth=1, label=f"threshold d = {config['cost_limit']}")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out = folder / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def before_after(evals: list[tuple[str, dict[str, Any]]], out: Path) -> Path:
    """Grouped bars of per-category unsafe rates, one bar per safety evaluation."""
    plt = _plt()
    categories = sorted({c for _, m in evals for c in m["per_category"]})
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(categories) * max(1, len(evals) / 2) + 1.5))
    height = 0.8 / len(evals)
    for i, (name, metrics) in enumerate(evals):
        rates = [metrics["per_category"].get(c, {}).get("unsafe_rate", 0.0) for c in categories]
        ax.barh([j + i * height for j in range(len(categories))], rates, height=height,
                label=f"{name} (overall {metrics['overall']['unsafe_rate']:.2f})")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(categories))], categories, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("unsafe-answer rate (moderator)")
    ax.set_title("Unsafe answers per category: before vs after")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _table(data: dict[str, Any]) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v:.4g}</td></tr>" if isinstance(v, float)
                    else f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in data.items()
                    if not isinstance(v, (dict, list)))
    return f"<table>{cells}</table>"


def write_report(run_dir: Path, stages: list[tuple[str, str]]) -> Path:
    """report.html (and the PNGs beside it) for the stages of `run_dir`."""
    run_dir = Path(run_dir)
    parts = [f"<h1>safealign run: {html.escape(str(run_dir))}</h1>",
             f"<p>written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>"]
    evals: list[tuple[str, dict[str, Any]]] = []
    for name, kind in stages:
        folder = run_dir / name
        if kind == "report" or not folder.is_dir():
            continue
        marker = json.loads((folder / "stage.json").read_text()) if (folder / "stage.json").is_file() else {}
        parts.append(f"<h2>{html.escape(name)} <small>({html.escape(kind)}"
                     f"{', %.0f s' % marker['seconds'] if 'seconds' in marker else ''})</small></h2>")
        if kind == "eval-safety" and (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
            evals.append((name, metrics))
            parts.append(_table(metrics["overall"]))
            if (folder / "unsafe_rate_by_category.png").is_file():
                parts.append(_img(folder / "unsafe_rate_by_category.png"))
            continue
        curves = training_curves(folder, f"{name} ({kind})")
        if curves is not None:
            parts.append(_img(curves))
        final = folder / "final_metrics.json"
        if final.is_file():
            parts.append(_table(json.loads(final.read_text())))
    if len(evals) >= 2:
        parts.insert(2, "<h2>Before vs after</h2>" + _img(before_after(evals, run_dir / "unsafe_before_after.png")))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;} img{max-width:100%;border:1px solid #ddd;"
             "margin:.5em 0;} table{border-collapse:collapse;margin:.5em 0;} td{border:1px solid #ccc;padding:2px 8px;}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>safealign report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
