"""Batched decoding: many prompts per `model.generate` call, as `sibo evaluate` scores a benchmark.

Prompts are batched with left padding and decoded with the KV cache on; with beams, each
prompt's cache is computed once and repeated for its beams (`prefill_once`). `auto_batch_size`
sizes the batches from the GPU's free memory.
"""

from __future__ import annotations

import torch

from sibo.decode.finite import finite_logits
from sibo.decode.settings import CPU_BATCH_SIZE, DecodingSettings, benchmark_decoding, stopping_settings
from sibo.prompts import PromptTemplate

MAX_AUTO_BATCH_SIZE = 512  # past this, padding and the longest response per batch cost more than they save
AUTO_MEMORY_SHARE = 0.8  # of the GPU's free memory; the estimate below leaves out allocator slack


def auto_batch_size(
    model: torch.nn.Module,
    prompt_tokens: int,
    max_new_tokens: int,
    num_beams: int,
    free_bytes: int | None = None,
) -> int:
    """Questions per generate call that fit in `free_bytes` (the GPU's free memory; CPU_BATCH_SIZE off a GPU).

    Per question and beam: its KV cache, 2·layers·kv_heads·head_dim·(prompt + new)·dtype bytes, plus
    beam search's fp32 rows over the vocabulary (logits, log-probs, scores: ~4 copies) and the prefill's
    widest activation. The runner halves the size if a batch still runs out of memory.
    """
    if free_bytes is None:
        device = next(model.parameters()).device
        if device.type != "cuda":
            return CPU_BATCH_SIZE
        free_bytes, _ = torch.cuda.mem_get_info(device)
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    itemsize = model.get_input_embeddings().weight.element_size()
    kv_cache = (
        2 * config.num_hidden_layers * kv_heads * head_dim * (prompt_tokens + max_new_tokens) * itemsize
    )
    vocab_rows = 4 * config.vocab_size * 4
    widest = max(getattr(config, "intermediate_size", None) or 4 * config.hidden_size, config.hidden_size)
    prefill = 4 * prompt_tokens * widest * itemsize
    per_question = num_beams * (kv_cache + vocab_rows + prefill)
    return max(1, min(MAX_AUTO_BATCH_SIZE, int(free_bytes * AUTO_MEMORY_SHARE) // per_question))


def generate_batch(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    settings: DecodingSettings | None = None,
    template: PromptTemplate = PromptTemplate(),
    **overrides,
) -> list[str]:
    """The responses to a batch of prompts written with `template`: left padding, KV cache on, decoded as
    `settings` say (default: benchmark_decoding(), greedy with upstream's beams), each stopped at its EOS or
    Alpaca's next section header (what follows it is another prompt)."""
    settings = settings or benchmark_decoding()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # new tokens follow every prompt directly
    device = next(model.parameters()).device
    # (B, T); a chat prompt holds its own BOS
    inputs = tokenizer(
        prompts, return_tensors="pt", padding=True, add_special_tokens=template.add_special_tokens
    ).to(device)
    kwargs = {
        **settings.generate_kwargs(),
        "use_cache": True,
        "pad_token_id": tokenizer.pad_token_id,
        # each row stops at its EOS or (Alpaca) its next section, then pads
        **stopping_settings(model, tokenizer, template),
        **overrides,
    }
    with torch.inference_mode(), finite_logits(model):
        if (
            settings.num_beams > 1
            and kwargs["use_cache"]
            and "cache_implementation" not in kwargs
            and len(inputs["input_ids"][0]) > 1
        ):
            kwargs["cache"] = prefill_once(model, inputs, settings.num_beams)
        sequences = model.generate(**inputs, **kwargs)  # (B, T + new)
    completions = tokenizer.batch_decode(
        sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    return [template.response(completion) for completion in completions]


def prefill_once(model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_beams: int):
    """The KV cache of each prompt but its last token, computed once and repeated for its beams.

    transformers copies every prompt num_beams times before the first forward; given this cache,
    generate runs only the last prompt token, on every beam. Positions as generate derives them.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (B, T)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    output = model(
        input_ids=ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, :-1],
        use_cache=True,
        logits_to_keep=1,  # the logits are not used: keep (B, 1, V), not (B, T, V)
    )
    cache = output.cache
    cache.batch_repeat_interleave(num_beams)  # (B, …) -> (B·beams, …), each row's beams adjacent
    return cache
