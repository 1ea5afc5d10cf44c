"""The errors a user can fix: the ground floor every other module may import (it imports nothing).

One root: the CLI catches :class:`LakeError` (and so its subclasses) and turns it into one line on
stderr and exit code 1, never a traceback.
"""

from __future__ import annotations


class LakeError(Exception):
    """A problem the user can fix; the message says what and how."""


class IngestError(LakeError):
    """The source as a whole cannot be ingested (not one bad pair: those become flagged rows)."""


class EncoderError(LakeError):
    """The encoder cannot be had as asked; the message lists what to do instead."""
