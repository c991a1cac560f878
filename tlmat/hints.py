"""What an error says to help the user on: the known names closest to a misspelt one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str], n: int = 2) -> str:
    """``"; did you mean 'x' or 'y'?"`` with the known names closest to ``name`` (by
    difflib's ratio, at least 0.6), or ``""`` when none is close: appended to an error."""
    close = difflib.get_close_matches(str(name), list(known), n=n, cutoff=0.6)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
