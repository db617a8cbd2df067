"""λ sweep: fine-tune and evaluate one adapter per (λ, seed), then tabulate and plot accuracy against λ.

    sibo sweep --base_model B --data_path math_10k.json --output_dir sweep --lambdas 0,0.1,0.2,0.3 \
        --seeds 1,2,3 --datasets AddSub,SVAMP

Each run is the finetune recipe with λ (`embedding_lambda`) and the seed replaced, then the
evaluate runner on the chosen benchmarks; runs land in output_dir/lam<λ>_seed<seed>/{adapter,eval}.
sweep.csv gets one row per (λ, seed) as each run finishes, so a long sweep can be watched; a
rerun skips runs whose adapter and scores are complete. sweep.png plots mean accuracy (± std over
seeds) against λ. Every setting and benchmark file is checked before the first run starts.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from sibo.decode.settings import UPSTREAM_EVAL_BEAMS, DecodingSettings
from sibo.errors import InputError
from sibo.eval.runner import EvalConfig, load_benchmarks
from sibo.files import claim_output_dir, hold_output_dir, write_atomically
from sibo.study.plots import pyplot, save_figure
from sibo.study.runs import train_and_score
from sibo.train.config import FinetuneConfig

logger = logging.getLogger(__name__)

CSV_FILE = "sweep.csv"
PLOT_FILE = "sweep.png"


@dataclass
class SweepConfig:
    """The finetune settings shared by every run, the grid, and how each run is scored."""

    finetune: FinetuneConfig = field(
        metadata={"help": "every run's settings; λ, seed and output_dir are replaced"}
    )
    lambdas: list[float] = field(metadata={"help": "λ values, each in [0, 1]"})
    seeds: list[int] = field(metadata={"help": "seeds; one run per (λ, seed)"})
    datasets: str = field(metadata={"help": "benchmarks to score, as `sibo evaluate --dataset` takes them"})
    data_dir: Path = field(metadata={"help": "folder holding <Name>/test.json"})
    output_dir: Path = field(metadata={"help": "where runs, sweep.csv and sweep.png go"})
    limit: int | None = field(default=None, metadata={"help": "score only the first N examples of each"})
    extraction: str = field(default="careful", metadata={"help": "careful, or legacy (upstream's rules)"})
    decoding: DecodingSettings = field(
        default_factory=lambda: DecodingSettings(num_beams=UPSTREAM_EVAL_BEAMS)
    )

    def __post_init__(self) -> None:
        self.output_dir, self.data_dir = Path(self.output_dir), Path(self.data_dir)
        if not self.lambdas or not self.seeds:
            raise InputError("a sweep needs at least one λ and one seed")
        for lam in self.lambdas:
            replace(self.finetune.sibo, lam=lam)  # SiboConfig checks each λ
        if len(set(self.lambdas)) != len(self.lambdas) or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"λ values and seeds must not repeat: {self.lambdas}, {self.seeds}")

    def run_dir(self, lam: float, seed: int) -> Path:
        return self.output_dir / f"lam{lam:g}_seed{seed}"

    def eval_config(self, lam: float, seed: int) -> EvalConfig:
        return EvalConfig(
            datasets=self.datasets,
            data_dir=self.data_dir,
            output_dir=self.run_dir(lam, seed) / "eval",
            extraction=self.extraction,
            limit=self.limit,
            decoding=self.decoding,
        )

    def finetune_config(self, lam: float, seed: int) -> FinetuneConfig:
        """The shared settings with this run's λ, seed and directory (checked again by FinetuneConfig)."""
        adapter_dir = self.run_dir(lam, seed) / "adapter"
        return replace(self.finetune, embedding_lambda=lam, seed=seed, output_dir=str(adapter_dir))


@dataclass
class SweepRow:
    lam: float
    seed: int
    accuracy: dict[str, float]  # per benchmark
    adapter_dir: str

    @property
    def mean_accuracy(self) -> float:
        return statistics.fmean(self.accuracy.values())


def sweep(config: SweepConfig) -> list[SweepRow]:
    """Every (λ, seed) run in grid order; writes sweep.csv after each run and sweep.png at the end."""
    pyplot()  # fail now, not after an hour of training, when matplotlib is missing
    grid = [(lam, seed) for lam in config.lambdas for seed in config.seeds]
    runs = [
        (lam, seed, config.finetune_config(lam, seed), config.eval_config(lam, seed)) for lam, seed in grid
    ]
    benchmarks = load_benchmarks(runs[0][3])  # the same files for every run: read and checked once
    rows: list[SweepRow] = []
    claim_sweep_dir(config, dry_run=True)
    # one sweep per folder: a second one stops at once, naming this one's pid
    with hold_output_dir(config.output_dir):
        claim_sweep_dir(config)
        for number, (lam, seed, finetune_config, eval_config) in enumerate(runs, start=1):
            logger.info("sweep run %d/%d: λ=%g, seed %d", number, len(runs), lam, seed)
            rows.append(run_one(lam, seed, finetune_config, eval_config, benchmarks))
            write_csv(rows, config.output_dir / CSV_FILE)
        plot_accuracy(rows, config.output_dir / PLOT_FILE)
    return rows


def claim_sweep_dir(config: SweepConfig, dry_run: bool = False) -> None:
    """output_dir must be empty or an earlier sweep's (a rerun skips its finished runs; each run's own folder
    guards its settings): never a folder holding the user's files, a model or data."""
    reads = [("--data_path", config.finetune.data_path), ("--base_model", config.finetune.base_model),
             ("--data_dir", config.data_dir)]  # fmt: skip
    claim_output_dir(config.output_dir, "sweep", {}, may_differ=None, dry_run=dry_run, reads=reads)


def run_one(
    lam: float, seed: int, finetune_config: FinetuneConfig, eval_config: EvalConfig, benchmarks
) -> SweepRow:
    """Fine-tune (unless a finished adapter is there) and score one run."""
    results = train_and_score(
        finetune_config.base_model, eval_config, benchmarks, finetune_config, threads=finetune_config.threads
    )
    accuracy = {name: result.accuracy for name, result in results.items()}
    return SweepRow(lam, seed, accuracy, finetune_config.output_dir)


def write_csv(rows: list[SweepRow], file: Path) -> None:
    """One row per (λ, seed): accuracy per benchmark, their mean, and the adapter's directory."""
    datasets = list(rows[0].accuracy)
    file.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["lambda", "seed", *datasets, "mean_accuracy", "adapter_dir"])
    for row in rows:
        cells = [f"{row.accuracy[name]:.6f}" for name in datasets]
        writer.writerow([f"{row.lam:g}", row.seed, *cells, f"{row.mean_accuracy:.6f}", row.adapter_dir])
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
