"""The errors a user can fix: the ground floor every other module may import (it imports nothing).

One root: the CLI catches :class:`LakeError` (and so its subclasses) and turns it into one line on
stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import re


class LakeError(Exception):
    """A problem the user can fix; the message says what and how."""


class IngestError(LakeError):
    """The source as a whole cannot be ingested (not one bad pair: those become flagged rows)."""


class EncoderError(LakeError):
    """The encoder cannot be had as asked; the message lists what to do instead."""


class LakeWarning(UserWarning):
    """What a call did that its caller may not expect and can undo (a restore that took review marks
    out of the latest view): a Python warning; the CLI prints it as a note."""


def stopped_by(signum: int) -> str:
    """What the program says stopped it: "terminated (SIGTERM)" or "interrupted (Ctrl-C)"."""
    return "interrupted (Ctrl-C)" if signum == 2 else "terminated (SIGTERM)"  # (2: SIGINT everywhere)


class Terminated(SystemExit):
    """SIGTERM (``kill``, ``timeout``, a scheduler ending a job) raised where the ``lakecurate``
    program is (:func:`lakecurate.cli.entry`), so its ``finally`` blocks run: claims on fragments
    released, reader processes closed, an export's staging folder removed. What it committed
    stays; the same command resumes from there. Never wrapped as a stage's failure."""

    def __init__(self, code: int = 143) -> None:
        super().__init__(code)  # 128 + SIGTERM (130: Ctrl-C, SIGINT), what a shell reports for a process it ended


_GONE = re.compile(r"(\S*?\.lance/(?:_versions/\d+\.manifest|data/[\w-]+\.lance))")


def removed_meanwhile(exc: BaseException) -> str | None:
    """The lake file (a version's manifest, a data file) a Lance "not found" error names, quoted,
    else None: a version that ``cleanup`` removed while a command (or a training loader) read it."""
    text = str(exc)
    if "not found" not in text.lower():
        return None
    m = _GONE.search(text)
    return None if m is None else f"'{m.group(1)}'"


class QueryStopped(LakeError):
    """A query stopped by its caller (the browser app's, past its time)."""
