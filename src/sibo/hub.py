"""Offline as a first-class state: a hub name fails in seconds, in one line, when the Hub is out of reach.

Without this check huggingface_hub retries each file five times with back-off (about 25 s per file,
a minute per model) before the libraries raise. With HF_HUB_OFFLINE=1 they read the local cache only
and fail fast by themselves, so nothing is probed then.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

# long enough for a slow link, short enough that an offline machine answers at once
PROBE_TIMEOUT_S = 3.0
# how long "unreachable" is believed: a process that loads many models (a study, a sweep) probes once a minute
# at most, and a network blip does not fail every later load
UNREACHABLE_FOR_S = 60.0
_answers: dict[str, tuple[bool, float]] = {}  # endpoint: (reachable, when probed)


def hub_reachable(endpoint: str) -> bool:
    """Whether the Hub answers at all (any HTTP status): one request through huggingface_hub's own
    client, so its proxy settings apply, and no retries. "Yes" is kept; "no" for UNREACHABLE_FOR_S."""
    from huggingface_hub.utils import get_session

    reachable, when = _answers.get(endpoint, (False, -math.inf))
    if reachable or time.monotonic() - when < UNREACHABLE_FOR_S:
        return reachable
    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)
        reachable = True
    except Exception as error:  # noqa: BLE001 - DNS, refused, timeout, TLS: all mean "cannot reach"
        logger.debug("%s unreachable: %s", endpoint, error)
    _answers[endpoint] = (reachable, time.monotonic())
    return reachable


def require_hub(name: str, what: str) -> None:
    """Raise InputError when `name` (not a local path) would have to come from an unreachable Hub."""
    from huggingface_hub import constants

    from sibo.errors import InputError

    if constants.HF_HUB_OFFLINE or hub_reachable(constants.ENDPOINT):
        return
    raise InputError(f"{what} {name} is not a local path and {unreachable(constants.ENDPOINT)}")


def unreachable(endpoint: str) -> str:
    """What to do when the Hub cannot be reached, for the end of a one-line error."""
    return (
        f"{endpoint} cannot be reached: pass a local folder or file, "
        "or set HF_HUB_OFFLINE=1 to load it from the Hugging Face cache"
    )


@contextmanager
def offline_when_unreachable() -> Iterator[bool]:
    """For code that reaches the Hub by itself (the harness's tasks and their datasets): while the Hub
    cannot be reached, huggingface_hub and datasets run offline, so a cached file loads and a missing one
    fails at once instead of after a minute of retries. Yields whether it switched; restores on exit."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable(constants.ENDPOINT):
        yield False
        return
    import datasets.config

    # both read at call time; datasets keeps its own copy of the flag
    switched = [(constants, constants.HF_HUB_OFFLINE), (datasets.config, datasets.config.HF_HUB_OFFLINE)]
    for module, _ in switched:
        module.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        for module, value in switched:
            module.HF_HUB_OFFLINE = value
