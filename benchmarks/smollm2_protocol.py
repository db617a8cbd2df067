"""The SmolLM2 study's protocol as code: arms, sizes, the held-out data, and one run, resumable.

docs/BENCHMARKS.md ("SmolLM2 study, protocol of 2026-11-29") says what is measured and why;
benchmarks/smollm2_study.py is the command line. Every run trains on math_train_3k minus a tuning
slice (its last records), with the same data order for every arm of a seed, and is scored on test
questions math_train_3k does not hold (the committed clean id lists): held-out loss at each
evaluation point while it trains, greedy accuracy and token similarity at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from transformers import TrainerCallback

from sibo.decode.settings import DecodingSettings
from sibo.errors import InputError
from sibo.eval.config import EvalConfig
from sibo.eval.contamination import normalise
from sibo.eval.results import read_records
from sibo.eval.runner import load_benchmarks
from sibo.eval.tasks import Example, Task
from sibo.files import TRAIN_METRICS_FILE, read_json, write_atomically
from sibo.study.analyze import layer_similarity
from sibo.study.heldout import HeldOutLossCallback, Reference, encode_references
from sibo.study.runs import LORA_TARGETS, train_adapter, train_and_score
from sibo.train.config import FinetuneConfig

logger = logging.getLogger("smollm2_protocol")

SETS = ("AddSub", "MultiArith", "SingleEq", "gsm8k", "AQuA", "SVAMP", "mawps")
LOSS_SETS = SETS[:-1]  # mawps' test records carry no reference output
LEARNING_RATES = (3e-4, 1e-3, 3e-3)
SIMILARITY_SET = "gsm8k"
SETTINGS_FILE, RESULT_FILE, LOSSES_FILE = "settings.json", "result.json", "losses.json"


@dataclass(frozen=True)
class Arm:
    """One arm: an adapter type with SIBO's settings, and the plain arm it is paired with."""

    adapter: str
    lam: float = 0.0
    targets: str = "ffn"
    learnable: bool = False
    plain: str | None = None


ARMS = {
    "lora": Arm("lora"),
    "lora-sibo0.2": Arm("lora", 0.2, plain="lora"),  # the pre-registered primary comparison
    "lora-sibo0.5": Arm("lora", 0.5, plain="lora"),
    "lora-sibo0.2-all": Arm("lora", 0.2, targets="all", plain="lora"),
    "lora-sibo-learnable": Arm("lora", 0.2, learnable=True, plain="lora"),
    "adapterh": Arm("bottleneck"),
    "adapterh-sibo0.2": Arm("bottleneck", 0.2, plain="adapterh"),
}
PRIMARY = ("lora-sibo0.2", "lora")
TUNED = {"lora": "lora", "bottleneck": "adapterh"}  # adapter type → the plain arm whose lr is tuned


@dataclass(frozen=True)
class Size:
    """How much one run does; the presets below say what each costs."""

    steps: int
    batch_size: int
    warmup_steps: int
    points: tuple[int, ...]  # optimizer steps at which held-out loss is measured (0: before training)
    loss_per_set: int | None  # clean questions per set scored by loss (None: all)
    accuracy_per_set: int | None  # clean questions per set decoded at the end (None: all)
    tune_records: int  # math_train_3k's last N records: the tuning slice, never trained on
    similarity_n: int
    eval_batch_size: int | str = 8
    max_new_tokens: int = 256  # the math sets' budget in LLM-Adapters' code


# cpu: 160 steps × 8 records × ~165 tokens ≈ 211k tokens: ~25 min on 2 idle cores at NOTES.md's ~140
# tokens/s (longer on a busy machine); held-out loss on 20 clean references per set (120, ~19k tokens)
# at 4 points; greedy decoding of 20 clean questions per set (140) at the end.
# gpu: all 762 clean references at 5 points, all 869 clean questions decoded, twice the steps.
SIZES = {
    "quick": Size(4, 2, 0, (0, 2, 4), 2, 1, 4, 2, max_new_tokens=8),
    "cpu": Size(160, 8, 16, (0, 40, 80, 160), 20, 20, 100, 16),
    "gpu": Size(320, 8, 32, (0, 40, 80, 160, 320), None, None, 300, 64, eval_batch_size="auto"),
}


@dataclass(frozen=True)
class StudyRun:
    """One training run: an arm (or a tuning run of a plain arm) at a learning rate and seed."""

    arm: str
    seed: int
    learning_rate: float
    tuning: bool = False

    @property
    def name(self) -> str:
        return f"tune-{self.arm}-lr{self.learning_rate:g}" if self.tuning else f"{self.arm}_seed{self.seed}"


@dataclass
class Study:
    """Everything the runs share: model, data, sizes, where results go, and the code version."""

    base_model: str  # what runs load (a GGUF's dense copy)
    base_name: str  # the model named on the command line: what settings record
    train_file: Path  # math_train_3k.json
    data_dir: Path
    out: Path
    size: Size
    clean: dict[str, list[int]]  # the committed clean id lists: test questions math_train_3k does not hold
    code_version: str = field(default_factory=lambda: code_version())
    allow_other_code: bool = False
    device: str = "cpu"

    def run_dir(self, run: StudyRun) -> Path:
        return self.out / "runs" / run.name

    # ------------------------------------------------------------ data

    def training_files(self) -> tuple[Path, Path]:
        """OUT/data/train.json (math_train_3k but the tuning slice and any record asking a slice question)
        and OUT/data/tune.json (the slice); rewritten only when they differ."""
        records = json.loads(self.train_file.read_text(encoding="utf-8"))
        tune = records[-self.size.tune_records :]
        held = {normalise(r["instruction"], r.get("input") or "") for r in tune}
        train = [
            r
            for r in records[: -self.size.tune_records]
            if normalise(r["instruction"], r.get("input") or "") not in held
        ]
        files = (self.out / "data" / "train.json", self.out / "data" / "tune.json")
        for file, chosen in zip(files, (train, tune), strict=True):
            if not file.is_file() or json.loads(file.read_text()) != chosen:
                write_json(file, chosen)
        return files

    def test_benchmarks(self) -> list[tuple[Task, list[Example]]]:
        """The clean questions of every set, found in math_train_3k itself and checked against the id lists."""
        benchmarks = clean_benchmarks(self.train_file, self.data_dir)
        if clean_ids(benchmarks) != self.clean:
            raise InputError(
                "the committed clean id lists do not match math_train_3k and the test files: regenerate "
                "them with --write_clean_ids"
            )
        return benchmarks

    def test_references(self, benchmarks) -> list[Reference]:
        """The clean questions scored by loss: per set (mawps has no outputs), the first loss_per_set."""
        references = []
        for task, examples in benchmarks:
            if task.name not in LOSS_SETS:
                continue
            records = json.loads((self.data_dir / task.name / "test.json").read_text(encoding="utf-8"))
            chosen = [e for e in examples if records[e.index].get("output", "").strip()]
            for example in chosen[: self.size.loss_per_set]:
                output = records[example.index]["output"]
                references.append(Reference(f"{task.name}/{example.index}", example.instruction, output))
        return references

    def tuning_references(self, tune_file: Path) -> list[Reference]:
        records = json.loads(tune_file.read_text(encoding="utf-8"))
        return [
            Reference(f"tune/{i}", r["instruction"], r["output"], r.get("input") or "")
            for i, r in enumerate(records)
        ]

    # ------------------------------------------------------------ one run

    def finetune_config(self, run: StudyRun, train_file: Path) -> FinetuneConfig:
        arm = ARMS[run.arm]
        lora = arm.adapter == "lora"
        never = 10 * self.size.steps + 1  # no mid-run checkpoints or validation: a killed run is retrained
        return FinetuneConfig(
            base_model=self.base_model,
            data_path=str(train_file),
            output_dir=str(self.run_dir(run) / "adapter"),
            adapter_name=arm.adapter,
            batch_size=self.size.batch_size,
            micro_batch_size=self.size.batch_size,
            max_steps=self.size.steps,
            learning_rate=run.learning_rate,
            warmup_steps=self.size.warmup_steps,
            cutoff_len=256,
            train_on_inputs=True,
            val_set_size=0,
            save_step=never,
            eval_step=never,
            logging_steps=10,
            lora_r=32,
            lora_alpha=64,
            target_modules=LORA_TARGETS if lora else None,
            bottleneck_size=64,
            embedding_lambda=arm.lam,
            sibo_targets=arm.targets,
            learnable_lambda=arm.learnable,
            seed=run.seed,
        )

    def settings(self, run: StudyRun, train_file: Path) -> dict:
        """What makes a run's result, the code version included: checked when a run resumes."""
        config = asdict(self.finetune_config(run, train_file))
        return {
            "run": asdict(run),
            "finetune": {**config, "base_model": "", "output_dir": "", "data_path": ""},
            "base_model": self.base_name,
            "train_file": str(self.train_file),
            "size": asdict(self.size),
            "code_version": self.code_version,
        }

    def check_settings(self, run: StudyRun, settings: dict) -> None:
        """Record a new run's settings; refuse a run made with others (or by other code, unless allowed)."""
        file = self.run_dir(run) / SETTINGS_FILE
        if not file.is_file():
            write_json(file, settings)
            return
        before = json.loads(file.read_text())
        now = json.loads(json.dumps(settings, default=str))
        # A finetune flag added after the run was recorded, at its default, does not change the run.
        defaults = {f.name: f.default for f in fields(FinetuneConfig)}
        now["finetune"] = {
            key: value
            for key, value in now["finetune"].items()
            if key in before.get("finetune", {}) or value != defaults.get(key)
        }
        if self.allow_other_code:
            before, now = {**before, "code_version": None}, {**now, "code_version": None}
        if before != now:
            changed = sorted(key for key in now if before.get(key) != now[key])
            raise InputError(
                f"{self.run_dir(run)} was made with other settings ({', '.join(changed)}; see {file}): "
                + ("pass --allow_other_code to keep it, " if changed == ["code_version"] else "")
                + "or delete it, or choose another --out"
            )

    def run(self, run: StudyRun, train_file: Path, references: list[Reference], accuracy_benchmarks) -> dict:
        """Train with held-out loss at each point, then decode and measure similarity; writes result.json."""
        run_dir = self.run_dir(run)
        self.check_settings(run, self.settings(run, train_file))
        result_file = run_dir / RESULT_FILE
        if result_file.is_file():
            logger.info("skipping finished run %s", run.name)
            return json.loads(result_file.read_text())
        from sibo.checkpoint.load import load_tokenizer

        encoded = encode_references(references, load_tokenizer(self.base_model))
        losses: dict[str, dict] = {}
        order = DataOrder()

        def record(step: int, scores: dict[str, list[float]]) -> None:
            losses[str(step)] = {name: [round(v, 5) for v in values] for name, values in scores.items()}
            write_json(
                run_dir / LOSSES_FILE,
                {"keys": [r.key for r in references], "points": losses, "data_order": order.digest},
            )

        callbacks = [order, HeldOutLossCallback(encoded, list(self.size.points), record)]
        eval_config = EvalConfig(
            list(SETS),
            self.data_dir,
            run_dir / "greedy",
            train_data=self.train_file,
            exclude_seen=True,
            decoding=DecodingSettings(
                batch_size=self.size.eval_batch_size, num_beams=1, max_new_tokens=self.size.max_new_tokens
            ),
        )
        finetune_config = self.finetune_config(run, train_file)
        if accuracy_benchmarks is None:  # a tuning run: loss only
            train_adapter(finetune_config, callbacks)
        else:
            train_and_score(
                self.base_model, eval_config, accuracy_benchmarks, finetune_config, callbacks, self.device
            )
        written = json.loads((run_dir / LOSSES_FILE).read_text())
        metrics = read_json(Path(finetune_config.output_dir) / TRAIN_METRICS_FILE)
        result = {
            "run": asdict(run),
            "code_version": self.code_version,
            **written,
            "train": {key: metrics.get(key) for key in ("train_loss", "train_runtime", "global_step")},
            "accuracy": None
            if accuracy_benchmarks is None
            else self.per_question(eval_config, accuracy_benchmarks),
            "similarity": None
            if accuracy_benchmarks is None
            else self.similarity(finetune_config, references),
        }
        write_json(result_file, result)
        return result

    def per_question(self, eval_config: EvalConfig, benchmarks) -> dict[str, dict]:
        """Each decoded set's question ids and 0/1 scores, in id order (McNemar pairs them)."""
        scores = {}
        for task, _ in benchmarks:
            records = read_records(eval_config.output_dir / f"{task.name}.jsonl")
            ids = sorted(records)
            scores[task.name] = {"ids": ids, "correct": [int(records[i]["correct"]) for i in ids]}
        return scores

    def similarity(self, finetune_config: FinetuneConfig, references: list[Reference]) -> list[float]:
        """Mean pairwise token similarity per layer on clean gsm8k prompts + reference outputs."""
        from sibo.checkpoint.load import load_model
        from sibo.prompts import build_prompt

        texts = [
            build_prompt(r.instruction) + r.output
            for r in references
            if r.key.startswith(f"{SIMILARITY_SET}/")
        ][: self.size.similarity_n]
        model, tokenizer = load_model(self.base_model, finetune_config.output_dir)
        model.to(self.device)
        return [round(v, 6) for v in layer_similarity(model, tokenizer, texts, batch_size=8, max_length=512)]


class DataOrder(TrainerCallback):
    """A fingerprint of every training batch's token ids, in order: arms of one seed must share it."""

    def __init__(self):
        self._hash, self._handle, self.digest = hashlib.sha256(), None, None

    def _see(self, module, args):
        if module.training and args:
            self._hash.update(args[0].detach().cpu().numpy().tobytes())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._handle = model.get_input_embeddings().register_forward_pre_hook(self._see)

    def on_step_end(self, args, state, control, **kwargs):
        self.digest = self._hash.hexdigest()[:16]

    def on_train_end(self, args, state, control, **kwargs):
        self._handle.remove()


def code_version() -> str:
    """The checkout's git commit, with "+dirty" when tracked files differ from it ("unknown" outside git)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def write_json(file: Path, value: object) -> None:
    """Whole or not at all: a killed study never leaves a half result that a rerun would trust."""
    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(file, json.dumps(value, separators=(",", ":"), default=str) + "\n")


def clean_benchmarks(train_file: Path, data_dir: Path) -> list[tuple[Task, list[Example]]]:
    """Each set's test questions that the training file does not hold word for word: the protocol's clean
    rule (case, spacing, punctuation and thousands separators aside). Near copies (issue 34) stay, marked
    `near_copy`: the addendum of 2026-12-07 leaves them out when it scores, by `near_copy_ids`."""
    config = EvalConfig(list(SETS), data_dir, data_dir, train_data=train_file)
    return [
        (task, [e for e in examples if not e.seen or e.near_copy])
        for task, examples in load_benchmarks(config)
    ]


def near_copy_ids(benchmarks) -> dict[str, list[int]]:
    """The clean questions that are a training question with a word or so changed, per set."""
    return {task.name: [e.index for e in examples if e.near_copy] for task, examples in benchmarks}


def clean_ids(benchmarks) -> dict[str, list[int]]:
    return {task.name: [example.index for example in examples] for task, examples in benchmarks}


def accuracy_subset(benchmarks, per_set: int | None):
    """The first per_set clean questions of each set (None: all): what the final decoding scores."""
    return [(task, examples[:per_set] if per_set else examples) for task, examples in benchmarks]
