"""Argument types for the ``dcloop-*`` command-line tools: a bad number is argparse's one
line (``argument --top: '0': expected a value >= 1``, exit 2) before anything heavy loads.
Depends only on :mod:`dcloop.errors`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dcloop.errors import quote


def number(kind: type, minimum: float | None = None, below: float | None = None) -> Callable:
    """An argparse ``type``: ``kind`` (int or float) within ``[minimum, below)``.

    Example:
        >>> number(int, 1)("3")
        3
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{quote(text)!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if (minimum is not None and value < minimum) or (below is not None and value >= below):
            bounds = f">= {minimum}" if below is None else f"in [{minimum}, {below})"
            raise argparse.ArgumentTypeError(f"{quote(text)!r}: expected a value {bounds}")
        return value

    return parse
