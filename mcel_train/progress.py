"""Progress bars that suit where the output goes.

Why: on a terminal a live bar helps; in a file or a pipe (CI, a campaign worker, ``> log``) every
carriage-return update becomes log text (a 3-epoch training wrote about 1,300 of them). One
helper, so every long stage behaves the same: a live bar on a terminal, otherwise at most one
plain line every ``LOG_INTERVAL_S`` seconds.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 10.0


def progress_bar(total: int, desc: str, unit: str = "it", disable: bool = False, file: Any = None,
             **kwargs: Any) -> tqdm:
    """A tqdm bar for ``total`` steps; sparse plain lines when ``file`` is not a terminal."""
    stream = file if file is not None else sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if not tty:
        # one line per update, at most every LOG_INTERVAL_S seconds, no carriage returns
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S * 6)
        kwargs.setdefault("ncols", 100)
        kwargs.setdefault("ascii", True)
        stream = _NewlineStream(stream)
    kwargs.setdefault("dynamic_ncols", tty)
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=stream, **kwargs)


class _NewlineStream:
    """Turns tqdm's carriage-return redraws into separate lines (a log file reads top to bottom)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        text = text.replace("\r", "").replace("\x1b[A", "")
        if text.strip():
            self.stream.write(text.rstrip("\n") + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
