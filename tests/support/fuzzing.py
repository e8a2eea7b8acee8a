"""Bookkeeping for the fuzz harness: every parser call goes through :func:`feed`."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

#: Inputs fed to each parser, by target name (reported at the end of the run).
TRIED: collections.Counter[str] = collections.Counter()
#: Unexpected exceptions: a parser raised something other than its documented error.
CRASHES: list[str] = []


def feed(
    target: str, parse: Callable[..., Any], *args: Any, allowed: tuple[type[BaseException], ...]
) -> tuple[bool, Any]:
    """Call ``parse(*args)``: (True, result), or (False, error) for an ``allowed`` error.

    Anything else is a crash: it is recorded and raised again (so hypothesis
    shrinks it and the test fails).
    """
    TRIED[target] += 1
    try:
        return True, parse(*args)
    except allowed as exc:
        return False, exc
    except BaseException as exc:
        CRASHES.append(f"{target}: {type(exc).__name__}: {exc}"[:300])
        raise
