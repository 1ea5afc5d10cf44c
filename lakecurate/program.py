"""The ``lakecurate`` program's first module: SIGTERM is taken before the rest loads.

Importing the CLI (Lance, pyarrow, pandas, click) takes about a second; a SIGTERM then ended the
process by the signal (exit -15, no word), where the README promises exit 143 and a line, and
Ctrl-C printed a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


def entry() -> Any:
    """Take SIGTERM and Ctrl-C while the CLI loads (nothing is written yet: exit 143 or 130 with a
    line; Ctrl-C was a KeyboardInterrupt traceback through the imports), then run
    :func:`lakecurate.cli.entry`, which takes them from there; once it is done, ignore them."""
    from lakecurate.errors import stopped_by

    def loading(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)
        print(f"lakecurate: {stopped_by(signum)} while starting; nothing was written", file=sys.stderr)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, loading)
    signal.signal(signal.SIGINT, loading)
    try:
        from lakecurate.cli import entry as run

        return run()
    finally:  # done: what is left is the interpreter's exit (~0.2 s), which a signal ended by the
        for sig in (signal.SIGTERM, signal.SIGINT):  # signal (-15, no word) after the work was committed
            signal.signal(sig, signal.SIG_IGN)
