"""lm-evaluation-harness with SIBO: the harness's `hf` model class, loading through sibo's one loader.

    sibo lm-eval --model sibo --model_args pretrained=B,peft=W[,lam=0.2] --tasks arc_easy,hellaswag

Why a model class of our own: `--model hf --model_args peft=W` loads a SIBO adapter with
`PeftModel.from_pretrained`, which refuses a SIBO_LORA adapter unless sibo is imported (then it runs it
exactly), and runs one written before SIBO_LORA as plain LoRA, silently without h0; nor can it
override λ. `SiboLM` is the harness's HFLM (batching, device placement, every task type)
with its model built by `sibo.checkpoint.load.load_model`: boosted as saved, λ overridden by `lam`, a
plain PEFT adapter plain unless `lam` is given. The harness finds a model class only once its
module has been imported and has no plugin flag; `sibo lm-eval` imports this module and then
runs the harness's own CLI, so every other flag is the harness's.

Importing this module imports lm_eval (the `eval` extra): keep it out of `import sibo`.
"""

from __future__ import annotations

import logging

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from sibo.checkpoint.config import ModelConfig
from sibo.checkpoint.load import load_for_decoding, load_tokenizer
from sibo.checkpoint.peft_model import sibo_settings
from sibo.errors import InputError

logger = logging.getLogger(__name__)

MODEL_NAME = "sibo"


def model_arg_lambda(lam: object) -> float | None:
    """`lam=` of --model_args as a number (None when not given): the harness passes a value it cannot read
    as a number on as text, and its range is checked where every λ is (sibo.core.config.check_lambda)."""
    if lam is None or lam == "":
        return None
    wrong = InputError(f"lam must be a number, got {lam!r} (--model_args)")
    if isinstance(lam, bool) or not isinstance(lam, int | float | str):  # "lam=true" arrives as True
        raise wrong
    try:
        return float(lam)
    except ValueError:
        raise wrong from None


@register_model(MODEL_NAME)
class SiboLM(HFLM):
    """HFLM whose model is a base model plus a (SIBO) adapter loaded by `sibo.checkpoint.load.load_for_decoding`.

    Model args beyond HFLM's: `peft` (or `weights_path`): the adapter folder; `lam`: SIBO's λ,
    overriding the stored one; `quantization`: 8bit or 4bit.
    """

    def __init__(
        self,
        pretrained: str,
        peft: str | None = None,
        weights_path: str | None = None,
        lam: float | None = None,
        quantization: str | None = None,
        **kwargs,
    ) -> None:
        if not isinstance(pretrained, str):
            raise TypeError("SiboLM loads its own model: pass pretrained=<base model path or name>")
        self.sibo_weights = weights_path or peft
        self.sibo_lam = model_arg_lambda(lam)
        self.sibo_quantization = quantization or None
        if self.sibo_quantization not in (None, "8bit", "4bit"):
            raise InputError(f"quantization must be 8bit or 4bit, got {quantization!r}")
        if not kwargs.get("tokenizer"):
            # the adapter's tokenizer when it ships one, as every sibo verb does
            kwargs["tokenizer"] = load_tokenizer(
                pretrained, self.sibo_weights, bool(kwargs.get("trust_remote_code", False))
            )
        super().__init__(pretrained=pretrained, **kwargs)

    def _create_model(
        self,
        pretrained: str,
        dtype: str | None = "auto",
        trust_remote_code: bool | None = False,
        parallelize: bool | None = False,
        gpus: int | None = None,
        max_memory_per_gpu: int | str | None = None,
        max_cpu_memory: int | str | None = None,
        offload_folder: str | None = "./offload",
        **kwargs,
    ) -> None:
        """Build the model with sibo's loader; HFLM then places it as it places its own."""
        placement = self._get_accelerate_args(
            parallelize=parallelize,
            device_map=kwargs.get("device_map"),
            max_memory_per_gpu=max_memory_per_gpu,
            max_cpu_memory=max_cpu_memory,
            offload_folder=offload_folder,
            gpus=gpus,
        )
        source = ModelConfig(
            base_model=pretrained,
            weights_path=self.sibo_weights,
            lam=self.sibo_lam,
            dtype=dtype or "auto",
            trust_remote_code=bool(trust_remote_code),
            load_8bit=self.sibo_quantization == "8bit",
            load_4bit=self.sibo_quantization == "4bit",
        )
        # the harness formats its own prompts: the template is not ours to apply; unmerged, as HFLM places it
        self._model, _, _ = load_for_decoding(source, merge=False, device_map=placement.get("device_map"))
        settings = sibo_settings(self._model)
        logger.info(
            "lm-eval model: %s + %s (%s)",
            pretrained,
            self.sibo_weights or "no adapter",
            "plain, no SIBO" if settings is None else f"SIBO λ={settings.lam} targets={settings.targets}",
        )
