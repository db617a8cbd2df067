"""λ sweep: fine-tune and evaluate one adapter per (λ, seed), then tabulate and plot accuracy against λ.

    sibo sweep --base_model B --data_path math_10k.json --output_dir sweep --lambdas 0,0.1,0.2,0.3 \
        --seeds 1,2,3 --datasets AddSub,SVAMP

Each run is the finetune recipe with λ (`embedding_lambda`) and the seed replaced, then the
evaluate runner on the chosen benchmarks; runs land in output_dir/lam<λ>_seed<seed>/{adapter,eval}.
sweep.csv gets one row per (λ, seed) as each run finishes, so a long sweep can be watched; a
rerun skips runs whose adapter and scores are complete. sweep.png plots mean accuracy (± std over
seeds) against λ. Every setting and benchmark file is checked before the first run starts.

With `heldout` (N records), N records of the training data never train (`sibo.study.split`: nor do their
exact and near copies); every run's held-out loss per response token is measured before training, at
each eval_step and at the end (heldout_loss.json in the run's folder), and report.md pairs each λ's saved
adapters with λ 0's (`sibo.study.sweep_report`): "does SIBO help on this data", with intervals over seeds
and records.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from sibo.eval.config import EvalConfig
from sibo.eval.results import read_records
from sibo.eval.runner import load_benchmarks
from sibo.files import write_atomically
from sibo.output_dir import claim_output_dir, hold_output_dir
from sibo.study.plots import pyplot, save_figure
from sibo.study.runs import train_adapter, train_and_score
from sibo.study.split import write_split
from sibo.study.sweep_config import HELDOUT_DIR, SweepConfig
from sibo.study.sweep_heldout import (
    HeldOut,
    HeldOutLog,
    accept_earlier,
    check_reusable,
    is_finished,
    mean_loss,
    prepare_heldout,
)
from sibo.study.sweep_report import compare_accuracy, compare_heldout, render_report, resampled
from sibo.train.config import FinetuneConfig
from sibo.train.guards import finetune_reads

logger = logging.getLogger(__name__)

CSV_FILE = "sweep.csv"
PLOT_FILE = "sweep.png"
REPORT_FILE, REPORT_JSON, HELDOUT_PLOT = "report.md", "report.json", "heldout.png"


@dataclass
class SweepRow:
    lam: float
    seed: int
    accuracy: dict[str, float]  # per benchmark
    adapter_dir: str
    heldout_loss: float | None = None  # mean held-out loss per response token of the saved adapter

    @property
    def mean_accuracy(self) -> float:
        return statistics.fmean(self.accuracy.values()) if self.accuracy else math.nan


def sweep(config: SweepConfig) -> list[SweepRow]:
    """Every (λ, seed) run in grid order; writes sweep.csv after each run, sweep.png at the end, and with
    heldout the held-out split before the first run and report.md after the last."""
    pyplot()  # fail now, not after an hour of training, when matplotlib is missing
    grid = [(lam, seed) for lam in config.lambdas for seed in config.seeds]
    runs = [
        (
            lam,
            seed,
            config.finetune_config(lam, seed),
            config.eval_config(lam, seed) if config.evaluation else None,
        )
        for lam, seed in grid
    ]
    # the same files for every run: read and checked once
    benchmarks = load_benchmarks(runs[0][3]) if config.evaluation else []
    heldout = (
        prepare_heldout(config.finetune, config.heldout, config.heldout_seed) if config.heldout else None
    )
    rows: list[SweepRow] = []
    losses: dict[tuple[float, int], dict[int, list[float]]] = {}
    adapter_steps: dict[tuple[float, int], int] = {}
    claim_sweep_dir(config, dry_run=True)
    # one sweep per folder: a second one stops at once, naming this one's pid
    with hold_output_dir(config.output_dir):
        claim_sweep_dir(config)
        if heldout is not None:
            # before write_split rewrites the files that vouch for an earlier sweep's runs
            heldout = accept_earlier(heldout, config.output_dir / HELDOUT_DIR)
            for _, _, finetune_config, _ in runs:  # before anything is written or trained
                check_reusable(HeldOutLog(Path(finetune_config.output_dir).parent, heldout), finetune_config)
            write_split(heldout.records, heldout.split, config.output_dir / HELDOUT_DIR)
        for number, (lam, seed, finetune_config, eval_config) in enumerate(runs, start=1):
            logger.info("sweep run %d/%d: λ=%g, seed %d", number, len(runs), lam, seed)
            row, losses[(lam, seed)], adapter_steps[(lam, seed)] = run_one(
                lam, seed, finetune_config, eval_config, benchmarks, heldout
            )
            rows.append(row)
            write_csv(rows, config.output_dir / CSV_FILE)
        if benchmarks:
            plot_accuracy(rows, config.output_dir / PLOT_FILE)
        if heldout is not None:
            write_report(config, heldout, losses, adapter_steps, answers_by_run(config, benchmarks))
    return rows


def claim_sweep_dir(config: SweepConfig, dry_run: bool = False) -> None:
    """output_dir must be empty or an earlier sweep's (a rerun skips its finished runs; each run's own folder
    guards its settings), or handed over with --overwrite (every run trains again): never a folder holding
    the user's files, a model or data."""
    reads = finetune_reads(config.finetune)
    if config.evaluation is not None:
        reads.append(("--data_dir", config.evaluation.data_dir))
    claim_output_dir(
        config.output_dir,
        "sweep",
        {},
        config.finetune.overwrite,
        may_differ=None,
        dry_run=dry_run,
        reads=reads,
    )


def run_one(
    lam: float,
    seed: int,
    finetune_config: FinetuneConfig,
    eval_config: EvalConfig | None,
    benchmarks,
    heldout: HeldOut | None = None,
) -> tuple[SweepRow, dict[int, list[float]], int | None]:
    """Fine-tune (unless a finished adapter is there) and score one run: its row, and with heldout its
    held-out losses by step ({} without) and the step of the adapter it saved (None without)."""
    callbacks, log = [], None
    if heldout is not None:
        log = HeldOutLog(Path(finetune_config.output_dir).parent, heldout)
        if finetune_config.overwrite or not is_finished(finetune_config):  # it trains: score as it does
            if finetune_config.overwrite:
                log.points = {}  # the earlier run's points are not this run's
            callbacks = [log.callback(finetune_config.eval_step)]
    results = {}
    if eval_config is None:  # held-out loss only
        train_adapter(finetune_config, callbacks)
    else:
        results = train_and_score(
            finetune_config.base_model,
            eval_config,
            benchmarks,
            finetune_config,
            callbacks=callbacks,
            threads=finetune_config.threads,
        )
    accuracy = {name: result.accuracy for name, result in results.items()}
    step, losses = log.final(finetune_config) if log is not None else (None, {})
    final = mean_loss(losses[step]) if losses else None
    return SweepRow(lam, seed, accuracy, finetune_config.output_dir, final), losses, step


def answers_by_run(config: SweepConfig, benchmarks) -> dict[tuple[float, int], dict[str, dict]]:
    """Each run's 0/1 answer per question and benchmark, in question order (McNemar pairs them)."""
    answers = {}
    if not benchmarks:
        return answers
    for lam in config.lambdas:
        for seed in config.seeds:
            folder = config.eval_config(lam, seed).output_dir
            answers[(lam, seed)] = {}
            for task, _ in benchmarks:
                records = read_records(folder / f"{task.name}.jsonl")
                ids = sorted(records)
                answers[(lam, seed)][task.name] = {
                    "ids": ids,
                    "correct": [int(records[i]["correct"]) for i in ids],
                }
    return answers


def write_report(
    config: SweepConfig, heldout: HeldOut, losses: dict, adapter_steps: dict, answers: dict
) -> dict:
    """report.md and report.json beside sweep.csv, heldout.png beside sweep.png; the report's content."""
    heldout_rows = compare_heldout(losses, config.seeds, config.margin, adapter_steps)
    accuracy_rows = compare_accuracy(answers, config.seeds) if answers else []
    about = {
        "data_path": config.finetune.data_path,
        "heldout": len(heldout.split.heldout),
        "heldout_seed": config.heldout_seed,
        "dropped": len(heldout.split.dropped),
        "trained": len(heldout.split.train),
    }
    report = {"about": about, "heldout_loss": heldout_rows, "accuracy": accuracy_rows}
    write_atomically(config.output_dir / REPORT_FILE, render_report(heldout_rows, accuracy_rows, about))
    write_atomically(config.output_dir / REPORT_JSON, report_json(report))
    plot_heldout(heldout_rows, config.output_dir / HELDOUT_PLOT)
    return report


def report_json(report) -> str:
    """The report as strict JSON: a number that is not finite (no seed variance with one seed, seeds that
    cannot decide) is null, as JSON has no NaN or Infinity."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(report), indent=1, default=str, allow_nan=False) + "\n"


def write_csv(rows: list[SweepRow], file: Path) -> None:
    """One row per (λ, seed): accuracy per benchmark and their mean (when scored), the final held-out loss
    (with heldout), and the adapter's directory."""
    datasets = list(rows[0].accuracy)
    heldout = rows[0].heldout_loss is not None
    file.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    accuracy_columns = [*datasets, "mean_accuracy"] if datasets else []
    writer.writerow(
        ["lambda", "seed", *accuracy_columns, *(["heldout_loss"] if heldout else []), "adapter_dir"]
    )
    for row in rows:
        cells = [f"{row.accuracy[name]:.6f}" for name in datasets] + (
            [f"{row.mean_accuracy:.6f}"] if datasets else []
        )
        loss = [f"{row.heldout_loss:.6f}"] if heldout else []
        writer.writerow([f"{row.lam:g}", row.seed, *cells, *loss, row.adapter_dir])
    write_atomically(file, out.getvalue())


def summarize(rows: list[SweepRow]) -> list[tuple[float, float, float, int]]:
    """(λ, mean accuracy over seeds, its std (0 for one seed), number of seeds), by λ."""
    by_lambda: dict[float, list[float]] = {}
    for row in rows:
        by_lambda.setdefault(row.lam, []).append(row.mean_accuracy)
    return [
        (lam, statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))
        for lam, values in sorted(by_lambda.items())
    ]


def plot_accuracy(rows: list[SweepRow], file: Path) -> None:
    """Mean accuracy against λ, with ± std over seeds and every seed's point."""
    plt = pyplot()
    summary = summarize(rows)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter(
        [row.lam for row in rows], [row.mean_accuracy for row in rows], s=12, alpha=0.4, label="one seed"
    )
    axes.errorbar(
        [lam for lam, *_ in summary],
        [mean for _, mean, _, _ in summary],
        yerr=[std for _, _, std, _ in summary],
        marker="o",
        capsize=3,
        label="mean ± std over seeds",
    )
    axes.set_xlabel("λ (share of h0 in each boosted branch)")
    axes.set_ylabel("accuracy (mean over benchmarks)")
    axes.set_title(", ".join(rows[0].accuracy))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, file)


def plot_heldout(report: dict, file: Path) -> None:
    """Each λ's saved adapters' held-out loss difference to λ 0's, with its 95 % interval and the margin."""
    plt = pyplot()
    rows = report["lambdas"]
    figure, axes = plt.subplots(figsize=(6, 4))
    differences = [row["difference"] for row in rows]
    axes.errorbar(
        [row["lambda"] for row in rows],
        differences,
        yerr=[[d - row["low"] for d, row in zip(differences, rows, strict=True)],
              [row["high"] - d for d, row in zip(differences, rows, strict=True)]],
        marker="o",
        capsize=3,
        label=f"λ − λ 0, 95 % interval ({resampled(report['seeds'])})",
    )  # fmt: skip
    axes.axhline(0.0, color="black", linewidth=0.8)
    for bound in (-report["margin"], report["margin"]):
        axes.axhline(bound, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel("λ (share of h0 in each boosted branch)")
    axes.set_ylabel("held-out loss difference (saved adapters)")
    axes.set_title("held-out loss per response token, λ − λ 0 (dashed: ±margin)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    save_figure(figure, file)
