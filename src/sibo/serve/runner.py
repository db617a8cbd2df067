"""Run the HTTP server until Ctrl-C or SIGTERM, then return: the caller closes the engine and exits 0.

uvicorn, run from the main thread, re-raises the signal it stopped on once it has shut down (so the
process dies of it); run in a thread of its own it installs no handlers, and ours ask it to stop: the first
signal lets the requests in flight finish, a second (Ctrl-C again) closes them at once, as uvicorn's own does.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from sibo.decode.listen import cannot_listen

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve_until_stopped(app, host: str, port: int) -> str:
    """Serve `app` on host:port; returns the name of the signal that stopped it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    stopped_by: list[str] = []
    previous = {sig: signal.signal(sig, stop_handler(server, stopped_by)) for sig in STOP_SIGNALS}
    thread = threading.Thread(target=server.run, name="sibo-serve-http")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise cannot_listen(host, port)
    return stopped_by[0] if stopped_by else "shutdown"


def stop_handler(server, stopped_by: list[str]) -> Callable[[int, object], None]:
    """The signal handler for `server`: the first signal finishes the requests in flight, then returns; a
    second forces the exit (a client that never finishes cannot keep the server up). Names go to `stopped_by`."""

    def stop(signum: int, frame) -> None:
        stopped_by.append(signal.Signals(signum).name)
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    return stop
