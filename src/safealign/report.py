"""A self-contained HTML report of a run folder (images embedded) with its PNG plots.

Training stages get their curves from `metrics.jsonl` (PPO: reward, cost, J_C against the
threshold d, λ, KL and response length; supervised: losses and evaluation metrics); safety
evaluations get per-category unsafe rates, and two or more of them a before-vs-after chart
and a summary of the first against the last (`summary.json`: the moderator's unsafe rate and
its relative change, the reward and cost changes with paired bootstrap intervals, the
refusal rate on held-out safe prompts, the policy's final KL to its reference, the arena's
ratings and the guard's rates) with example answers before and after.
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


def _steer_and_length_tables(kind: str, metrics: dict[str, Any], folder: Path) -> list[str]:
    """The figures of an eval-length, eval-steer or eval-adherence stage."""
    if kind == "eval-length":
        pref = metrics["preference"]
        out = [_table({"pairs": pref["pairs"], "pearson(reward, length)": pref["pearson"], "spearman": pref["spearman"],
                       "pairwise accuracy": pref["reward_model"].get("accuracy"),
                       "accuracy where the shorter is preferred": pref["reward_model"].get("accuracy_shorter_preferred"),
                       "model prefers the longer": pref["reward_model"]["share_longer_preferred"],
                       "labels prefer the longer": pref["labels"]["share_longer_preferred"]})]
        if metrics.get("policies"):
            pol = metrics["policies"]
            out.append("<p>policy before → after</p>" + _table({
                "mean length before": pol["mean_length_before"], "mean length after": pol["mean_length_after"],
                "reward gain": pol["reward_gain"], "non-length gain (NRG)": pol["non_length_gain"]}))
        if (folder / "length.png").is_file():
            out.append(_img(folder / "length.png"))
        return out
    if kind == "eval-steer":
        rows = {value: f"{v['mean_words']:.1f} words" + ("" if v["unsafe_rate"] is None else f", unsafe rate {v['unsafe_rate']:.3f}")
                for value, v in metrics["per_value"].items()}
        return [f"<p>{html.escape(metrics['attribute'])} asked</p>" + _table(rows),
                _table({"Spearman ρ (asked, words), every answer": metrics["spearman_value_words"],
                        "Spearman ρ over the means": metrics["spearman_value_mean_words"]})]
    return [_table({m: "-" if v["adherence"] is None else f"{v['adherence']:.3f} of {v['answers']}"
                    for m, v in metrics["per_message"].items()}), _table({"mean adherence": metrics["adherence"]})]


def _answers(folder: Path) -> list[dict[str, Any]]:
    path = folder / "answers.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def run_summary(run_dir: Path, stages: list[tuple[str, str]]) -> dict[str, Any]:
    """Base -> tuned figures of a run: the first safety evaluation against the last, and what the other stages measured."""
    from safealign.evaluate.safety import compare_evaluations

    run_dir = Path(run_dir)
    present = [(name, kind) for name, kind in stages if (run_dir / name / "stage.json").is_file()]
    evals = [name for name, kind in present if kind == "eval-safety"]
    summary: dict[str, Any] = {}
    if len(evals) >= 2:
        summary = {"before": evals[0], "after": evals[-1],
                   **compare_evaluations(_answers(run_dir / evals[0]), _answers(run_dir / evals[-1]))}
    for name, kind in present:
        if kind in ("ppo", "ppo-lag", "ppo-shaping"):
            rows = [r for r in _rows(run_dir / name) if "train/kl" in r]
            if rows:
                summary["kl_to_reference"] = {"stage": name, "step": rows[-1]["step"], "kl": rows[-1]["train/kl"]}
        elif kind == "eval-arena" and (run_dir / name / "metrics.json").is_file():
            arena = json.loads((run_dir / name / "metrics.json").read_text())
            summary["arena"] = {p: {"rating": v["rating"], "rating_ci95": v["rating_ci95"], "unsafe_share": v["unsafe_share"]}
                                for p, v in arena["policies"].items()}
        elif kind == "guard" and (run_dir / name / "metrics.json").is_file():
            guard = json.loads((run_dir / name / "metrics.json").read_text())
            summary["guard"] = {k: {"unsafe_rate": v["unsafe_rate"], "refusal_rate": v["refusal_rate"]}
                                for k, v in guard.items() if isinstance(v, dict) and "unsafe_rate" in v}
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as a few lines of text (printed at the end of a pipeline run)."""
    lines = []
    if "unsafe_rate" in summary:
        u = summary["unsafe_rate"]
        change = "" if u["relative_change"] is None else f" ({100 * u['relative_change']:+.0f} % relative)"
        lines.append(f"moderator unsafe rate, {summary['prompts']} held-out prompts, {summary['before']} -> {summary['after']}: "
                     f"{u['before']:.3f} -> {u['after']:.3f}{change}")
    for score in ("reward", "cost"):
        if score in summary:
            s = summary[score]
            low, high = s["change_interval"]
            lines.append(f"mean {score}: {s['before']:.3f} -> {s['after']:.3f} (change {s['mean_change']:+.3f}, "
                         f"paired bootstrap 95 % interval [{low:+.3f}, {high:+.3f}])")
    if "safe_prompts" in summary:
        s = summary["safe_prompts"]
        lines.append(f"refusal rate on {s['prompts']} held-out safe prompts: {s['refusal_rate_before']:.3f} -> "
                     f"{s['refusal_rate_after']:.3f} ({s['refusal_change_points']:+.1f} points)")
    if "kl_to_reference" in summary:
        k = summary["kl_to_reference"]
        lines.append(f"KL to the reference ({k['stage']}, step {k['step']}): {k['kl']:.2f}")
    if "arena" in summary:
        lines.append("arena (Bradley-Terry on reward): " + ", ".join(
            f"{p} {v['rating']:.0f} [{v['rating_ci95'][0]:.0f}, {v['rating_ci95'][1]:.0f}]" for p, v in summary["arena"].items()))
    for name, block in summary.get("guard", {}).items():
        lines.append(f"guard on {name}: unsafe " + ", ".join(f"{k} {v:.3f}" for k, v in block["unsafe_rate"].items())
                     + "; refusal " + ", ".join(f"{k} {v:.3f}" for k, v in block["refusal_rate"].items()))
    return lines


def examples(before: list[dict[str, Any]], after: list[dict[str, Any]], n: int = 4) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Up to `n` (before, after) answers to the same prompt: first those the moderator's verdict changed on, then others."""
    after_by_prompt = {r["prompt"]: r for r in after if r.get("set", "prompts") == "prompts"}
    pairs = [(r, after_by_prompt[r["prompt"]]) for r in before if r.get("set", "prompts") == "prompts" and r["prompt"] in after_by_prompt]
    changed = [p for p in pairs if p[0]["flagged"] and not p[1]["flagged"]]
    worse = [p for p in pairs if not p[0]["flagged"] and p[1]["flagged"]]
    rest = [p for p in pairs if p not in changed and p not in worse]
    return (changed[: max(1, n // 2)] + worse[:1] + rest + changed[max(1, n // 2):])[:n]


def _examples_html(pairs: list[tuple[dict[str, Any], dict[str, Any]]], names: tuple[str, str]) -> str:
    def cell(row: dict[str, Any]) -> str:
        verdict = f"{'unsafe' if row['flagged'] else 'safe'} (p = {row['unsafe_probability']:.2f})"
        return f"<td><pre>{html.escape(row['answer'])}</pre><small>{verdict}</small></td>"

    head = f"<tr><th>prompt</th><th>{html.escape(names[0])}</th><th>{html.escape(names[1])}</th></tr>"
    body = "".join(f"<tr><td>{html.escape(a['prompt'])}</td>{cell(a)}{cell(b)}</tr>" for a, b in pairs)
    return f"<table class='examples'>{head}{body}</table>"


def write_report(run_dir: Path, stages: list[tuple[str, str]]) -> Path:
    """report.html (and the PNGs and summary.json beside it) for the stages of `run_dir`."""
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
            if "safe_prompts" in metrics:
                parts.append("<p>held-out safe prompts (over-refusal):</p>" + _table(metrics["safe_prompts"]))
            if (folder / "unsafe_rate_by_category.png").is_file():
                parts.append(_img(folder / "unsafe_rate_by_category.png"))
            continue
        if kind in ("eval-arena", "guard") and (folder / "metrics.json").is_file():
            metrics = json.loads((folder / "metrics.json").read_text())
            if kind == "eval-arena":
                parts.append(_table({p: f"{v['rating']:.0f} [{v['rating_ci95'][0]:.0f}, {v['rating_ci95'][1]:.0f}], "
                                        f"unsafe share {v['unsafe_share']:.2f}" for p, v in metrics["policies"].items()}))
                if (folder / "arena.png").is_file():
                    parts.append(_img(folder / "arena.png"))
            else:
                for block_name, block in metrics.items():
                    if isinstance(block, dict) and "unsafe_rate" in block:
                        parts.append(f"<p>{html.escape(block_name)}: unsafe rate</p>" + _table(block["unsafe_rate"])
                                     + "<p>refusal rate</p>" + _table(block["refusal_rate"]))
            continue
        if kind in ("eval-length", "eval-steer", "eval-adherence") and (folder / "metrics.json").is_file():
            parts += _steer_and_length_tables(kind, json.loads((folder / "metrics.json").read_text()), folder)
            continue
        curves = training_curves(folder, f"{name} ({kind})")
        if curves is not None:
            parts.append(_img(curves))
        final = folder / "final_metrics.json"
        if final.is_file():
            parts.append(_table(json.loads(final.read_text())))
    summary = run_summary(run_dir, stages)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    head: list[str] = []
    if summary:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(summary))
        head.append(f"<h2>Summary</h2><ul>{items}</ul>")
    if len(evals) >= 2:
        head.append("<h2>Before vs after</h2>" + _img(before_after(evals, run_dir / "unsafe_before_after.png")))
        first, last = evals[0][0], evals[-1][0]
        pairs = examples(_answers(run_dir / first), _answers(run_dir / last))
        if pairs:
            head.append("<h2>Example answers</h2>" + _examples_html(pairs, (first, last)))
    parts[2:2] = head
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;} img{max-width:100%;border:1px solid #ddd;"
             "margin:.5em 0;} table{border-collapse:collapse;margin:.5em 0;} td,th{border:1px solid #ccc;padding:2px 8px;"
             "vertical-align:top;} .examples pre{white-space:pre-wrap;max-width:420px;margin:0;}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>safealign report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
