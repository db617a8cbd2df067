"""One study run — fine-tune an adapter, load it on its base, score it — written once for every study.

    results = train_and_score(base_model, eval_config, benchmarks, finetune_config)  # {set: DatasetResult}

`sibo demo`, `sibo sweep` and benchmarks/smollm2_study.py all make runs this way. Each step is
skipped when its output is already there (this run's finished adapter, by finetune's own settings check;
a summary of this very scoring: same adapter, decoding, extraction and questions), so a study stopped part
way resumes run by run.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from sibo.checkpoint.config import ModelConfig
from sibo.eval.config import EvalConfig
from sibo.eval.contamination import unseen_only
from sibo.eval.results import DatasetResult, earlier_results
from sibo.eval.runner import evaluate, run_record
from sibo.eval.tasks import Example, Task
from sibo.output_dir import clear_output_dir
from sibo.train.config import FinetuneConfig

if TYPE_CHECKING:
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# the SIBO paper's LoRA targets (LLM-Adapters' q, k, v, up, down), for the demo and the SmolLM2 study
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def train_adapter(config: FinetuneConfig, callbacks: list[TrainerCallback] | None = None) -> dict:
    """Fine-tune; returns what `finetune` does ({"train": metrics, …, "finished": True} when nothing was
    left to train). finetune's own settings check decides about an earlier run in config.output_dir: the
    same run finished is reused, the same run stopped part way resumes, and a run with other settings is
    refused (InputError) rather than silently taken for this one."""
    from sibo.train.recipe import finetune

    return finetune(config, callbacks)


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
    given, with `threads` CPU threads), prompted with the template it was trained with; {set: result}.

    A summary in eval_config.output_dir of this very scoring is read, not recomputed; else `evaluate` resumes
    the folder's answers of the same settings, or replaces those of other settings (an earlier adapter's, or
    other decoding): the folder holds this run's scores, derived from its adapter.
    """
    adapter_dir, trained = None, False
    if finetune_config is not None:
        trained = not train_adapter(finetune_config, callbacks).get("finished", False)
        adapter_dir = str(finetune_config.output_dir)
    if trained and eval_config.output_dir.is_dir():  # answers of an earlier adapter at this path: not resumed
        clear_output_dir(eval_config.output_dir)
    run_info = {"base_model": base_model, "weights_path": adapter_dir}
    scored = unseen_only(benchmarks) if eval_config.exclude_seen else benchmarks
    counts = {task.name: len(examples) for task, examples in scored}
    earlier = None if trained else earlier_results(eval_config, run_record(eval_config, run_info), counts)
    if earlier is not None:
        return earlier
    from sibo.checkpoint.load import load_for_decoding

    source = ModelConfig(base_model=base_model, weights_path=adapter_dir, threads=threads)
    model, tokenizer, template = load_for_decoding(source, merge=False)
    if device is not None:
        model.to(device)
    eval_config = replace(eval_config, template=template.name)
    # never a user's folder: this run's own scores, resumed with these settings and replaced with others
    return evaluate(
        model, tokenizer, eval_config, benchmarks=benchmarks, run_info=run_info, replace_changed=True
    )
