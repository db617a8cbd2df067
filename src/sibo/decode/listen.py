"""Where a verb that serves listens, declared once: `sibo serve`'s HTTP server and `sibo generate --ui`'s
Gradio page (ServeConfig). Nothing here imports torch or gradio: the CLI builds its flags from this module."""

from __future__ import annotations

from dataclasses import dataclass, field

from sibo.errors import InputError


def check_port(port: int | None, required: bool = False) -> None:
    """InputError unless `port` is one a server can listen on and announce (0 would be any free port, whose
    number no announced address could name); None passes unless `required` (Gradio then picks one)."""
    if (port is None and not required) or (port is not None and 0 < port < 65536):
        return
    raise InputError(f"--port must be in 1..65535, got {port}")


def cannot_listen(host: str, port: int | None) -> InputError:
    """The one line for a server that could not bind its address."""
    where = f"{host}:{port}" if port is not None else f"{host} on any port from 7860 up"
    return InputError(f"cannot listen on {where} (in use, or not an address of this machine)")


@dataclass
class ListenAddress:
    """The address and port; each server checks the port with `check_port` (required or not)."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (loopback: this machine only)"})
    port: int | None = field(default=None, metadata={"help": "port to listen on"})


@dataclass
class ServeConfig(ListenAddress):
    """Where the Gradio page listens (port None: Gradio picks one from 7860 up), and how it queues."""

    share: bool = field(default=False, metadata={"help": "open a public gradio.live link"})
    queue_size: int = field(default=16, metadata={"help": "requests that may wait in the queue"})
    title: str = field(default="SIBO", metadata={"help": "page title (e.g. the adapter's name)"})

    def __post_init__(self) -> None:
        check_port(self.port)
        if self.queue_size < 1:
            raise InputError(f"the queue size must be at least 1, got {self.queue_size}")
