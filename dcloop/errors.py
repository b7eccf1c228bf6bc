"""Errors in what the user gave dcloop, and how the command line tells them from bugs.

A bad config value or data file is reported by the ``dcloop`` command as one line,
``dcloop: error: <message>`` on stderr, exit status 2 (``HYDRA_FULL_ERROR=1`` shows the
full traceback instead). Anything else keeps its traceback, so genuine bugs stay visible.

What counts as bad input (:func:`user_error_message`):

* :class:`UserInputError`, raised anywhere;
* a ``ValueError`` raised by dcloop's own code: by the house style, a value dcloop checks
  at a boundary raises ``ValueError`` naming the value and what was expected (a
  ``ValueError`` raised inside numpy, torch or scikit-learn is not one of these);
* a missing file, a directory where a file was expected, a permission error, each of which
  names its path; a full disk, quota, read-only file system or too long a file name, also
  when torch or a writer wrapped it;
* a ``ValueError`` from ``torch.optim`` (the optimiser refusing a ``model.optimizer.*``
  setting such as a negative learning rate);
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
_OS_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG)


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
    """``text`` on one line, each run of more than :data:`QUOTE_CHARS` characters without a
    space cut by :func:`quote` (a 10 MB path gives a readable line)."""
    return " ".join(quote(word) for word in str(text).split())


def _os_error(exc: BaseException) -> OSError | None:
    """The disk-full, read-only, quota or name-too-long ``OSError`` behind ``exc`` (itself,
    or its cause or context: torch and the CSV writers wrap it), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in _OS_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _os_message(exc: BaseException, err: OSError) -> str:
    why = {
        errno.ENOSPC: "no space left on the disk",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.ENAMETOOLONG: "file name too long",
    }[err.errno]
    if exc is not err and str(exc):  # dcloop's writers name the file in their own message
        said = (err.strerror or why).lower() in str(exc).lower()
        what = str(exc) if said else f"{why}: {exc}"
    else:
        what = f"{why}: {err.filename}" if err.filename else f"{why}: {err}"
    hint = (
        "; free some space or choose another hydra.run.dir (the result files written so far "
        "are whole)"
        if err.errno in (errno.ENOSPC, errno.EDQUOT)
        else ""
    )
    return _one_line(f"{what}{hint}")


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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _checkpoint_message(exc: BaseException) -> str | None:
    """A checkpoint file that ``torch.load(weights_only=True)`` refused (objects other than
    tensors and plain data: refused, never unpickled) or could not read (a zip archive that
    ``torch.save`` did not write)."""
    import pickle

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"(Unsupported global: \S+|WeightsUnpickler error: [^\n.]*)", text)
        detail = f" ({_ANSI.sub('', found.group(1))})" if found else ""
        return _one_line(
            "the checkpoint holds objects other than tensors and plain data, so it was not "
            f"loaded{detail}; expected a checkpoint a dcloop run wrote, such as "
            "<run dir>/checkpoints/last.ckpt"
        )
    if isinstance(exc, RuntimeError) and re.search(
        r"PytorchStreamReader|inline_container|zip archive", text
    ):
        return _one_line(
            f"the checkpoint is not a readable torch file ({text.splitlines()[0][:200]}); "
            "expected a checkpoint a dcloop run wrote, such as <run dir>/checkpoints/last.ckpt"
        )
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
    if isinstance(exc, _PATH_ERRORS):
        return _one_line(str(exc))
    os_err = _os_error(exc)
    if os_err is not None:
        return _os_message(exc, os_err)
    checkpoint = _checkpoint_message(exc)
    if checkpoint is not None:
        return checkpoint
    if isinstance(exc, ValueError) and _raised_by(exc, "torch.optim"):
        # the optimiser refusing its settings (a negative lr, betas outside [0, 1), ...)
        return _one_line(f"{exc}: expected a valid model.optimizer.* setting")
    try:
        from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", None) or "a value"
        return _one_line(f"{key} is not set (the config leaves it ???); expected {key}=<value>")
    if isinstance(exc, InterpolationResolutionError):
        return _one_line(re.sub(r"\s*full_key:.*", "", str(exc), flags=re.S))
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, MisconfigurationException):  # a Trainer option (accelerator, devices)
        return _one_line(str(exc))
    return None
