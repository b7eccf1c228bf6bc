"""Errors in what the user gave dcloop, and how the command line tells them from bugs.

A bad config value or data file is reported by the ``dcloop`` command as one line,
``dcloop: error: <message>`` on stderr, exit status 2 (``HYDRA_FULL_ERROR=1`` shows the
full traceback instead). Anything else keeps its traceback, so genuine bugs stay visible.

What counts as bad input (:func:`user_error_message`):

* :class:`UserInputError`, raised anywhere;
* a ``ValueError`` raised by dcloop's own code: by the house style, a value dcloop checks
  at a boundary raises ``ValueError`` naming the value and what was expected (a
  ``ValueError`` raised inside numpy, torch or scikit-learn is not one of these);
* a missing file, a directory where a file was expected, a permission or disk-full error,
  each of which names its path;
* Hydra's ``InstantiationException`` when a config's ``_target_`` cannot be found or called
  with the given keys, or when the constructor raised one of these errors or a plain
  ``ValueError`` (constructors check their arguments: a config value);
* an OmegaConf interpolation that does not resolve, or a mandatory ``???`` value not given;
* Lightning's ``MisconfigurationException`` (a Trainer option such as ``accelerator=gpu``
  on a machine without one).
"""

from __future__ import annotations

import errno
import re
from types import TracebackType

#: Prefix of the one line the command line prints for bad input.
PREFIX = "dcloop: error: "
#: Exit status for bad input (argparse's convention for usage errors).
EXIT_USAGE = 2

_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
_OS_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


#: The most characters of one value an error line quotes.
QUOTE_CHARS = 200


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` as an error line shows it: its text, cut in the middle past ``limit``
    characters (a 10 MB path or label gives a readable line, not a 10 MB one).

    Example:
        >>> quote("x" * 500, limit=20)
        'xxxxxxxxx...[500 chars]...xxxxxxxxx'
    """
    text = str(value)
    if len(text) <= limit:
        return text
    keep = max(limit // 2 - 1, 1)
    return f"{text[:keep]}...[{len(text)} chars]...{text[-keep:]}"


class UserInputError(ValueError):
    """A value or file the user gave is not what dcloop expects.

    The message names the offending value and what was expected. Being a ``ValueError``,
    code that catches ``ValueError`` keeps working.
    """


def _innermost_module(tb: TracebackType | None) -> str:
    """``__name__`` of the module whose code raised (the last frame of ``tb``)."""
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def _raised_by(exc: BaseException, package: str) -> bool:
    name = _innermost_module(exc.__traceback__)
    return name == package or name.startswith(package + ".")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _instantiation_message(exc: BaseException) -> str | None:
    text = str(exc)
    key = re.search(r"full_key:\s*(\S+)", text)
    where = f" (config key {key.group(1)})" if key else ""
    cause = exc.__cause__
    if cause is None:  # the target is not callable, or similar: Hydra's message is for people
        return _one_line(re.sub(r"full_key:\s*\S+", "", text)) + where
    located = re.match(r"Error locating target '([^']*)'", text)
    if located:  # no such module or attribute
        return f"cannot import _target_ {located.group(1)!r}: {_one_line(str(cause))}{where}"
    inner = user_error_message(cause)
    if inner is not None:
        return inner + where
    if isinstance(cause, TypeError) and _raised_by(cause, "hydra"):
        # the call itself failed: an unknown or missing keyword in the config
        return f"{_one_line(str(cause))}{where}"
    if type(cause) is ValueError:  # a constructor refusing a config value (e.g. Trainer's)
        return f"{_one_line(str(cause))}{where}"
    return None


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for ``exc`` if it is bad user input, else ``None``.

    Args:
        exc: an exception that ended a run.

    Returns:
        The message (no newlines, without the ``dcloop: error:`` prefix), or ``None`` for
        an exception that should keep its traceback.

    Example:
        >>> user_error_message(UserInputError("folds must be >= 2; got 1"))
        'folds must be >= 2; got 1'
        >>> user_error_message(RuntimeError("CUDA error")) is None
        True
    """
    try:
        from hydra.errors import InstantiationException
    except ImportError:  # pragma: no cover - hydra is a dependency of the command line
        InstantiationException = ()  # type: ignore[assignment]  # noqa: N806
    if isinstance(exc, UserInputError):
        return _one_line(str(exc))
    if InstantiationException and isinstance(exc, InstantiationException):
        return _instantiation_message(exc)
    if isinstance(exc, ValueError) and _raised_by(exc, "dcloop"):
        return _one_line(str(exc))
    if isinstance(exc, _PATH_ERRORS) or (
        isinstance(exc, OSError) and exc.errno in _OS_ERRNOS and exc.filename
    ):
        return _one_line(str(exc))
    try:
        from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, (InterpolationResolutionError, MissingMandatoryValue)):
        return _one_line(str(exc))
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, MisconfigurationException):  # a Trainer option (accelerator, devices)
        return _one_line(str(exc))
    return None
