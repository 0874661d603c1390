"""`safealign eval preference --model DIR --data PATH...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from safealign.cli.common import console, user_errors
from safealign.inference.settings import DEFAULT_SAMPLING

app = typer.Typer(no_args_is_help=True)


@app.command()
def preference(
    model: Annotated[Path, typer.Option("--model", help="A reward or cost model folder (from `safealign train`).")],
    data: Annotated[list[str], typer.Option("--data", help="Preference data: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; repeat for more.")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and score_histogram.png.")] = Path("runs/eval-preference"),
    max_length: Annotated[int, typer.Option(help="Tokens per sequence.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 16,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip bad records instead of stopping.")] = False,
) -> None:
    """Pairwise accuracy, sign accuracy (cost), per-harm-category accuracy and a score histogram."""
    from safealign.evaluate.preference import evaluate_preference, load_pairs, write_outputs
    from safealign.models.score import ScoreModel, load_score_tokenizer

    with user_errors():
        if not (model / "score_config.json").is_file():
            raise FileNotFoundError(2, "not a safealign score-model folder (no score_config.json)", str(model))
        records = load_pairs(data, format, skip_invalid)
        scorer = ScoreModel.from_pretrained(model)
        report = evaluate_preference(scorer, load_score_tokenizer(model), records, max_length, batch_size)
        written = write_outputs(report, out)
    table = Table(title=f"{report.kind} model on {report.pairs} pairs", show_header=False)
    table.add_row("eval/accuracy", f"{report.accuracy:.4f}")
    if report.accuracy_sign is not None:
        table.add_row("eval/accuracy_sign", f"{report.accuracy_sign:.4f}")
    metrics = report.metrics()
    for key in ("mean_score_safe", "mean_score_unsafe"):
        if metrics[key] is not None:
            table.add_row(key, f"{metrics[key]:.4f}")
    console.print(table)
    if report.per_category:
        cats = Table(title="accuracy per harm category (pairs touching it)")
        cats.add_column("category")
        cats.add_column("accuracy", justify="right")
        cats.add_column("pairs", justify="right")
        for name, row in report.per_category.items():
            cats.add_row(name, f"{row['accuracy']:.3f}", str(row["pairs"]))
        console.print(cats)
    for path in written:
        console.print(f"wrote {path}")


@app.command()
def moderation(
    model: Annotated[Path, typer.Option("--model", help="A moderation folder (from `safealign train moderation`).")],
    data: Annotated[list[str], typer.Option("--data", help="Labelled evaluation data (QA records or dual pairs); repeat for more.")],
    train_data: Annotated[Optional[list[str]], typer.Option("--train-data", help="Data for the TF-IDF baseline (default: the moderator's own training data from its run's config.yaml).")] = None,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and pr_curve.png.")] = Path("runs/eval-moderation"),
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip bad records instead of stopping.")] = False,
) -> None:
    """Unsafe P/R/F1, per-category and micro/macro F1, severity accuracy and confusion, ECE, PR curve — beside a TF-IDF baseline."""
    import yaml
    from transformers.utils import logging as hf_logging

    from safealign.data.load import load
    from safealign.moderation.evaluate import figures, score_baseline, score_moderator, write_pr_curve, write_report
    from safealign.moderation.model import Moderator
    from safealign.moderation.train import qa_records

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with user_errors():
        moderator = Moderator.load(model)
        records = qa_records(load(data, format, strict=not skip_invalid).records)
        if not train_data:
            run_config = model.parent / "config.yaml"
            if not run_config.is_file():
                raise FileNotFoundError(2, "no run config.yaml beside the model; pass --train-data for the baseline", str(run_config))
            train_data = yaml.safe_load(run_config.read_text())["data"]
        train_records = qa_records(load(train_data, format, strict=not skip_invalid).records)
    taxonomy = moderator.meta.taxonomy
    judges = [score_moderator(moderator, records), score_baseline(train_records, records, taxonomy)]
    results = {j.name: figures(j, records, taxonomy) for j in judges}
    table = Table(title=f"moderation on {len(records)} responses ({sum(not r.is_safe for r in records)} unsafe)")
    table.add_column("metric")
    for j in judges:
        table.add_column(j.name, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [("unsafe precision", lambda r: r["unsafe"]["precision"]), ("unsafe recall", lambda r: r["unsafe"]["recall"]),
            ("unsafe F1", lambda r: r["unsafe"]["f1"]), ("threshold", lambda r: r["threshold"]),
            ("category micro F1", lambda r: r["category_micro_f1"]), ("category macro F1", lambda r: r["category_macro_f1"]),
            ("severity accuracy", lambda r: r["severity_accuracy"]), ("ECE (unsafe)", lambda r: r["ece"])]
    for label, get in rows:
        table.add_row(label, *(fmt(get(results[j.name])) for j in judges))
    console.print(table)
    confusion = Table(title="severity confusion (model): rows true 0–3, columns predicted 0–3")
    for k in range(4):
        confusion.add_column(str(k), justify="right")
    for row in results["model"]["severity_confusion"]:
        confusion.add_row(*(str(v) for v in row))
    console.print(confusion)
    metrics_path = write_report(results, out)
    curve = write_pr_curve(judges, records, out / "pr_curve.png")
    console.print(f"wrote {metrics_path} and {curve}")


def _parse_policies(specs: list[str], red: Optional[str], blue: Optional[str]) -> dict[str, str]:
    """NAME=DIR pairs (a bare DIR is named after its folder), plus --red / --blue; names must be unique."""
    from safealign.data.errors import DataError

    named = [("red", red)] * (red is not None) + [("blue", blue)] * (blue is not None)
    for spec in specs:
        name, sep, path = spec.partition("=")
        named.append((name, path) if sep else (Path(spec).name, spec))
    policies: dict[str, str] = {}
    for name, path in named:
        if not name or not path:
            raise DataError(f"--policy {name}={path}: expected NAME=DIR")
        if name in policies:
            raise DataError(f"policy name {name!r} given twice")
        policies[name] = path
    if len(policies) < 2:
        raise DataError("an arena needs at least two policies (--policy NAME=DIR, or --red DIR --blue DIR)")
    return policies


def _quiet_transformers(threads: Optional[int]) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if threads:
        import torch

        torch.set_num_threads(threads)


@app.command()
def arena(
    reward: Annotated[str, typer.Option("--reward", help="Reward model folder (higher is more helpful).")],
    cost: Annotated[str, typer.Option("--cost", help="Cost model folder (cost > 0 is unsafe).")],
    prompts: Annotated[list[str], typer.Option("--prompts", help="Records with prompts: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; repeat for more.")],
    policy: Annotated[Optional[list[str]], typer.Option("--policy", help="NAME=DIR (alias, folder or hub id); repeat for every policy.")] = None,
    red: Annotated[Optional[str], typer.Option("--red", help="A policy named red (with --blue: a two-policy arena).")] = None,
    blue: Annotated[Optional[str], typer.Option("--blue", help="A policy named blue.")] = None,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format of --prompts (detected when not given).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, answers.jsonl and arena.png.")] = Path("runs/eval-arena"),
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of the prompts for the rating intervals (0: none).")] = 1000,
    tie_eps: Annotated[float, typer.Option(help="Rewards closer than this are a tie.")] = 1e-3,
    prior: Annotated[float, typer.Option(help="Virtual wins each way per pair of policies in the BT fit (0: plain MLE).")] = 0.5,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer at most.")] = DEFAULT_SAMPLING.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = DEFAULT_SAMPLING.temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = DEFAULT_SAMPLING.top_p,
    seed: Annotated[int, typer.Option(help="Sampling and bootstrap seed.")] = DEFAULT_SAMPLING.seed,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call and sequences per scoring pass.")] = 8,
    max_length: Annotated[int, typer.Option(help="Tokens per scored sequence.")] = 512,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Policies answer the same prompts; win/tie/lose on reward, safe/unsafe 2×2 on cost, Bradley–Terry ratings with bootstrap CIs."""
    import json

    from safealign.data.errors import DataError
    from safealign.data.load import load
    from safealign.evaluate.arena import answer_prompts, arena_report, load_scorer, score_answers, write_arena_figure
    from safealign.inference.sampling import SamplingSettings

    _quiet_transformers(threads)
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    with user_errors():
        policies = _parse_policies(policy or [], red, blue)
        records = load(prompts, format).records[:limit]
        if not records:
            raise DataError("no prompts to answer")
        answers = [answer_prompts(path, records, settings, batch_size, seed, device) for path in policies.values()]
        rewards = score_answers(*load_scorer(reward, "reward", device), records, answers, max_length, batch_size)
        costs = score_answers(*load_scorer(cost, "cost", device), records, answers, max_length, batch_size)
        names = list(policies)
        report = arena_report(names, rewards, costs, tie_eps, prior, bootstrap, seed)
    report["sampling"] = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    report["models"] = {"policies": policies, "reward": reward, "cost": cost}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        for p, record in enumerate(records):
            row = {"prompt": record.prompt, "category": getattr(record, "category", None), "origin": record.origin,
                   "answers": {n: {"response": answers[k][p], "reward": float(rewards[p, k]), "cost": float(costs[p, k])}
                               for k, n in enumerate(names)}}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_arena_figure(report, out / "arena.png")
    table = Table(title=f"arena on {len(records)} prompts (ratings: 1000 + 400·log10 BT strength)")
    for column in ("policy", "rating", "95% CI", "mean reward", "mean cost", "unsafe"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in sorted(report["policies"].items(), key=lambda kv: -kv[1]["rating"]):
        low, high = row["rating_ci95"]
        table.add_row(name, f"{row['rating']:.0f}", f"{low:.0f}–{high:.0f}", f"{row['mean_reward']:.3f}",
                      f"{row['mean_cost']:.3f}", f"{row['unsafe_share']:.1%}")
    console.print(table)
    pairs = Table(title="pairs: reward win/tie/lose of a vs b; cost 2×2 (a safe/unsafe × b safe/unsafe)")
    for column in ("a", "b", "win", "tie", "lose", "both safe", "only b unsafe", "only a unsafe", "both unsafe"):
        pairs.add_column(column, justify="left" if column in ("a", "b") else "right")
    for row in report["pairs"]:
        (ss, su), (us, uu) = row["safety_table"]["counts"]
        pairs.add_row(row["a"], row["b"], str(row["win"]), str(row["tie"]), str(row["lose"]), str(ss), str(su), str(us), str(uu))
    console.print(pairs)
    console.print(f"wrote {out / 'metrics.json'}, {out / 'answers.jsonl'} and {out / 'arena.png'}")


@app.command()
def length(
    reward: Annotated[str, typer.Option("--reward", help="Reward model folder.")],
    data: Annotated[list[str], typer.Option("--data", help="Preference pairs: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; repeat for more.")],
    before: Annotated[Optional[str], typer.Option("--before", help="Policy before training (with --after and --prompts).")] = None,
    after: Annotated[Optional[str], typer.Option("--after", help="Policy after training.")] = None,
    prompts: Annotated[Optional[list[str]], typer.Option("--prompts", help="Prompts both policies answer.")] = None,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts.")] = None,
    unit: Annotated[str, typer.Option(help="Length unit: tokens (of the reward model's tokenizer) or words.")] = "tokens",
    bucket_width: Annotated[int, typer.Option(help="Length bucket width for the non-length reward gain.")] = 20,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and length.png.")] = Path("runs/eval-length"),
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer at most.")] = DEFAULT_SAMPLING.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = DEFAULT_SAMPLING.temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = DEFAULT_SAMPLING.top_p,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = DEFAULT_SAMPLING.seed,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call and sequences per scoring pass.")] = 8,
    max_length: Annotated[int, typer.Option(help="Tokens per scored sequence.")] = 512,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip bad records instead of stopping.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Length bias (Singhal et al. 2023): reward–length correlation, longer-preferred shares, reward gain vs non-length gain."""
    import json

    from safealign.data.errors import DataError
    from safealign.data.load import load
    from safealign.evaluate.arena import answer_prompts, load_scorer, score_answers
    from safealign.evaluate.length import UNITS, policy_bias, preference_bias, response_length, write_length_figure
    from safealign.inference.sampling import SamplingSettings

    _quiet_transformers(threads)
    with user_errors():
        if unit not in UNITS:
            raise DataError(f"--unit must be one of {', '.join(UNITS)}, got {unit!r}")
        if (before is None) != (after is None) or (before is not None and not prompts):
            raise DataError("--before, --after and --prompts go together")
        model, tokenizer = load_scorer(reward, "reward", device)
        pairs = load(data, format, strict=not skip_invalid).records
        metrics: dict = {"unit": UNITS[unit], "reward": reward, "preference": None, "policies": None}
        metrics["preference"], points = preference_bias(model, tokenizer, pairs, unit, max_length, batch_size)
        answers = None
        if before is not None and after is not None and prompts:
            records = load(prompts, format).records[:limit]
            if not records:
                raise DataError("no prompts to answer")
            settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
            texts = [answer_prompts(p, records, settings, batch_size, seed, device) for p in (before, after)]
            scores = score_answers(model, tokenizer, records, texts, max_length, batch_size)
            answers = {f"length_{side}": [response_length(tokenizer, t, unit) for t in texts[k]] for k, side in enumerate(("before", "after"))}
            answers.update(reward_before=scores[:, 0].tolist(), reward_after=scores[:, 1].tolist())
            metrics["policies"] = {"before": before, "after": after, **policy_bias(
                answers["length_before"], answers["reward_before"], answers["length_after"], answers["reward_after"], bucket_width)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_length_figure(points, answers, unit, out / "length.png", (metrics["policies"] or {}).get("buckets"))
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    pref = metrics["preference"]
    table = Table(title=f"length bias on {pref['pairs']} pairs (length in {unit})", show_header=False)
    table.add_row("pearson(reward, length)", fmt(pref["pearson"]))
    table.add_row("spearman(reward, length)", fmt(pref["spearman"]))
    table.add_row("labels: share longer preferred", f"{fmt(pref['labels']['share_longer_preferred'])} ({pref['labels']['length_ties']} length ties left out)")
    table.add_row("reward model: share longer preferred", fmt(pref["reward_model"]["share_longer_preferred"]))
    if metrics["policies"]:
        pol = metrics["policies"]
        table.add_row("mean length before → after", f"{pol['mean_length_before']:.1f} → {pol['mean_length_after']:.1f}")
        table.add_row("reward gain (after − before)", fmt(pol["reward_gain"]))
        table.add_row(f"non-length reward gain ({bucket_width}-{unit} buckets)", f"{fmt(pol['non_length_gain'])} ({pol['skipped']['buckets']} bucket(s) skipped)")
    console.print(table)
    console.print(f"wrote {out / 'metrics.json'} and {out / 'length.png'}")
