"""Tiny local models and tokenizers, for the demo and the tests: nothing here touches a model hub.

The tokenizer is byte-level BPE (so every string round-trips), optionally trained on a corpus so
that common words become single tokens, or byte-fallback as LLaMA's (rare characters as byte tokens); the
models are random initialisations of real transformers architectures built from their configs, as peft's
and transformers' tests do;
`write_llama_gguf` writes a LLaMA as llama.cpp's converter would, for tests of GGUF bases.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# Per architecture: config fields naming (layers, hidden, heads, ffn width, context length).
_FIELD_NAMES = {
    "gpt2": ("n_layer", "n_embd", "n_head", "n_inner", "n_positions"),
    "gptj": ("n_layer", "n_embd", "n_head", "n_inner", "n_positions"),
    "bloom": ("n_layer", "hidden_size", "n_head", None, None),
    "opt": ("num_hidden_layers", "hidden_size", "num_attention_heads", "ffn_dim", "max_position_embeddings"),
}
_DEFAULT_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)
# ChatML, as SmolLM2-Instruct and Qwen write it (without their default system turn).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer; trained on `corpus` when given, else bytes only (259 + 4 ids)."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size if corpus is not None else 0,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus) if corpus is not None else [""], trainer=trainer)
    return _with_special_tokens(tokenizer)


def build_byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer in LLaMA's and Mistral's SentencePiece style: a text starts with a space, every space is "▁"
    and joins the letter after it ("▁w"), and decoding drops the text's first space; printable ASCII characters
    are tokens, any other character is its UTF-8 bytes as byte tokens (<0xE5><0x8F><0xAB>), so a prefix of them
    decodes to one \ufffd per byte."""
    vocab = {token: number for number, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"<0x{byte:02X}>": len(SPECIAL_TOKENS) + byte for byte in range(256)})
    for token in ["▁", *map(chr, range(33, 127)), *(f"▁{letter}" for letter in string.ascii_letters)]:
        vocab[token] = len(vocab)
    merges = [("▁", letter) for letter in string.ascii_letters]
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return _with_special_tokens(tokenizer)


def _with_special_tokens(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around `tokenizer`, with SPECIAL_TOKENS' roles, padding on the left."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
    )


def add_chat_template(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The tokenizer with ChatML's two turn markers as special tokens (new ids at the end of the vocabulary),
    its chat template, and <|im_end|> as EOS, as an instruct model's tokenizer has them."""
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


def tiny_config(
    model_type: str,
    vocab_size: int,
    num_layers: int = 2,
    hidden_size: int = 32,
    num_heads: int = 4,
    ffn_size: int = 64,
    max_positions: int = 512,
    **overrides,
) -> PretrainedConfig:
    """A small config of a real architecture; `overrides` are passed to the config as they are."""
    names = _FIELD_NAMES.get(model_type, _DEFAULT_FIELDS)
    values = (num_layers, hidden_size, num_heads, ffn_size, max_positions)
    fields = {name: value for name, value in zip(names, values, strict=True) if name is not None}
    if model_type == "gptj":
        fields["rotary_dim"] = hidden_size // num_heads
    if model_type == "opt":
        fields["word_embed_proj_dim"] = hidden_size
    if model_type in ("llama", "mistral", "qwen2"):
        fields["num_key_value_heads"] = num_heads
    return AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **{**fields, **overrides},
    )


def build_tiny_model(
    model_type: str,
    vocab_size: int,
    seed: int = 0,
    num_labels: int | None = None,
    **config_kwargs,
) -> torch.nn.Module:
    """A randomly initialised tiny model: a causal LM, or a sequence classifier when num_labels is set."""
    config = tiny_config(model_type, vocab_size, **config_kwargs)
    torch.manual_seed(seed)
    if num_labels is not None:
        config.num_labels = num_labels
        return AutoModelForSequenceClassification.from_config(config).eval()
    return AutoModelForCausalLM.from_config(config).eval()


def write_llama_gguf(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, path, split_count: int | None = None
) -> None:
    """Write a LLaMA model and its byte-level BPE tokenizer as an F32 GGUF, the way llama.cpp's converter
    lays it out, so tests can load a GGUF base without the 93 MB real one. Needs the gguf package.
    `split_count`: record the file as the first of that many parts, as llama-gguf-split does."""
    import gguf
    import numpy as np

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if split_count is not None:
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, 0)
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, split_count)

    tokens = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get)
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]  # [[left, right], …]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])  # 3: control, 1: normal
    writer.add_token_scores([0.0] * len(tokens))  # transformers derives merges from these when there are none
    if merges:
        writer.add_token_merges([" ".join(pair) for pair in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp writes no output matrix for tied embeddings
        module, kind = name.rsplit(".", 1)
        gguf_name = names.get_name(module)
        weight = tensor.float().numpy()  # (out, in)
        if gguf_name.endswith(("attn_q", "attn_k")):
            # llama.cpp interleaves each head's rotary halves; transformers undoes it on reading
            heads = config.num_attention_heads if gguf_name.endswith("attn_q") else config.num_key_value_heads
            weight = weight.reshape(heads, 2, -1, weight.shape[1]).swapaxes(1, 2).reshape(weight.shape)
        writer.add_tensor(f"{gguf_name}.{kind}", np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_training_state(directory, step: int, skip: tuple[str, ...] = ()) -> None:
    """What Trainer writes beside a checkpoint's adapter at `step`: optimizer, scheduler and RNG states
    (empty, but real torch.save files) and trainer_state.json, written last; `skip` leaves files out."""
    from dataclasses import asdict
    from pathlib import Path

    from transformers.trainer_callback import TrainerState

    directory = Path(directory)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        if name not in skip:
            torch.save({}, directory / name)
    if "trainer_state.json" not in skip:
        (directory / "trainer_state.json").write_text(json.dumps(asdict(TrainerState(global_step=step))))
