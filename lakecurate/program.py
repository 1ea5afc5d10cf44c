"""The ``lakecurate`` program's first module: SIGTERM is taken before the rest loads.

Importing the CLI (Lance, pyarrow, pandas, click) takes about a second; a SIGTERM then ended the
process by the signal (exit -15, no word), where the README promises exit 143 and a line.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


def entry() -> Any:
    """Take SIGTERM while the CLI loads (nothing is written yet: exit 143 with a line), then run
    :func:`lakecurate.cli.entry`, which takes it from there."""
    def loading(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("lakecurate: terminated (SIGTERM) while starting; nothing was written", file=sys.stderr)
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, loading)
    from lakecurate.cli import entry as run

    return run()
