"""One study run — fine-tune an adapter, load it on its base, score it — written once for every study.

    results = train_and_score(base_model, eval_config, benchmarks, finetune_config)  # {set: DatasetResult}

`sibo demo`, `sibo sweep` and benchmarks/smollm2_study.py all make runs this way. Each step is
skipped when its output is already there (a finished adapter, a summary holding every set), so a
study stopped part way resumes run by run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sibo.eval.results import DatasetResult, scored_datasets
from sibo.eval.runner import EvalConfig, evaluate
from sibo.eval.tasks import Example, Task
from sibo.files import SUMMARY_FILE, TRAIN_METRICS_FILE, read_json
from sibo.train.config import FinetuneConfig

if TYPE_CHECKING:
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# the finetune recipe writes it last: an adapter folder holding it is finished
FINISHED_ADAPTER = TRAIN_METRICS_FILE


def train_adapter(config: FinetuneConfig, callbacks: list[TrainerCallback] | None = None) -> dict:
    """Fine-tune unless config.output_dir holds a finished adapter; returns its train metrics."""
    from sibo.train.recipe import finetune

    finished = Path(config.output_dir) / FINISHED_ADAPTER
    if finished.is_file():
        logger.info("%s is finished, reusing it", config.output_dir)
    else:
        finetune(config, callbacks)
    return read_json(finished)


def train_and_score(
    base_model: str,
    eval_config: EvalConfig,
    benchmarks: list[tuple[Task, list[Example]]],
    finetune_config: FinetuneConfig | None = None,
    callbacks: list[TrainerCallback] | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, DatasetResult]:
    """Train the adapter (none: the base model alone) and score it on `benchmarks` (on `device`, when
    given, with `threads` CPU threads); {set: result}.

    A summary in eval_config.output_dir that already holds every set is read, not recomputed.
    """
    adapter_dir = None
    if finetune_config is not None:
        train_adapter(finetune_config, callbacks)
        adapter_dir = Path(finetune_config.output_dir)
    names = [task.name for task, _ in benchmarks]
    # a damaged summary counts as none: the sets are scored again
    scored = scored_datasets(eval_config.output_dir / SUMMARY_FILE) or {}
    if set(names) <= set(scored):
        return {name: DatasetResult(scored[name]["n"], scored[name]["correct"]) for name in names}
    from sibo.checkpoint.load import load_model

    model, tokenizer = load_model(base_model, adapter_dir, threads=threads)
    if device is not None:
        model.to(device)
    run_info = {"base_model": base_model, "weights_path": str(adapter_dir)}
    return evaluate(model, tokenizer, eval_config, benchmarks=benchmarks, run_info=run_info)
