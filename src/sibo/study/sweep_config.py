"""What a sweep runs: the finetune settings shared by every run, the grid of (λ, seed) and how each run is
scored. Its grid's settings are `sibo sweep`'s flags, declared here once; nothing here imports torch, so the
CLI builds its flags from this module (the sweep itself: sibo.study.sweep)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from sibo.errors import InputError
from sibo.eval.config import EvalConfig
from sibo.train.config import FinetuneConfig

HELDOUT_DIR = "heldout"


@dataclass
class SweepConfig:
    """The finetune settings shared by every run, how each run is scored, and the grid: its settings are
    `sibo sweep`'s flags (declared here once)."""

    finetune: FinetuneConfig = field(
        metadata={"help": "every run's settings; λ, seed and output_dir are replaced"}
    )
    output_dir: Path = field(metadata={"help": "where runs, sweep.csv, its plots and report.md go"})
    evaluation: EvalConfig | None = field(
        metadata={
            "help": "how every run is scored on the benchmarks (None: on none); output_dir is each run's"
        }
    )
    lambdas: list[float] | None = field(
        default=None, metadata={"help": "λ values: 0,0.1,0.2 or [0,0.1,0.2] (default: --embedding_lambda)"}
    )
    seeds: list[int] | None = field(default=None, metadata={"help": "seeds: 1,2,3 (default: --seed)"})
    heldout: int = field(
        default=0,
        metadata={
            "help": "hold N training records out (with their exact and near copies), score every run's loss "
            "on their response tokens, and write report.md: each λ against λ 0 (0: off)"
        },
    )
    heldout_seed: int = field(default=0, metadata={"help": "seed of the held-out draw"})
    margin: float = field(
        default=0.002,
        metadata={
            "help": "equivalence margin in nats per response token: differences within ±margin are 'equivalent'"
        },
    )

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        # the flags give words ('0.1'); none given: the one run's λ and seed
        self.lambdas = _numbers(self.lambdas, float, "lambdas", self.finetune.embedding_lambda)
        self.seeds = _numbers(self.seeds, int, "seeds", self.finetune.seed)
        if not self.lambdas or not self.seeds:
            raise InputError("a sweep needs at least one λ and one seed")
        for lam in self.lambdas:
            replace(self.finetune.sibo, lam=lam)  # SiboConfig checks each λ
        if len(set(self.lambdas)) != len(self.lambdas) or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"λ values and seeds must not repeat: {self.lambdas}, {self.seeds}")
        if self.heldout < 0 or not self.margin > 0:
            raise InputError(f"--heldout must be ≥ 0 and --margin > 0, got {self.heldout}, {self.margin}")
        if self.heldout and 0.0 not in self.lambdas:
            raise InputError(f"--heldout compares every λ with λ 0: add 0 to --lambdas (got {self.lambdas})")
        if not self.heldout and self.evaluation is None:
            raise InputError("a sweep scores its runs on --datasets, on --heldout records, or both: give one")

    def run_dir(self, lam: float, seed: int) -> Path:
        return self.output_dir / f"lam{lam:g}_seed{seed}"

    def eval_config(self, lam: float, seed: int) -> EvalConfig:
        return replace(self.evaluation, output_dir=self.run_dir(lam, seed) / "eval")

    def finetune_config(self, lam: float, seed: int) -> FinetuneConfig:
        """The shared settings with this run's λ, seed and directory (checked again by FinetuneConfig)."""
        adapter_dir = self.run_dir(lam, seed) / "adapter"
        config = replace(self.finetune, embedding_lambda=lam, seed=seed, output_dir=str(adapter_dir))
        if self.heldout:  # the split's training side: one file, mixed already, with our own field names
            train_file = str(self.output_dir / HELDOUT_DIR / "train.json")
            config = replace(config, data_path=train_file, data_columns="", data_ratios="")
        return config


def _numbers(values: list | None, kind: type, flag: str, default) -> list:
    """`values` as numbers of `kind`, or [default] when none are given."""
    if values is None:
        return [default]
    try:
        return [kind(value) for value in values]
    except ValueError:
        given = ",".join(map(str, values))
        raise InputError(f"--{flag} must be a list of {kind.__name__} values, got {given!r}") from None
