"""The errors a user can fix: the ground floor every other module may import (it imports nothing).

The CLI turns a :class:`LakeError` into one line on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations


class LakeError(Exception):
    """A problem the user can fix; the message says what and how."""
