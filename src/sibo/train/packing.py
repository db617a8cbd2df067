"""Padding-free batches: pad tokens do no work, and packed sequences never see each other.

`PackingCollator` concatenates a micro-batch into one row (1, ΣT) whose position ids restart at
every sequence (transformers' DataCollatorWithFlattening), and hands the model the sequence
bounds it computed on the host: `cu_seq_lens_q/k` (ΣT boundaries) and `max_length_q/k` (an int).
Two things must then keep the sequences apart:

- the mask: with no attention mask and no KV cache, transformers derives a block-diagonal causal
  mask from the position ids (eager and SDPA attention, most architectures — not OPT or BLOOM);
- better, no mask at all: `PACKED_SDPA`, an attention function registered with transformers'
  AttentionInterface, runs one variable-length kernel over the whole row (CUDA, half precision:
  `torch.nn.attention.varlen`, flash) or SDPA's causal kernel on each sequence (elsewhere), so
  attention costs Σ T_i² instead of (ΣT)², no (ΣT, ΣT) mask is built and no bound is read back
  from the device (a forward pre-hook also keeps transformers from scanning the position ids for
  packed sequences). `packed_attention_kernel` says which one runs, for the log and run_config.json.
  Flash-attention models take the same bounds through transformers' own varlen path.

`enable_packing` picks the best of these that a probe proves exact for the model at hand. SIBO
stays exact under packing: h0 is taken from the first block's input, already in the packed layout.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import weakref

import torch
from transformers import AttentionInterface, DataCollatorWithFlattening
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from sibo.data import IGNORE_INDEX

logger = logging.getLogger(__name__)

PACKED_SDPA = "sibo_packed_sdpa"


class PackingCollator(DataCollatorWithFlattening):
    """Padding-free: a micro-batch becomes one row (1, ΣT) with position ids restarting per sequence.

    The label at each sequence's first position becomes -100, so no token is trained to predict
    the next sequence. The bounds come along (`cu_seq_lens_q/k`, int32; `max_length_q/k`, ints),
    made here on the host so no attention layer has to find them on the device. The model must
    get no attention mask and no KV cache, or the sequences attend to each other: Trainer passes
    use_cache=False and this collator returns no mask.
    """

    def __init__(self) -> None:
        super().__init__(return_position_ids=True, separator_id=IGNORE_INDEX, return_flash_attn_kwargs=True)

    def __call__(self, features, return_tensors=None, separator_id=None):
        features = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        return super().__call__(features, return_tensors, separator_id)


def packed_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention per packed sequence. query/key/value: (1, heads, ΣT, head_dim); returns (1, ΣT, heads, head_dim).

    Anything but an unmasked, uncached packed row (a padding mask, a cache, a batch of rows) goes
    to plain SDPA unchanged. The collator's bounds are used when present; position ids otherwise.
    """
    if attention_mask is not None and attention_mask.numel() == 0:  # `_NO_PADDING`: no mask is needed
        attention_mask = None
    position_ids = kwargs.get("position_ids")
    length = query.shape[2]
    if (
        attention_mask is not None
        or position_ids is None
        or query.shape[0] != 1
        or key.shape[2] != length
        or position_ids.numel() != length
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
    if cu_seq_lens is not None and dropout == 0.0 and _varlen_runs(query, _compute_dtype(query)):
        return _varlen_attention(
            query, key, value, cu_seq_lens, kwargs["max_length_q"], kwargs.get("scaling")
        ), None
    if cu_seq_lens is not None and cu_seq_lens.device.type == "cpu":
        bounds = cu_seq_lens.tolist()  # made by the collator: no read-back
    else:
        bounds = sequence_bounds(position_ids)
    if len(bounds) == 2:  # one sequence
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    pieces = [
        sdpa_attention_forward(module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, **kwargs)[0]
        for s, e in zip(bounds, bounds[1:], strict=False)
    ]
    return torch.cat(pieces, dim=1), None


def packed_attention_kernel(device: torch.device | str, dtype: torch.dtype, head_dim: int) -> str:
    """Which kernel `PACKED_SDPA` runs packed rows with on that device and compute dtype (for the log)."""
    query = torch.empty(0, 1, head_dim, device="meta")
    if torch.device(device).type == "cuda" and _varlen_runs(query, dtype, device_type="cuda"):
        return "varlen flash (torch.nn.attention.varlen, one call per layer)"
    return "SDPA per sequence (bounds from the collator)"


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype SDPA would compute in: autocast's, when autocast is on for the query's device."""
    if torch.is_autocast_enabled(query.device.type):
        return torch.get_autocast_dtype(query.device.type)
    return query.dtype


def _varlen_runs(query: torch.Tensor, dtype: torch.dtype, device_type: str | None = None) -> bool:
    """Whether torch's flash varlen kernel takes this query: CUDA, fp16/bf16, head_dim ≤ 256 and a multiple of 8."""
    head_dim = query.shape[-1]
    return (
        (device_type or query.device.type) == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
        and head_dim <= 256
        and head_dim % 8 == 0
        and _varlen_parameters() is not None
    )


@functools.cache
def _varlen_parameters() -> frozenset[str] | None:
    """The keyword names of torch's `varlen_attn` (they changed between 2.10 and 2.12), or None without it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = frozenset(inspect.signature(varlen_attn).parameters)
    return parameters if {"is_causal", "window_size"} & parameters else None


def _varlen_attention(query, key, value, cu_seq_lens, max_length: int, scaling: float | None) -> torch.Tensor:
    """One causal flash varlen call over the packed row: (1, H, ΣT, D) → (1, ΣT, H, D)."""
    from torch.nn.attention.varlen import varlen_attn

    parameters = _varlen_parameters()
    dtype = _compute_dtype(query)
    # (1, H, ΣT, D) → (ΣT, H, D), in the dtype SDPA would have run in under autocast
    query, key, value = (t[0].transpose(0, 1).to(dtype).contiguous() for t in (query, key, value))
    options = {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}
    if key.shape[1] != query.shape[1]:  # grouped-query attention: kv head i serves query heads i·g … i·g+g-1
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if scaling is not None:
        if "scale" in parameters:
            options["scale"] = scaling
        else:
            query = query * (scaling * query.shape[-1] ** 0.5)  # the kernel's own scale is 1/sqrt(D)
    cu_seq_lens = cu_seq_lens.to(device=query.device, dtype=torch.int32)
    output = varlen_attn(query, key, value, cu_seq_lens, cu_seq_lens, max_length, max_length, **options)
    return output.unsqueeze(0)


_last_bounds: tuple[weakref.ref, int, list[int]] | None = None


def sequence_bounds(position_ids: torch.Tensor) -> list[int]:
    """[0, start of sequence 2, …, ΣT]: where position ids restart, read back once per forward.

    Every layer gets the same position_ids tensor, so its bounds are kept for the next layer (a
    read-back from a GPU stalls it, once per layer otherwise), keyed by the tensor's identity, never
    its address, and by its version counter, which in-place writes (a static input buffer) bump.
    """
    global _last_bounds
    cached = _last_bounds
    if cached is not None and cached[0]() is position_ids and cached[1] == position_ids._version:
        return cached[2]
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
    bounds = sorted({0, *starts, position_ids.numel()})
    _last_bounds = (weakref.ref(position_ids), position_ids._version, bounds)
    return bounds


def packed_sdpa_mask(*args, **kwargs):
    """No mask for an unpadded input (each sequence is causal by itself); SDPA's mask otherwise."""
    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)

# A prepared (4D) mask that masks nothing: transformers passes it to the attention as it is.
_NO_PADDING = torch.zeros(1, 1, 0, 0, dtype=torch.bool)


def _pass_no_padding(module, args, kwargs):
    """Forward pre-hook on the decoder: under PACKED_SDPA, an unpadded, uncached call gets `_NO_PADDING`.

    Given no mask and no cache, transformers scans the position ids for packed sequences (a read-back
    from the device every forward) to build a mask PACKED_SDPA discards. It skips the scan only for a
    prepared 4D mask, a cache, or an implementation without a mask function, and PACKED_SDPA keeps one
    for padded batches: so the hook hands it a prepared, empty mask. Padded or cached calls, other
    implementations and compiled graphs (which read nothing back) keep transformers' own path.
    """
    if (
        "attention_mask" in kwargs
        and kwargs["attention_mask"] is None
        and kwargs.get("cache") is None
        and kwargs.get("past_key_values") is None
        and module.config._attn_implementation == PACKED_SDPA
        and not torch.compiler.is_compiling()
    ):
        kwargs["attention_mask"] = _NO_PADDING
    return args, kwargs


def _use_packed_sdpa(model: torch.nn.Module) -> None:
    """Switch `model` to PACKED_SDPA (raising as set_attn_implementation does) and hook its decoder."""
    model.set_attn_implementation(PACKED_SDPA)
    model.base_model.register_forward_pre_hook(_pass_no_padding, with_kwargs=True)


def enable_packing(model: torch.nn.Module) -> bool:
    """Make `model` train exactly on packed rows, the cheapest way a probe confirms; False if it cannot.

    An SDPA model without sliding-window layers switches to `PACKED_SDPA`; otherwise its own
    attention is kept if it isolates packed sequences through their position ids.
    """
    config = model.config
    implementation = getattr(config, "_attn_implementation", None) or ""
    if implementation.startswith("flash_attention"):
        return True  # transformers' flash-attention path splits packed rows by their position ids
    if (
        implementation == "sdpa"
        and not _has_sliding_window(config)
        and supports_packed_sequences(model, PACKED_SDPA)
    ):
        try:
            _use_packed_sdpa(model)
            return True
        except (ValueError, TypeError, AttributeError) as error:
            logger.info("keeping %s attention (%s)", implementation, error)
    return supports_packed_sequences(model)


def supports_packed_sequences(model: torch.nn.Module, implementation: str | None = None) -> bool:
    """Whether the model (with `implementation`, default its own) keeps packed sequences apart: probed.

    The probe runs on a one-block copy of the architecture (random weights, small vocabulary,
    CPU), so it costs the same for a 70B base as for a tiny one and agrees on every process.
    """
    implementation = implementation or getattr(model.config, "_attn_implementation", None)
    probe = _one_block_copy(model, implementation)
    if probe is None:
        if implementation != getattr(model.config, "_attn_implementation", None):
            return False
        probe = model
    return _keeps_sequences_apart(probe)


def _has_sliding_window(config) -> bool:
    text_config = config.get_text_config()
    layer_types = getattr(text_config, "layer_types", None) or []
    return getattr(text_config, "sliding_window", None) is not None or "sliding_attention" in layer_types


def _one_block_copy(model: torch.nn.Module, implementation: str | None) -> torch.nn.Module | None:
    """The model's architecture with one block and a 512-token vocabulary, or None if it cannot be built."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    text_config = config.get_text_config()
    try:
        text_config.num_hidden_layers = 1
        if isinstance(getattr(text_config, "layer_types", None), list):
            text_config.layer_types = text_config.layer_types[:1]
        text_config.vocab_size = 512
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if isinstance(getattr(text_config, name, None), int) and getattr(text_config, name) >= 512:
                setattr(text_config, name, 0)
        probe = AutoModelForCausalLM.from_config(
            config,
            attn_implementation=implementation,
            trust_remote_code=False,  # never: a model that needs remote code is probed itself
        )
        if implementation == PACKED_SDPA:
            _use_packed_sdpa(probe)  # probe the path training takes, hook included
        return probe
    except Exception as error:  # noqa: BLE001 - any failure: no copy
        logger.info("no one-block copy of %s to probe packing (%s)", type(model).__name__, error)
        return None


@torch.no_grad()
def _keeps_sequences_apart(model: torch.nn.Module) -> bool:
    """Two short sequences run alone and packed into one row must give the same logits."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().weight.shape[0]
        generator = torch.Generator().manual_seed(0)
        first = torch.randint(4, vocab, (1, 6), generator=generator).to(device)
        second = torch.randint(4, vocab, (1, 5), generator=generator).to(device)
        alone = [model(input_ids=ids, use_cache=False).logits.float() for ids in (first, second)]
        batch = PackingCollator()([{"input_ids": ids[0], "labels": ids[0]} for ids in (first, second)])
        del batch["labels"]
        packed = model(**{key: _to(value, device) for key, value in batch.items()}, use_cache=False)
        expected = torch.cat(alone, dim=1)
        # Kernels may sum in another order; a leak between sequences moves logits far more than this.
        relative = 1e-4 if model.get_input_embeddings().weight.dtype == torch.float32 else 3e-2
        tolerance = relative * max(1.0, expected.abs().max().item())
        return bool(torch.allclose(packed.logits.float(), expected, atol=tolerance, rtol=0))
    except Exception as error:  # noqa: BLE001 - any failure means: do not pack
        logger.info("packed sequences not supported (%s: %s)", type(error).__name__, error)
        return False
    finally:
        model.train(was_training)


def _to(value, device: torch.device):
    return value.to(device) if isinstance(value, torch.Tensor) else value
