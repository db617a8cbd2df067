"""`sibo lm-eval`: lm-evaluation-harness's own CLI, with the `sibo` model class registered.

    sibo lm-eval --model sibo --model_args pretrained=B,peft=W --tasks arc_easy --batch_size 8
    sibo lm-eval --model sibo --model_args pretrained=B,peft=W,lam=0.2 --tasks gsm8k --output_path out/
    accelerate launch -m sibo lm-eval --model sibo --model_args pretrained=B,peft=W --tasks hellaswag

Every flag is the harness's (`sibo lm-eval --help`). Use `--model sibo`: it loads any adapter as the
other verbs do and takes `lam=`; the harness's hf class (`peft=W`) runs a SIBO_LORA adapter exactly only
because sibo is imported here, and one written before that type as plain LoRA. Needs `pip install 'sibo[eval]'`.
"""

from __future__ import annotations

import logging
import os
import sys

from sibo.errors import InputError, first_line
from sibo.hub import offline_when_unreachable, unreachable
from sibo.progress import announce

# the harness reads its log level here (its --verbosity is deprecated)
HARNESS_LOG_LEVEL = "LMEVAL_LOG_LEVEL"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    model_args = _model_args(argv)
    if model_args.get("pretrained"):  # before the harness's imports (torch among them)
        announce("for lm-evaluation-harness", base=model_args["pretrained"],
                 adapter=model_args.get("peft") or model_args.get("weights_path"))  # fmt: skip
    try:
        from huggingface_hub import constants
        from lm_eval.__main__ import cli_evaluate

        import sibo.eval.lm_eval_bridge  # noqa: F401  (registers the model class the harness's CLI looks up)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] != "lm_eval":
            raise
        raise InputError("sibo lm-eval needs lm-evaluation-harness: pip install 'sibo[eval]'") from None
    _check_weights(model_args)
    saved_argv, saved_level = sys.argv, os.environ.get(HARNESS_LOG_LEVEL)
    sys.argv = ["sibo lm-eval", *argv]  # the harness's CLI reads sys.argv itself
    if _quiet(argv):
        os.environ[HARNESS_LOG_LEVEL] = "WARNING"
    try:
        with offline_when_unreachable() as offline:
            cli_evaluate()
    except SystemExit as exit_:  # argparse's --help and usage errors
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
    except (OSError, ValueError) as error:  # a task or dataset it cannot load: ConnectionError is an OSError
        hint = f"; {unreachable(constants.ENDPOINT)}" if offline else ""
        raise InputError(f"{first_line(error)}{hint}") from None
    finally:
        sys.argv = saved_argv
        if saved_level is None:
            os.environ.pop(HARNESS_LOG_LEVEL, None)
        else:
            os.environ[HARNESS_LOG_LEVEL] = saved_level
    return 0


def _quiet(argv: list[str]) -> bool:
    """The harness logs at INFO by default: as sibo's other verbs, only its warnings unless asked for more
    (`sibo -v lm-eval`, the harness's own -v/--verbosity, or LMEVAL_LOG_LEVEL)."""
    asked = HARNESS_LOG_LEVEL in os.environ or any(arg in ("-v", "--verbosity") for arg in argv)
    return not asked and not logging.getLogger().isEnabledFor(logging.INFO)


def _model_args(argv: list[str]) -> dict[str, str]:
    """`--model_args pretrained=B,peft=W` (comma- or space-separated, as the harness takes them) as a dict."""
    if "--model_args" not in argv:
        return {}
    words = []
    for word in argv[argv.index("--model_args") + 1 :]:
        if word.startswith("--"):
            break
        words += word.split(",")
    return dict(word.split("=", 1) for word in words if "=" in word)


def _check_weights(model_args: dict[str, str]) -> None:
    """The model's weights files, checked before the harness starts (and logs)."""
    from sibo.checkpoint.weights import ADAPTER_WEIGHTS, BASE_WEIGHTS, check_weights_dir

    for key, patterns in (
        ("pretrained", BASE_WEIGHTS),
        ("peft", ADAPTER_WEIGHTS),
        ("weights_path", ADAPTER_WEIGHTS),
    ):
        if key in model_args:
            check_weights_dir(model_args[key], patterns)
