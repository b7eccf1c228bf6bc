"""CSV cells that a spreadsheet will not run as formulas (OWASP "CSV injection").

A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is
read by Excel, LibreOffice or Google Sheets as a formula. dcloop's tables hold text that
came from other people (file names, class folder names, annotator names, NER tokens),
so every CSV dcloop writes for people goes through :func:`neutralize`: such a cell gets
a leading single quote ``'``, which spreadsheets show as "this is text".

Only text is touched: numeric columns, and text cells that are a plain number such as
``-1.5``, are written as they are (a negative number is a number, not a formula).

The rule is reversible, so dcloop's own readers get the original value back
(:func:`restore`, :func:`read_csv`): a cell that is one or more quotes followed by a
trigger character gets one more quote on the way out and loses one on the way in. A
spreadsheet that drops the quote when it saves the file gives the original value too.

Example:
    >>> escape_cell("=HYPERLINK(...)"), escape_cell("-3"), escape_cell("cat")
    ("'=HYPERLINK(...)", '-3', 'cat')
    >>> unescape_cell("'=HYPERLINK(...)")
    '=HYPERLINK(...)'
"""

from __future__ import annotations

import os
import re
from typing import Any

import pandas as pd

#: First characters that make a spreadsheet read a cell as a formula (OWASP).
TRIGGERS: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")

_TRIGGER_CLASS = "[" + re.escape("".join(TRIGGERS)) + "]"
_NEEDS_QUOTE = re.compile(f"'*{_TRIGGER_CLASS}", re.DOTALL)
_QUOTED = re.compile(f"''*{_TRIGGER_CLASS}", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def escape_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` if a spreadsheet would read it as a formula.

    Non-strings and strings that are a plain number are returned unchanged.
    """
    if not isinstance(value, str) or _NUMBER.fullmatch(value):
        return value
    return "'" + value if _NEEDS_QUOTE.match(value) else value


def unescape_cell(value: Any) -> Any:
    """The inverse of :func:`escape_cell`: drop the quote it added."""
    if isinstance(value, str) and _QUOTED.match(value):
        return value[1:]
    return value


def _text_columns(df: pd.DataFrame) -> list:
    return [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]


def _map_frame(df: pd.DataFrame, fn, first: frozenset[str]) -> pd.DataFrame:
    """``fn`` applied to the text cells whose first character is in ``first`` (the others
    cannot change: checking the first character is the fast path for large tables)."""
    out = df.copy()
    for c in _text_columns(out):
        vals = out[c].to_numpy(dtype=object)
        hit = [i for i, v in enumerate(vals) if isinstance(v, str) and v[:1] in first]
        if hit:
            vals = vals.copy()
            vals[hit] = [fn(vals[i]) for i in hit]
            out[c] = pd.Series(vals, index=out.index, dtype=out[c].dtype)
    out.columns = [fn(c) for c in out.columns]
    if out.index.dtype == object:
        out.index = out.index.map(fn)
    return out


_ESCAPE_FIRST = frozenset(TRIGGERS) | {"'"}


def neutralize(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells (and column names) are safe to open in a spreadsheet.

    Numeric, boolean and datetime columns are left as they are.
    """
    return _map_frame(df, escape_cell, _ESCAPE_FIRST)


def restore(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with the quotes :func:`neutralize` added removed again."""
    return _map_frame(df, unescape_cell, frozenset("'"))


def read_csv(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` of a CSV dcloop wrote, text cells as they were before writing."""
    return restore(pd.read_csv(path, **kwargs))
