"""`sibo serve`: an OpenAI-compatible HTTP server for an adapter, an export or a base.

sibo serve [--base_model B] --weights_path W [--host 127.0.0.1] [--port 8000] [--api_key KEY]

Endpoints /v1/models, /v1/chat/completions and /v1/completions (streaming as server-sent events);
concurrent requests with the same decoding settings are decoded in one batch. Ctrl-C or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sibo.checkpoint.config import MODEL_FLAG_SPELLINGS, DecodingMerge, ModelConfig
from sibo.cli._flags import ArgumentParser, add_dataclass_flags, dataclass_values
from sibo.decode.listen import ListenAddress, check_port
from sibo.errors import InputError
from sibo.progress import announce

logger = logging.getLogger(__name__)


@dataclass
class ServeFlags(DecodingMerge, ListenAddress):
    """Where to listen, and how to batch."""

    api_key: str | None = field(
        default=None, metadata={"help": "require this key as a Bearer token (default: no key)"}
    )
    model_name: str | None = field(
        default=None, metadata={"help": "the model's id in the API (default: the adapter's folder name)"}
    )
    max_batch_size: int = field(default=16, metadata={"help": "most requests decoded in one batch"})

    def __post_init__(self) -> None:
        check_port(self.port, required=True)
        if self.max_batch_size < 1:
            raise InputError(f"--max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.api_key is not None and not self.api_key.strip():
            # `--api_key "$KEY"` with KEY unset would serve every route to anyone
            raise InputError("--api_key is empty: give the key, or leave the flag out to serve without one")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sibo serve", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(parser, ModelConfig, rename=MODEL_FLAG_SPELLINGS, skip=("task",), group="model")
    add_dataclass_flags(parser, ServeFlags, defaults={"port": 8000}, group="server")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    flags = ServeFlags(**dataclass_values(args, ServeFlags))
    source = ModelConfig(**dataclass_values(args, ModelConfig, skip=("task",)))
    address = f"http://{flags.host}:{flags.port}/v1"
    announce(f"to serve at {address}", base=source.base_model, adapter=source.weights_path)
    from sibo.checkpoint.load import load_for_decoding
    from sibo.serve.api import build_api
    from sibo.serve.engine import BatchingEngine
    from sibo.serve.runner import serve_until_stopped

    model, tokenizer, template = load_for_decoding(source, merge=flags.merge)
    engine = BatchingEngine(model, tokenizer, template, flags.max_batch_size).start()
    name = flags.model_name or Path(source.weights_path or source.base_model).name or "model"
    print(f"serving {name} ({template.name} template) at {address}", flush=True)
    try:
        stopped_by = serve_until_stopped(build_api(engine, name, flags.api_key), flags.host, flags.port)
    finally:
        engine.close()
    print(f"server stopped ({stopped_by})", flush=True)
    return 0
