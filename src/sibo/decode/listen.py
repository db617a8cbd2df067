"""Where a verb that serves listens, declared once: `sibo serve`'s HTTP server and `sibo generate --ui`'s
Gradio page (ServeConfig). Nothing here imports torch or gradio: the CLI builds its flags from this module."""

from __future__ import annotations

from dataclasses import dataclass, field

from sibo.errors import InputError


@dataclass
class ListenAddress:
    """The address and port; each server checks the port it can use."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (loopback: this machine only)"})
    port: int | None = field(default=None, metadata={"help": "port to listen on"})


@dataclass
class ServeConfig(ListenAddress):
    """Where the Gradio page listens (port None: Gradio picks one from 7860 up), and how it queues."""

    share: bool = field(default=False, metadata={"help": "open a public gradio.live link"})
    queue_size: int = field(default=16, metadata={"help": "requests that may wait in the queue"})
    title: str = field(default="SIBO", metadata={"help": "page title (e.g. the adapter's name)"})

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise InputError(f"--port must be in 1..65535, got {self.port}")
        if self.queue_size < 1:
            raise InputError(f"the queue size must be at least 1, got {self.queue_size}")
