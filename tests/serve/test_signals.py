"""`sibo serve`'s signal handling: the first Ctrl-C lets requests finish, a second forces the exit."""

from __future__ import annotations

import signal
from types import SimpleNamespace

from sibo.serve.runner import stop_handler


def test_a_second_signal_forces_the_server_down():
    server = SimpleNamespace(should_exit=False, force_exit=False)  # uvicorn.Server's two flags
    stopped_by: list[str] = []
    stop = stop_handler(server, stopped_by)
    stop(signal.SIGINT, None)
    assert (server.should_exit, server.force_exit) == (True, False)  # the requests in flight finish
    stop(signal.SIGINT, None)
    assert (server.should_exit, server.force_exit) == (True, True)  # closed at once
    assert stopped_by == ["SIGINT", "SIGINT"]
