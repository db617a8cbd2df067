"""Accuracy during training: at every evaluation, the paper's benchmarks scored as `sibo evaluate` scores them.

    sibo finetune … --val_set_size 120 --eval_datasets AddSub,gsm8k --eval_data_dir dataset/ --eval_limit 100

Each evaluation step runs `sibo.eval.runner.evaluate` (batched decoding, the same answer extraction and
the same contamination check) on the model being trained, writes its answers to
output_dir/accuracy/step-N/, and adds `eval_<Name>_accuracy` to the Trainer's evaluation metrics — so the
log history, TensorBoard or W&B, --metric_for_best_model and early stopping all see it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from sibo.decode.settings import DecodingSettings
from sibo.eval.config import EvalConfig, accuracy_key
from sibo.eval.runner import accelerate_shard, evaluate, load_benchmarks
from sibo.eval.tasks import Example, Task
from sibo.train.packing import PACKED_SDPA

logger = logging.getLogger(__name__)

ACCURACY_DIR = "accuracy"  # in output_dir: step-N/<Name>.jsonl and summary.json, as `sibo evaluate` writes


@dataclass
class AccuracyDuringTraining:
    """Scores `benchmarks` with the model as it is now; `scores(model, step)` → {eval_<Name>_accuracy: …}."""

    config: EvalConfig  # its output_dir is the root; each step scores into step-N under it
    benchmarks: list[tuple[Task, list[Example]]]
    tokenizer: object

    def scores(self, model, step: int) -> dict[str, float]:
        config = dataclasses.replace(self.config, output_dir=Path(self.config.output_dir) / f"step-{step}")
        shard, _ = accelerate_shard()
        base = model.get_base_model()
        was_training, use_cache, attention = (
            model.training,
            base.config.use_cache,
            base.config._attn_implementation,
        )
        model.eval()
        if attention == PACKED_SDPA:  # decode as `sibo evaluate` does: packed rows are a training layout
            base.set_attn_implementation("sdpa")
        try:
            results = evaluate(model, self.tokenizer, config, self.benchmarks, {"step": step}, shard)
        finally:
            model.train(was_training)
            base.config.use_cache = use_cache  # training runs without a KV cache (packed rows)
            if attention == PACKED_SDPA:
                base.set_attn_implementation(PACKED_SDPA)
        return {accuracy_key(name): result.accuracy for name, result in results.items()}


def accuracy_during_training(config, tokenizer, template_name: str) -> AccuracyDuringTraining | None:
    """The scorer for finetune's --eval_datasets (None without them): benchmarks read and checked now,
    before training, with the training data's questions marked as seen (local data only)."""
    if not config.eval_datasets:
        return None
    sources = [part.strip() for part in config.data_path.split(",") if part.strip()]
    local = all(Path(source).exists() for source in sources)
    if not local:
        logger.info("--data_path is not all local files: the benchmarks' seen questions cannot be counted")
    eval_config = EvalConfig(
        datasets=config.eval_datasets,
        data_dir=config.eval_data_dir,
        output_dir=Path(config.output_dir) / ACCURACY_DIR,
        limit=config.eval_limit,
        decoding=DecodingSettings(num_beams=config.eval_num_beams, batch_size=config.micro_batch_size),
        overwrite=True,  # a step scored again (a resumed run) is scored afresh
        train_data=Path(config.data_path) if local else None,
        exclude_seen=config.eval_exclude_seen,
        train_data_columns=config.data_columns,
        template=template_name,
    )
    return AccuracyDuringTraining(eval_config, load_benchmarks(eval_config), tokenizer)


def accuracy_curve(log_history: list[dict]) -> dict[str, list[list[float]]]:
    """{Name: [[step, accuracy], …]} from the Trainer's log history."""
    curve: dict[str, list[list[float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") and key.endswith("_accuracy"):
                curve.setdefault(key.removeprefix("eval_").removesuffix("_accuracy"), []).append(
                    [entry["step"], value]
                )
    return curve
