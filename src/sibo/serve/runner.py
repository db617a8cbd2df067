"""Run the HTTP server until Ctrl-C or SIGTERM, then return: the caller closes the engine and exits 0.

uvicorn, run from the main thread, re-raises the signal it stopped on once it has shut down (so the
process dies of it); run in a thread of its own it installs no handlers, and ours ask it to stop.
"""

from __future__ import annotations

import signal
import threading

from sibo.errors import InputError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve_until_stopped(app, host: str, port: int) -> str:
    """Serve `app` on host:port; returns the name of the signal that stopped it."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    stopped_by: list[str] = []

    def stop(signum: int, frame) -> None:
        stopped_by.append(signal.Signals(signum).name)
        server.should_exit = True  # finish the requests in flight, then return

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    thread = threading.Thread(target=server.run, name="sibo-serve-http")
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        raise InputError(f"cannot listen on {host}:{port} (in use, or not an address of this machine)")
    return stopped_by[0] if stopped_by else "shutdown"
