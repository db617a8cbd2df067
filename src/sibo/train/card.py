"""The adapter's README.md: a Hub model card that says it is a SIBO adapter, how it was made, and what loads it.

PEFT's own card says `lora` and nothing else; a reader (or the Hub) must learn from this one that the branches
read (1-λ)·x + λ·h0, and that PEFT without sibo refuses the folder rather than run it as plain LoRA.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData

from sibo.core.booster import find_boost
from sibo.train.config import FinetuneConfig

CARD_FILE = "README.md"


def _lambda_text(model: torch.nn.Module) -> str:
    adapter = find_boost(model)
    if adapter is None or (adapter.config.lam == 0 and adapter.lambdas is None):
        return "0 (plain PEFT: no SIBO)"
    if adapter.lambdas is None:
        return f"{adapter.config.lam}"
    per_block = torch.sigmoid(adapter.lambdas.logits.detach().float()).tolist()
    return f"learnt, one per block (started at {adapter.config.lam}): " + ", ".join(
        f"{v:.4f}" for v in per_block
    )


def adapter_card(
    model: torch.nn.Module, config: FinetuneConfig, template: str, records: int, metrics: dict
) -> ModelCard:
    """The card of a finished `sibo finetune` run; `metrics` as the recipe's save() collects them."""
    adapter = find_boost(model)
    boosted = len(adapter.layers) if adapter is not None else 0
    peft_config = model.peft_config["default"]
    targets = peft_config.target_modules
    targets = targets if isinstance(targets, str) else ",".join(sorted(targets or ()))
    method = config.adapter_name + (f", rank {config.lora_r}" if config.adapter_name != "bottleneck" else "")
    train, evaluation = metrics.get("train", {}), metrics.get("eval", {})
    data = ModelCardData(
        library_name="peft",
        tags=["sibo", "peft", "lora"],
        base_model=config.base_model,
        pipeline_tag="text-generation",
    )
    lines = [
        "# A SIBO adapter",
        "",
        "SIBO (Wen, Zhang, Fang, ACL 2024, arXiv 2402.11896): every boosted adapter branch reads (1-λ)·x + λ·h0,",
        "h0 being the token representation entering the first transformer block; the base weights read x.",
        "",
        f"- λ: {_lambda_text(model)}",
        f"- SIBO targets: {config.sibo.targets}; boosted modules: {boosted}",
        f"- method: {method}; adapted modules: {targets}",
        f"- base model: {config.base_model}",
        f"- data: {config.data_path}, {records} training records; template: {template}",
        f"- steps: {train.get('global_step')}; final training loss: {train.get('train_loss')}; "
        f"validation loss: {evaluation.get('eval_loss')}",
        "",
        "## Loading it",
        "",
        "```bash",
        f"sibo generate --base_model {config.base_model} --weights_path <this folder> --prompt '…'",
        f"sibo evaluate --base_model {config.base_model} --weights_path <this folder> --dataset math",
        "```",
        "",
        "```python",
        "import sibo  # before peft loads it: teaches PEFT the SIBO_LORA type",
        "from peft import AutoPeftModelForCausalLM",
        "model = AutoPeftModelForCausalLM.from_pretrained('<this folder>')  # exact, as sibo.load_sibo_model",
        "```",
        "",
        "PEFT without sibo refuses this folder (its adapter_config.json says `SIBO_LORA`): run as plain LoRA it",
        "would drop the λ·B·A·(h0 - x) term every boosted branch was trained with.",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_adapter_card(directory: Path, card: ModelCard) -> None:
    """Replace PEFT's blank card beside the adapter."""
    card.save(Path(directory) / CARD_FILE)
