"""The SIBO study in miniature, offline: LoRA vs LoRA-SIBO (and bottleneck vs Adapter-SIBO).

    sibo demo                      # about 2 minutes on 2 idle CPU cores
    sibo demo --quick              # a smaller setting (the test suite runs it)

A GPU user's study, with only the sizes changed: draw arithmetic word problems with worked
answers (`sibo.study.synthetic`), take a deep narrow base model that already knows such text (12
LLaMA blocks, pretrained by scripts/pretrain_demo_base.py and shipped in the package), fine-tune
one adapter per method through `sibo.train.recipe`, score each on held-out problems through
`sibo.eval.runner`, measure token similarity by depth through `sibo.study.analyze`, and report one row per
method: λ, accuracy, last-layer token similarity. Everything lands in output_dir.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from sibo.checkpoint.config import BaseModelSource, CpuThreads
from sibo.core.config import SiboConfig
from sibo.decode.settings import DecodingSettings, TokenBudget
from sibo.errors import InputError
from sibo.eval.config import EvalConfig
from sibo.eval.runner import RESULT_FILES
from sibo.eval.tasks import Example, Task
from sibo.files import ANALYZE_PLOT_FILE, ANALYZE_RESULTS_FILE, write_json
from sibo.folder_lock import LOCK_FILE
from sibo.output_dir import RUN_MARKER, claim_output_dir, clear_output_dir, hold_output_dir, refuse_replacing
from sibo.study.runs import LORA_TARGETS, train_and_score
from sibo.study.synthetic import generate_splits, write_records
from sibo.train.config import FinetuneConfig

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
DEMO_MARKER = "demo_config.json"  # the demo's settings; before sibo_run.json, what marked a demo's folder
_OWN_ENTRIES = {"data", "adapters", "eval", "analyze", RESULTS_FILE, DEMO_MARKER}
VERB = "demo"
DEMO_ANSWER_TOKENS = 64  # new tokens per test answer: the synthetic answers are short
DEMO_THREADS = 1  # --threads' default here: its help below says why
# the demo's own reading of the shared flags
DEMO_FLAG_HELPS = {
    "base_model": "base model directory (default: the shipped 12-layer demo model)",
    "max_new_tokens": "tokens decoded per answer (greedy)",
    "threads": "torch CPU threads (1 is fastest for the demo's 64-wide model: it is too small to split)",
}


@dataclass(frozen=True)
class Method:
    """One row of the study: an adapter type, with or without SIBO."""

    label: str
    adapter: str  # FinetuneConfig.adapter_name
    boosted: bool


METHODS = {
    "lora": Method("LoRA", "lora", False),
    "lora-sibo": Method("LoRA-SIBO", "lora", True),
    "adapter": Method("Adapter", "bottleneck", False),
    "adapter-sibo": Method("Adapter-SIBO", "bottleneck", True),
}
# LLM-Adapters' LoRA modules for LLaMA; SIBO ("ffn") boosts the one reading the hidden state: up_proj.


# DemoConfig's fields come in parts around the shared base_model, max_new_tokens and threads, so that
# demo_config.json (asdict) keeps its keys in their order: a dataclass puts inherited fields first.
@dataclass
class _DemoOutput:
    output_dir: Path = field(
        default=Path("sibo_demo"), metadata={"help": "where data, adapters and results go"}
    )


@dataclass
class _DemoSizes:
    methods: tuple[str, ...] = field(
        default=tuple(METHODS), metadata={"help": f"the study's rows, of {', '.join(METHODS)}"}
    )
    lam: float = field(default=0.2, metadata={"help": "λ of the SIBO methods"})
    num_train: int = field(default=2000, metadata={"help": "synthetic training problems"})
    num_test: int = field(default=200, metadata={"help": "held-out test problems"})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps per adapter"})
    batch_size: int = field(default=16, metadata={"help": "examples per optimizer step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate of the LoRA methods"})
    adapter_learning_rate: float = field(
        default=6e-3,
        metadata={"help": "peak learning rate of the bottleneck methods (they need a higher one than LoRA)"},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    bottleneck_size: int = field(default=16, metadata={"help": "bottleneck adapter width"})
    seed: int = field(default=0, metadata={"help": "data, initialisation and order seed"})
    eval_batch_size: int = field(default=50, metadata={"help": "test questions per generate call"})


@dataclass
class _DemoAnalysis:
    analyze_n: int = field(default=64, metadata={"help": "test records averaged in the similarity analysis"})


@dataclass
class DemoConfig(CpuThreads, _DemoAnalysis, TokenBudget, _DemoSizes, BaseModelSource, _DemoOutput):
    """The study's sizes; the defaults take about 2 minutes on 2 idle CPU cores. base_model '' or None: the
    shipped demo model; max_new_tokens None: DEMO_ANSWER_TOKENS, decoded greedily; threads None: DEMO_THREADS.
    """

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.base_model = self.base_model or None  # stored as null, as before BaseModelSource
        self.max_new_tokens = DEMO_ANSWER_TOKENS if self.max_new_tokens is None else self.max_new_tokens
        self.threads = DEMO_THREADS if self.threads is None else self.threads
        self.methods = tuple(self.methods)
        unknown = [name for name in self.methods if name not in METHODS]
        if unknown or not self.methods:
            raise InputError(f"unknown demo methods {unknown}; choose from {', '.join(METHODS)}")
        # not a field (demo_config.json keeps its keys): the SIBO methods' settings, checked by SiboConfig
        self.sibo = SiboConfig(lam=self.lam, targets="ffn")
        for name in (
            "num_train",
            "num_test",
            "max_steps",
            "batch_size",
            "eval_batch_size",
            "max_new_tokens",
            "analyze_n",
            "threads",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")


def quick_config(**overrides) -> DemoConfig:
    """The test suite's setting: every stage runs, on little data for few steps."""
    sizes = dict(num_train=128, num_test=16, max_steps=4, batch_size=8, analyze_n=8, max_new_tokens=40)
    return DemoConfig(**{**sizes, **overrides})


def shipped_base_model() -> Path:
    """The pretrained demo base inside the installed package."""
    return Path(str(resources.files("sibo") / "assets" / "demo_base"))


@dataclass
class Row:
    method: str
    lam: float | None  # None for the base model
    accuracy: float
    last_layer_similarity: float
    adapter_dir: str | None


def prepare_output_dir(output_dir: Path, base_model: Path) -> None:
    """Start clean, but only ever delete what an earlier demo wrote, saying what: files the user added
    there (`eval/again`, the demo's suggested command) stay."""
    refuse_replacing(output_dir, VERB, [("--base_model", base_model)])
    claim_output_dir(output_dir, VERB, {}, may_differ=None, legacy=_legacy_demo, writes=demo_writes())
    gone = clear_output_dir(output_dir)  # the claim's marker counts the earlier demo's files as not kept
    if gone:
        tops = sorted({name.split("/")[0] + ("/" if "/" in name else "") for name in gone})
        logger.warning("demo: replacing the earlier demo's %d file(s) in %s (%s)", len(gone), output_dir,
                       ", ".join(tops))  # fmt: skip


def demo_writes() -> list[str]:
    """The names a demo of any methods writes, down to its fine-tunes' and scorings' own files: what a demo
    killed before it ended owns (an earlier demo of other methods included), so a file the user adds anywhere
    in its folder stays theirs."""
    from sibo.train.guards import FINETUNE_FILES  # imports torch

    def under(folder: str, names: Sequence[str]) -> list[str]:
        return [f"{folder}/{name}" for name in (*names, RUN_MARKER, LOCK_FILE)]

    return [
        RESULTS_FILE, DEMO_MARKER, "data/train.json", "data/AddSub/test.json",
        *(name for method in METHODS for name in under(f"adapters/{method}", FINETUNE_FILES)),
        *(name for model in ("base", *METHODS) for name in under(f"eval/{model}", RESULT_FILES)),
        *under("analyze", (ANALYZE_RESULTS_FILE, ANALYZE_PLOT_FILE)),
    ]  # fmt: skip


def _legacy_demo(directory: Path) -> dict | None:
    """A demo folder written before sibo_run.json: its own entries are the demo's, anything else the user's."""
    if not (directory / DEMO_MARKER).is_file():
        return None
    wrote = [path.relative_to(directory).as_posix() for name in _OWN_ENTRIES
             for path in [directory / name, *(directory / name).rglob("*")] if path.is_file()]  # fmt: skip
    return {"verb": VERB, "settings": None, "wrote": wrote}


def run_demo(config: DemoConfig) -> list[Row]:
    """Data → base → fine-tune each method → evaluate → analyze; rows in method order, base first."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        # one demo per folder: a second one stops at once, naming this one's pid
        with hold_output_dir(config.output_dir):
            return run_study(config)
    finally:
        torch.set_num_threads(threads)


def run_study(config: DemoConfig) -> list[Row]:
    """The study itself (run_demo sets and restores torch's threads around it)."""
    from sibo.checkpoint.weights import check_weights_dir

    base_model = Path(config.base_model) if config.base_model else shipped_base_model()
    if not (base_model / "config.json").is_file():
        raise InputError(
            f"no demo base model at {base_model}: run `python scripts/pretrain_demo_base.py --out {base_model}`"
        )
    check_weights_dir(base_model)  # before anything is written to output_dir
    prepare_output_dir(config.output_dir, base_model)
    write_json(config.output_dir / DEMO_MARKER, asdict(config), default=str)

    train, test = generate_splits(config.num_train, config.num_test, seed=config.seed)
    train_path = write_records(train, config.output_dir / "data" / "train.json")
    # in LLM-Adapters' layout, under the name whose scoring rules the demo uses: `sibo evaluate
    # --dataset AddSub --data_dir <output_dir>/data` scores these problems as the table does
    test_path = write_records(test, config.output_dir / "data" / "AddSub" / "test.json")
    logger.info("demo: %d training and %d test problems in %s", len(train), len(test), train_path.parent)

    adapters = {name: config.output_dir / "adapters" / name for name in config.methods}
    accuracy = {"base": score_model(config, str(base_model), test, "base")}
    for name, adapter_dir in adapters.items():
        logger.info("demo: fine-tuning and scoring %s", METHODS[name].label)
        finetune_config = adapter_config(config, METHODS[name], str(base_model), train_path, adapter_dir)
        accuracy[name] = score_model(config, str(base_model), test, name, finetune_config)

    similarity = measure_similarity(config, str(base_model), test_path, list(adapters.values()))
    rows = [Row("base", None, accuracy["base"], similarity["base"][-1], None)]
    for name, adapter_dir in adapters.items():
        lam = config.lam if METHODS[name].boosted else 0.0
        rows.append(Row(METHODS[name].label, lam, accuracy[name], similarity[name][-1], str(adapter_dir)))
    results = {"config": asdict(config), "base_model": str(base_model), "rows": [asdict(row) for row in rows]}
    write_json(config.output_dir / RESULTS_FILE, results, default=str)
    return rows


def adapter_config(
    config: DemoConfig, method: Method, base_model: str, train_path: Path, adapter_dir: Path
) -> FinetuneConfig:
    """One adapter's finetune settings, with the demo's sizes."""
    never = config.max_steps + 1  # no mid-run validation or checkpoints: the final adapter is saved
    return FinetuneConfig(
        base_model=base_model,
        data_path=str(train_path),
        output_dir=str(adapter_dir),
        adapter_name=method.adapter,
        batch_size=config.batch_size,
        micro_batch_size=config.batch_size,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate if method.adapter == "lora" else config.adapter_learning_rate,
        warmup_steps=max(1, config.max_steps // 10),
        cutoff_len=160,
        val_set_size=0,
        eval_step=never,
        save_step=never,
        logging_steps=max(1, config.max_steps // 5),
        seed=config.seed,
        threads=config.threads,
        lora_r=config.lora_r,
        lora_alpha=2 * config.lora_r,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS if method.adapter == "lora" else None,
        bottleneck_size=config.bottleneck_size,
        embedding_lambda=config.sibo.lam if method.boosted else 0.0,
        sibo_targets=config.sibo.targets,
    )


def score_model(
    config: DemoConfig,
    base_model: str,
    test: list[dict[str, str]],
    name: str,
    finetune_config: FinetuneConfig | None = None,
) -> float:
    """Train the adapter (None: the base alone), then its greedy accuracy on the test problems, read
    the way the math benchmarks are read."""
    task = Task("synthetic", "math")  # scored like AddSub: the number after "The answer is"
    examples = [
        Example(index, record["instruction"], "", record["answer"]) for index, record in enumerate(test)
    ]
    eval_config = EvalConfig(
        datasets="AddSub",  # required by EvalConfig; the synthetic examples are passed in directly
        data_dir=config.output_dir / "data",
        output_dir=config.output_dir / "eval" / name,
        decoding=DecodingSettings(
            batch_size=config.eval_batch_size, num_beams=1, max_new_tokens=config.max_new_tokens
        ),
    )
    results = train_and_score(
        base_model, eval_config, [(task, examples)], finetune_config, threads=config.threads
    )
    return results[task.name].accuracy


def measure_similarity(
    config: DemoConfig, base_model: str, test_path: Path, adapter_dirs: list[Path]
) -> dict[str, list[float]]:
    """Per model ('base' and each adapter directory's name), mean token similarity at every depth."""
    from sibo.study.analyze import AnalyzeConfig, analyze

    analysis = analyze(
        AnalyzeConfig(
            base_model=base_model,
            data=test_path,
            weights_paths=[str(path) for path in adapter_dirs],
            output_dir=config.output_dir / "analyze",
            n=config.analyze_n,
            batch_size=16,
            threads=config.threads,
        )
    )
    return analysis["similarity"]


ADAPTER_ROWS_NOTE = (
    "Adapter-SIBO vs Adapter is one seed of a bottleneck recipe whose accuracy swings with its learning "
    "rate (0.07 at 2e-3, 0.39 at 6e-3), on a base that does not over-smooth: not evidence about SIBO "
    "either way (docs/BENCHMARKS.md, The demo)"
)


def next_steps(config: DemoConfig, rows: list[Row], sibo: str = "sibo") -> list[str]:
    """Three commands to run next on what the demo made (`sibo` as the user calls it): answer one of its
    test problems, score the adapter again with the table's decoding, and open the Gradio page."""
    adapters = {row.method: row.adapter_dir for row in rows if row.adapter_dir}
    adapter = adapters.get("LoRA-SIBO") or next(iter(adapters.values()))
    base = config.base_model or str(shipped_base_model())
    data = config.output_dir / "data"
    problem = json.loads((data / "AddSub" / "test.json").read_text())[0]["instruction"]
    again = config.output_dir / "eval" / "again"

    def command(verb: str, *flags: str) -> str:
        return shlex.join([*shlex.split(sibo), verb, "--base_model", base, "--weights_path", adapter, *flags])

    # the table's decoding, so the accuracy it prints is the table's
    evaluation = ["--dataset", "AddSub", "--data_dir", str(data), "--num_beams", "1", "--max_new_tokens",
                  str(config.max_new_tokens), "--batch_size", str(config.eval_batch_size), "--output_dir", str(again)]  # fmt: skip
    return [
        command("generate", "--prompt", problem),
        command("evaluate", *evaluation),
        command("generate", "--ui"),
    ]


def format_rows(rows: list[Row]) -> str:
    """The study's table, as plain text."""
    lines = [f"{'method':<14} {'λ':>5} {'accuracy':>9} {'last-layer sim':>15}"]
    for row in rows:
        lam = "-" if row.lam is None else f"{row.lam:.2f}"
        lines.append(f"{row.method:<14} {lam:>5} {row.accuracy:>9.3f} {row.last_layer_similarity:>15.4f}")
    return "\n".join(lines)
