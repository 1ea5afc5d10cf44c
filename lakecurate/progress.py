"""Progress of long stages: a tqdm bar on a terminal, a plain log line every ~10 s elsewhere.

A bar that redraws itself is noise in a log file, and tqdm turns itself off when stderr is not a
terminal, so ``lakecurate embed ... > log 2>&1`` said nothing for minutes. Off a terminal a stage
now writes lines such as ``embed offline: 1200/5000 img (24%), 35.1 img/s`` to stderr. Who decides:

- a stage's ``progress=`` argument (True/False) when given;
- else ``lakecurate --progress/--no-progress`` (or env ``LAKECURATE_PROGRESS=1/0``), through
  :func:`set_default`;
- else automatic: a bar on a terminal; off one, a line every ``INTERVAL`` seconds once a stage has
  run that long, and a last line when it ends (short runs print nothing, so ``--json`` output stays
  clean). ``--progress`` off a terminal also prints the last line of short runs.

Example::

    bar = progress_bar(total=len(rows), desc="embed offline", unit="img", progress=progress)
    for part in parts:
        bar.update(len(part))
    bar.close()

Imports nothing from lakecurate, so every stage can use it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

ENV = "LAKECURATE_PROGRESS"
INTERVAL = 10.0  # seconds between log lines off a terminal

_default: bool | None = None


def set_default(progress: bool | None) -> None:
    """The choice for every bar whose stage gets ``progress=None``: True, False, or None (automatic)."""
    global _default
    _default = progress


def resolve(progress: bool | None) -> bool | None:
    """True (show), False (hide) or None (automatic) for a stage given ``progress``."""
    if progress is not None:
        return bool(progress)
    if _default is not None:
        return _default
    env = os.environ.get(ENV, "").strip().lower()
    return True if env in ("1", "true", "yes", "on") else False if env in ("0", "false", "no", "off") else None


def progress_bar(total: int | float | None = None, *, desc: str = "", unit: str = "it", initial: int = 0,
                 progress: bool | None = None, file: TextIO | None = None, interval: float | None = None) -> Any:
    """A tqdm bar on a terminal (or in a notebook), else a :class:`LogProgress`; hidden when
    ``progress`` (or the default it falls back to, see the module doc) is False. Both have tqdm's
    ``update``/``close``/``set_postfix`` and work as context managers."""
    show = resolve(progress)
    stream = file if file is not None else sys.stderr
    interval = INTERVAL if interval is None else interval
    if show is False:
        return LogProgress(total, desc=desc, unit=unit, initial=initial, file=stream, interval=interval, disable=True)
    if _isatty(stream) or "ipykernel" in sys.modules:
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file)
    return LogProgress(total, desc=desc, unit=unit, initial=initial, file=stream, interval=interval,
                       final=show is True)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """tqdm's counting API, written as a plain line to ``file`` every ``interval`` seconds and at
    the end: ``desc: n/total unit (pct%), rate unit/s[, postfix]``.

    The last line is written when ``final`` or when a line was already written (a run long enough
    to log). ``disable`` makes every call a no-op.
    """

    def __init__(self, total: int | float | None = None, *, desc: str = "", unit: str = "it", initial: int = 0,
                 file: TextIO | None = None, interval: float = INTERVAL, final: bool = False, disable: bool = False):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file, self.interval, self.final, self.disable = file, interval, final, disable
        self._start_n = initial
        self._t0 = self._last = time.monotonic()
        self._postfix = ""
        self._lines = 0
        self._closed = False

    def update(self, n: int | float = 1) -> None:
        if self.disable:
            return
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._write(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.disable or self._closed:
            return
        self._closed = True
        if self.final or self._lines:
            self._write(time.monotonic(), done=True)

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def line(self, now: float | None = None, *, done: bool = False) -> str:
        """The text of one log line at time ``now``."""
        elapsed = max((now if now is not None else time.monotonic()) - self._t0, 1e-9)
        count = _num(self.n) + (f"/{_num(self.total)}" if self.total else "")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self._start_n) / elapsed
        text = f"{self.desc + ': ' if self.desc else ''}{count} {self.unit}{pct}, {rate:.1f} {self.unit}/s"
        if done:
            text += f", done in {elapsed:.0f}s"
        return text + (f", {self._postfix}" if self._postfix else "")

    def _write(self, now: float, done: bool = False) -> None:
        self._last = now
        self._lines += 1
        stream = self.file if self.file is not None else sys.stderr
        try:
            print(self.line(now, done=done), file=stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stream must not stop the stage
            pass


def _num(x: int | float | None) -> str:
    return str(int(x)) if x is not None and float(x).is_integer() else f"{x}"
