"""The SmolLM2 study's report: from each run's result.json to results.json, markdown tables and a plot.

    summary = summarize(results)          # results: {run name: result.json}
    print(tables(summary))
    plot_loss_difference(summary, Path("loss_difference.png"))

Every SIBO arm is paired with its plain arm seed by seed (same data order, same questions). Held-out
loss and accuracy differences get a t-interval over the per-seed differences (seeds: training noise
and question noise both); a question-only bootstrap is kept beside it and labelled so; paired
accuracy gets exact McNemar tests. Runs made by different code versions are not combined.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
from smollm2_protocol import ARMS, PRIMARY

from sibo.errors import InputError
from sibo.study.plots import pyplot, save_figure
from sibo.study.stats import Interval, exact_mcnemar, paired_bootstrap, seed_t_interval


def summarize(results: dict[str, dict], allow_other_code: bool = False) -> dict:
    """results.json's content: per arm and seed the mean losses at each point, accuracy and similarity;
    per SIBO arm, its differences from the plain arm with intervals; the tuning runs' choice."""
    versions = sorted({result["code_version"] for result in results.values()})
    if len(versions) > 1 and not allow_other_code:
        raise InputError(
            f"these runs were made by different code ({', '.join(versions)}): pass --allow_other_code to combine them"
        )
    tuning = {name: r for name, r in results.items() if r["run"]["tuning"]}
    arms: dict[str, dict[int, dict]] = {}
    for result in results.values():
        if not result["run"]["tuning"]:
            arms.setdefault(result["run"]["arm"], {})[result["run"]["seed"]] = result
    arms = {arm: arms[arm] for arm in ARMS if arm in arms}  # the protocol's order, in tables and plot
    return {
        "code_versions": versions,
        "tuning": summarize_tuning(tuning),
        "arms": {arm: summarize_arm(runs) for arm, runs in arms.items()},
        "comparisons": [
            compare(arm, ARMS[arm].plain, arms[arm], arms[ARMS[arm].plain])
            for arm in arms
            if ARMS[arm].plain in arms
        ],
    }


def summarize_tuning(tuning: dict[str, dict]) -> dict:
    """Per tuned arm: each learning rate's mean loss on the tuning slice at the last point, and the lowest."""
    found: dict[str, dict] = {}
    for result in tuning.values():
        last = max(result["points"], key=int)
        found.setdefault(result["run"]["arm"], {})[f"{result['run']['learning_rate']:g}"] = nanmean(
            result["points"][last]["rationale"]
        )
    return {arm: {"loss_by_lr": rates, "chosen": min(rates, key=rates.get)} for arm, rates in found.items()}


def summarize_arm(runs: dict[int, dict]) -> dict:
    seeds = sorted(runs)
    points = sorted(runs[seeds[0]]["points"], key=int)
    return {
        "seeds": seeds,
        "learning_rate": runs[seeds[0]]["run"]["learning_rate"],
        "loss": {
            p: {m: [nanmean(runs[s]["points"][p][m]) for s in seeds] for m in ("rationale", "answer")}
            for p in points
        },
        "accuracy": [accuracy_of(runs[s]) for s in seeds] if runs[seeds[0]]["accuracy"] else None,
        "train_loss": [runs[s]["train"]["train_loss"] for s in seeds],
        "similarity": [runs[s]["similarity"] for s in seeds],
        "data_order": [runs[s]["data_order"] for s in seeds],
    }


def compare(arm: str, plain: str, sibo_runs: dict[int, dict], plain_runs: dict[int, dict]) -> dict:
    """SIBO − plain, paired by seed and question, at each point (loss) and at the end (accuracy, similarity)."""
    seeds = sorted(set(sibo_runs) & set(plain_runs))
    order_differs = [s for s in seeds if sibo_runs[s]["data_order"] != plain_runs[s]["data_order"]]
    if order_differs:
        raise InputError(
            f"{arm} and {plain} saw different training batches for seeds {order_differs}: not a paired comparison"
        )
    row: dict = {"sibo": arm, "plain": plain, "seeds": seeds, "primary": (arm, plain) == PRIMARY, "loss": {}}
    for point in sorted(sibo_runs[seeds[0]]["points"], key=int):
        row["loss"][point] = {
            measure: paired_intervals(
                [sibo_runs[s]["points"][point][measure] for s in seeds],
                [plain_runs[s]["points"][point][measure] for s in seeds],
            )
            for measure in ("rationale", "answer")
        }
    last = row["loss"][max(row["loss"], key=int)]["rationale"]
    row["verdict"] = loss_verdict(last.get("seeds"))
    if sibo_runs[seeds[0]]["accuracy"]:
        row["accuracy"] = compare_accuracy([sibo_runs[s] for s in seeds], [plain_runs[s] for s in seeds])
        row["similarity"] = compare_similarity(
            [sibo_runs[s]["similarity"] for s in seeds], [plain_runs[s]["similarity"] for s in seeds]
        )
    return row


def paired_intervals(sibo: list[list[float]], plain: list[list[float]]) -> dict:
    """(seeds, questions) scores: the seed t-interval (≥ 2 seeds) and a question-only bootstrap, on the
    questions scored in every run (an answer loss is NaN where a reference has no answer phrase)."""
    a, b = np.asarray(sibo, dtype=np.float64), np.asarray(plain, dtype=np.float64)
    kept = ~(np.isnan(a).any(axis=0) | np.isnan(b).any(axis=0))
    a, b = a[:, kept], b[:, kept]
    found = {
        "per_seed": [float(d) for d in (a - b).mean(axis=1)],
        "questions_only": described(paired_bootstrap(a, b)),
    }
    if a.shape[0] > 1:
        found["seeds"] = described(seed_t_interval(a, b))
    return found


def loss_verdict(interval: dict | None) -> str:
    """The protocol's rule, on the seed t-interval of SIBO − plain held-out loss at the last point."""
    if interval is None:
        return "one seed: no verdict"
    if interval["high"] < 0:
        return "SIBO lowers held-out loss"
    if interval["low"] > 0:
        return "SIBO raises held-out loss"
    return "no detectable effect at this size"


def compare_accuracy(sibo_runs: list[dict], plain_runs: list[dict]) -> dict:
    """Accuracy difference per seed (t-interval over seeds) and exact McNemar per seed and pooled."""
    sibo = [flat_correct(r) for r in sibo_runs]
    plain = [flat_correct(r) for r in plain_runs]
    gained = [int(((a == 1) & (b == 0)).sum()) for a, b in zip(sibo, plain, strict=True)]
    lost = [int(((a == 0) & (b == 1)).sum()) for a, b in zip(sibo, plain, strict=True)]
    found = paired_intervals(sibo, plain)
    return {
        **found,
        "gained": gained,
        "lost": lost,
        "mcnemar_p_per_seed": [exact_mcnemar(up, down) for up, down in zip(gained, lost, strict=True)],
        # pooled over question × seed pairs: seeds taken as independent draws of the same questions
        "mcnemar_p_pooled": exact_mcnemar(sum(gained), sum(lost)),
    }


def compare_similarity(sibo: list[list[float]], plain: list[list[float]]) -> dict:
    """Per layer: SIBO − plain per seed and, with ≥ 2 seeds, a t-interval over seeds."""
    a, b = np.asarray(sibo), np.asarray(plain)  # (seeds, layers)
    per_layer = []
    for layer in range(a.shape[1]):
        entry = {"per_seed": [float(d) for d in a[:, layer] - b[:, layer]]}
        if a.shape[0] > 1:
            entry["seeds"] = described(seed_t_interval(a[:, layer : layer + 1], b[:, layer : layer + 1]))
        per_layer.append(entry)
    return {"by_layer": per_layer}


def flat_correct(result: dict) -> np.ndarray:
    return np.asarray([c for scores in result["accuracy"].values() for c in scores["correct"]])


def accuracy_of(result: dict) -> float:
    return float(flat_correct(result).mean())


def nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def described(interval: Interval) -> dict:
    return interval.as_dict()


# ---------------------------------------------------------------- tables and the plot


def tables(summary: dict) -> str:
    """Markdown: the tuning choice, each arm's held-out loss by step, SIBO − plain with its intervals."""
    lines = []
    for arm, tuned in summary["tuning"].items():
        rates = ", ".join(f"{lr}: {loss:.4f}" for lr, loss in tuned["loss_by_lr"].items())
        lines.append(f"tuning {arm}: loss on the tuning slice by lr ({rates}) → {tuned['chosen']}")
    arms = summary["arms"]
    if arms:
        points = list(next(iter(arms.values()))["loss"])
        lines += [
            "",
            "held-out loss (mean NLL per rationale token), mean ± std over seeds (a bare number: one seed):",
            "",
        ]
        lines.append("| arm | lr | seeds | " + " | ".join(f"step {p}" for p in points) + " | accuracy |")
        lines.append("|---|---|---|" + "---|" * (len(points) + 1))
        for arm, row in arms.items():
            cells = [mean_std(row["loss"][p]["rationale"]) for p in points]
            accuracy = mean_std(row["accuracy"]) if row["accuracy"] else "-"
            lines.append(
                f"| {arm} | {row['learning_rate']:g} | {len(row['seeds'])} | "
                + " | ".join(cells)
                + f" | {accuracy} |"
            )
    for row in summary["comparisons"]:
        lines += [
            "",
            f"{row['sibo']} − {row['plain']}{' (primary)' if row['primary'] else ''}, seeds {row['seeds']}: {row['verdict']}",
            "",
        ]
        lines.append(
            "| step | rationale loss, seeds (95 % t) | questions only (bootstrap) | answer loss, seeds |"
        )
        lines.append("|---|---|---|---|")
        for point, measures in row["loss"].items():
            rationale, answer = measures["rationale"], measures["answer"]
            lines.append(
                f"| {point} | {interval_text(rationale.get('seeds'))} | {interval_text(rationale['questions_only'])} "
                f"| {interval_text(answer.get('seeds'))} |"
            )
        if "accuracy" in row:
            accuracy = row["accuracy"]
            lines.append(
                f"accuracy: {interval_text(accuracy.get('seeds') or accuracy['questions_only'])}; gained/lost per seed "
                f"{accuracy['gained']}/{accuracy['lost']}, exact McNemar p per seed "
                + ", ".join(f"{p:.3g}" for p in accuracy["mcnemar_p_per_seed"])
                + f", pooled {accuracy['mcnemar_p_pooled']:.3g}"
            )
    return "\n".join(lines)


def mean_std(values: list[float]) -> str:
    """'mean ± std' over seeds; one seed has no spread to show."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def interval_text(interval: dict | None) -> str:
    if interval is None:
        return "- (one seed)"
    return f"{interval['difference']:+.4f} [{interval['low']:+.4f}, {interval['high']:+.4f}]"


def plot_loss_difference(summary: dict, file: Path) -> None:
    """SIBO − plain held-out loss against training step, one panel per comparison (their bands differ
    in width): the mean, each seed's line and the seed t-interval band."""
    plt = pyplot()
    comparisons = summary["comparisons"]
    columns = min(len(comparisons), 2)
    rows = math.ceil(len(comparisons) / columns)
    figure, panels = plt.subplots(rows, columns, figsize=(5 * columns, 3.4 * rows), squeeze=False)
    used = panels.flat[: len(comparisons)]
    for number, (axes, row) in enumerate(zip(used, comparisons, strict=True)):
        colour = f"C{number}"
        steps = [int(p) for p in row["loss"]]
        rationale = [row["loss"][p]["rationale"] for p in row["loss"]]
        means = [r["seeds"]["difference"] if "seeds" in r else r["per_seed"][0] for r in rationale]
        axes.plot(steps, means, marker="o", color=colour)
        if all("seeds" in r for r in rationale):
            axes.fill_between(
                steps,
                [r["seeds"]["low"] for r in rationale],
                [r["seeds"]["high"] for r in rationale],
                color=colour,
                alpha=0.2,
            )
        for seed in range(len(row["seeds"])):
            axes.plot(
                steps, [r["per_seed"][seed] for r in rationale], color=colour, alpha=0.35, linewidth=0.8
            )
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_title(f"{row['sibo']} − {row['plain']}", fontsize=10)
        axes.grid(alpha=0.3)
    for axes in panels.flat[len(comparisons) :]:
        axes.set_visible(False)
    for axes in used[-columns:]:  # the lowest panel of each column
        axes.set_xlabel("optimizer step")
    for axes in panels[:, 0]:
        axes.set_ylabel("held-out loss difference\n(nats per token)")
    figure.suptitle(
        "SIBO − plain on clean test rationales\nmean (dots), each seed (thin lines), 95 % t-band over seeds",
        fontsize=10,
    )
    figure.tight_layout()
    save_figure(figure, file)
