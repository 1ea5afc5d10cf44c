"""Options checked before a stage reads or writes anything: one place, one wording.

A bad value fails in one line naming the option, with the lake untouched (a k of -3 once re-fitted
one concept; a batch size of -4 marked fragments embedded with nothing in them). The CLI's click
ranges say the same earlier; the library checks again for Python callers. Imports no stage.

Each check names its option as the CLI spells it (``--batch-size``, ``-k``) and :func:`spell` words
it for the interface that is speaking (:func:`speaking`): the Python parameter (``batch_size``,
``k``) for the library (a :class:`~lakecurate.Lake` method, the loader, a stage function), the CLI's
flag within a command (the CLI says so), the TOML key for a pipeline step.

>>> whole("--shard-size", 1e4)
10000
>>> target(300), target(0.5)
(300, 0.5)
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import math
import numbers
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lakecurate.errors import LakeError


MOST = 2**53  # the largest count an option takes: past a C integer, a stage failed deep inside (OverflowError)
MOST_WORKERS = 2**16  # processes or threads

INTERFACES = ("cli", "python", "pipeline")
# Which interface is speaking: "python" (the default: the library called from a notebook or a script,
# the loader, a stage function), "cli" (what the CLI sets for its command) or "pipeline" (a step of a
# pipeline file). A context variable: a thread or process the CLI starts speaks Python unless told.
_SPEAKER: contextvars.ContextVar[str] = contextvars.ContextVar("lakecurate_speaker", default="python")
# CLI flags whose Python parameter (and pipeline key) is not the flag's own name with '_' for '-'
_PARAMETERS = {"--set": "overrides", "--budget": "budgets", "--caption-mix-both": "mix_both", "--from-version": "version",
               "--udf": "fn", "--input": "inputs", "--param": "params"}


@contextlib.contextmanager
def speaking(interface: str) -> Iterator[None]:
    """Word options for ``interface`` (one of :data:`INTERFACES`) while the block runs."""
    if interface not in INTERFACES:
        raise ValueError(f"interface {interface!r}: one of {', '.join(INTERFACES)}")
    token = _SPEAKER.set(interface)
    try:
        yield
    finally:
        _SPEAKER.reset(token)


def speaker() -> str:
    """The interface speaking now: "python" unless the CLI or the pipeline runner said otherwise."""
    return _SPEAKER.get()


def spell(option: str) -> str:
    """An option as the interface speaking now names it: a CLI flag as given on the CLI, else its
    Python parameter, which is also a pipeline step's key (the pipeline's message names the step).
    Anything but a flag (``ids``, ``column names``) is left as it is.

    >>> with speaking("cli"):
    ...     spell("--batch-size"), spell("-k")
    ('--batch-size', '-k')
    >>> spell("--batch-size"), spell("-k"), spell("--set"), spell("ids")
    ('batch_size', 'k', 'overrides', 'ids')
    """
    if speaker() == "cli" or not re.fullmatch(r"--?[a-z][a-z0-9-]*", option):
        return option
    return _PARAMETERS.get(option, option.lstrip("-").replace("-", "_"))


def words(cli: str, python: str) -> str:
    """Advice that is a command on the CLI and a call in Python (a pipeline's caller's Python too),
    as the interface speaking says it: ``words("lakecurate tag LAKE NAME --delete", "lake.delete_tag('NAME')")``."""
    return cli if speaker() == "cli" else python


def given(option: str, value: Any = True) -> str:
    """An option given a value, as the interface speaking now writes it (advice such as "pass
    --overwrite"): ``--overwrite`` / ``--engine local`` on the CLI, ``overwrite=True`` /
    ``engine='local'`` in Python and a pipeline (a value the shell would split, quoted for it).

    >>> with speaking("cli"):
    ...     given("--overwrite"), given("--engine", "local"), given("--view", "SQL condition")
    ('--overwrite', '--engine local', "--view 'SQL condition'")
    >>> given("--overwrite"), given("--engine", "local")
    ('overwrite=True', "engine='local'")
    >>> with speaking("pipeline"):
    ...     given("--overwrite"), given("--engine", "local")
    ('overwrite = true', 'engine = "local"')
    """
    if speaker() == "cli":
        return option if value is True else f"{option} {shlex.quote(str(value))}"
    if speaker() == "pipeline":  # a TOML key's line: true, "text"
        return f"{spell(option)} = {json.dumps(value)}"
    return f"{spell(option)}={value!r}"


def whole(option: str, value: Any, low: int = 1, *, none_ok: bool = False, high: int = MOST) -> int | None:
    """``value`` as an int from ``low`` to ``high`` (a whole float such as ``1e4`` is accepted; None
    only with ``none_ok``), else a LakeError naming ``option``."""
    if value is None and none_ok:
        return None
    is_whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not is_whole or value < low:
        raise LakeError(f"invalid {spell(option)} {value!r}: expected an integer >= {low}")
    if value > high:
        raise LakeError(f"invalid {spell(option)} {value!r}: expected an integer up to {high}")
    return int(value)


def is_number(text: str) -> bool:
    """Whether ``text`` names a version number: ASCII digits only (``str.isdigit`` takes '²', which
    ``int`` refuses, and '٣', which it reads as 3).

    >>> is_number("12"), is_number("²"), is_number("٣"), is_number("")
    (True, False, False, False)
    """
    return text.isascii() and text.isdigit()


def flag(option: str, value: Any) -> bool:
    """``value`` as a bool (numpy's too), else a LakeError naming ``option``: ``shuffle="no"``
    is a true string, and shuffled; ``repeats="no"`` wrote every repeat without a word."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise LakeError(f"invalid {spell(option)} {value!r}: expected True or False")
    return bool(value)


def text(option: str, value: Any) -> str:
    """``value`` as non-empty text, else a LakeError naming ``option`` (None or a number reached a
    regex or a path join, a TypeError traceback)."""
    if not isinstance(value, str) or not value:
        raise LakeError(f"invalid {spell(option)} {value!r}: expected text")
    return unicode(option, value)


def unicode(option: str, value: str) -> str:
    """``value`` if it is Unicode text Arrow can store, else a LakeError naming ``option``: a lone
    surrogate (``"\\ud800"`` in JSON; a byte that is not UTF-8 in a command's argument, such as a
    Latin-1 terminal's 'é') was a UnicodeEncodeError traceback from pyarrow.

    >>> unicode("--by", "José")
    'José'
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LakeError(f"invalid {spell(option)} {value!r}: not UTF-8 text (character {exc.start + 1} is "
                        f"{value[exc.start]!r}, a lone surrogate: a byte of another encoding, such as Latin-1?)") from None
    return value


def texts(option: str, value: Any, *, none_ok: bool = False) -> list[str] | None:
    """One text (a list of one, not of its letters) or several (any iterable of text) as a list;
    None only with ``none_ok``; else a LakeError naming ``option``.

    >>> texts("ids", "p1"), texts("ids", ("p1", "p2"))
    (['p1'], ['p1', 'p2'])
    """
    if value is None and none_ok:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Iterable) or isinstance(value, (bytes, Mapping)):
        raise LakeError(f"invalid {spell(option)} {value!r}: expected text or a list of texts")
    out = list(value)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise LakeError(f"invalid {spell(option)}: {bad[0]!r} is not text")
    for v in out:
        unicode(option, v)
    return out


def path(option: str, value: Any) -> "str | os.PathLike[str]":
    """``value`` as a path (text or ``os.PathLike``; an empty one is left to the caller, which says
    what it means there), else a LakeError naming ``option``."""
    if not isinstance(value, (str, os.PathLike)):
        raise LakeError(f"invalid {spell(option)} {value!r}: expected a path")
    return value


def parameters(fn: "Callable[..., Any]", *, skip: int = 1, own: Iterable[str] = ()) -> list[str] | None:
    """The keyword options a stage function takes: its parameters less its first ``skip`` (the lake
    and what the caller passes by position) and ``own`` (what the caller passes itself); None when
    it takes any (``**options``)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is not p.VAR_POSITIONAL and p.name not in set(own)]


def keywords(what: str, given: Iterable[str], allowed: "Iterable[str] | Callable[..., Any]", *,
             skip: int = 1, own: Iterable[str] = ()) -> None:
    """Refuse keyword options ``what`` does not take, in one line that lists those it does (a
    TypeError traceback otherwise, or worse, silently ignored). ``allowed``: the names, or a stage
    function whose parameters they are, less its first ``skip`` (the lake and what the caller
    passes by position) and ``own`` (what the caller passes itself, such as ``produce``). Given as
    a mapping (the call's options), their values are checked too where the function takes True or
    False (:func:`flags`)."""
    if callable(allowed):
        if isinstance(given, Mapping):  # the values too: every True/False option of the stage checked by flag
            flags(given, allowed)
            needed = [p.name for p in inspect.signature(allowed).parameters.values() if p.kind is p.KEYWORD_ONLY
                      and p.default is p.empty and p.name not in given and p.name not in set(own)]
            if needed:  # (a bare TypeError: "missing 1 required keyword-only argument")
                raise LakeError(f"{what} needs {', '.join(n + '=...' for n in needed)} (no default)")
        taken = parameters(allowed, skip=skip, own=own)
        if taken is None:
            return
        allowed = taken
    names = list(allowed)
    unknown = sorted(set(given) - set(names))
    if unknown:
        listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names) or "no options"
        raise LakeError(f"{what} takes {listed}; not {', '.join(unknown)}")


def takes_flag(param: inspect.Parameter) -> bool:
    """Whether a function's parameter takes True or False: annotated ``bool`` (or ``bool | None``),
    or unannotated with a True/False default."""
    note = param.annotation
    if note is inspect.Parameter.empty:
        return isinstance(param.default, bool)
    note = note if isinstance(note, str) else getattr(note, "__name__", str(note))
    return note.replace(" ", "") in ("bool", "bool|None", "None|bool", "Optional[bool]")


def flags(given: Mapping[str, Any], fn: "Callable[..., Any]") -> None:
    """Check with :func:`flag` each option in ``given`` that ``fn`` takes as True or False (None too
    where that is its default), before any work: ``embed(recompute="false")`` re-embedded every row,
    ``curate(dry_run="no")`` did a dry run."""
    for name, param in inspect.signature(fn).parameters.items():
        if name in given and takes_flag(param) and not (given[name] is None and param.default is None):
            flag(name, given[name])


def real(option: str, value: Any, low: float = -math.inf, high: float = math.inf, *, above: bool = False) -> float:
    """``value`` as a finite float from ``low`` (or above it, with ``above``) to ``high`` (numpy's
    numbers too), else a LakeError naming ``option`` and the range: the one wording of every
    number check (a NaN, an infinity, True or the string "0.5" are refused).

    >>> real("--lr", 0.01, 0, 1, above=True)
    0.01
    >>> real("--lr", float("nan"), 0, 1, above=True)
    Traceback (most recent call last):
    lakecurate.errors.LakeError: invalid lr nan: expected a number above 0 and at most 1
    >>> real("--lr", 10**400, 0, 1, above=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    lakecurate.errors.LakeError: invalid lr 1000...: expected a number above 0 and at most 1
    """
    try:  # (an int past a float's range: OverflowError in isfinite)
        fits = not isinstance(value, (bool, str)) and isinstance(value, numbers.Real) and math.isfinite(value) \
            and (value > low if above else value >= low) and value <= high
    except OverflowError:
        fits = False
    if not fits:
        bounds = [f"above {low:g}" if above else f"from {low:g}"] if math.isfinite(low) else []
        bounds += [f"{'to' if bounds and not above else 'at most'} {high:g}"] if math.isfinite(high) else []
        raise LakeError(f"invalid {spell(option)} {value!r}: expected a number {' and '.join(bounds) if above else ' '.join(bounds)}".rstrip())
    return float(value)


def positive(option: str, value: Any) -> float:
    """``value`` as a finite float > 0, else a LakeError naming ``option``."""
    return real(option, value, 0, above=True)


def cosine(option: str, value: Any, *, low: float = -1.0, none_ok: bool = False) -> float | None:
    """``value`` as a finite float in [``low``, 1] (a cosine or a similarity), else a LakeError
    naming ``option``: a Python caller's or a pipeline's 85 (a percent) or NaN linked nothing."""
    if value is None and none_ok:
        return None
    return real(option, value, low, 1)


def target(value: Any, option: str = "--target") -> float | int:
    """A row budget: a fraction of the candidates in (0, 1] (a float; 1.0 = all of them) or a whole
    count of rows (an int, or a whole float above 1 such as ``300.0``, kept as given). ``1.5``, nan, inf and values
    <= 0 are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise LakeError(f"invalid {spell(option)} {value!r}: expected a fraction in (0, 1] or a row count >= 1")
    if isinstance(value, numbers.Integral):
        return int(value)
    if value > 1 and not float(value).is_integer():
        raise LakeError(f"invalid {spell(option)} {value!r}: a fraction must be in (0, 1], a row count a whole number")
    return float(value)  # a whole float above 1 stays a float: rebalance reads it as a count


def writable(what: str, path: "str | os.PathLike[str]", *, beside: str = "") -> None:
    """Refuse, before any work, a local ``path`` that cannot be created: a name in it is longer than
    the file system holds (``beside``: the longest suffix of a file written next to it, such as
    ``.manifest.json``, counts too), one of its parents is a file, or the nearest existing folder is
    not writable (``/proc/x``, a read-only mount)."""
    p = Path(os.path.abspath(os.fspath(path)))
    _names_fit(what, p, beside)
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LakeError(f"{what} '{path}' cannot be written: '{parent}' is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or _read_only(parent):
        raise LakeError(f"{what} '{path}' cannot be written: folder '{parent}' is not writable; choose another path")


def name_max(folder: "str | os.PathLike[str]") -> int:
    """The longest file name the file system of ``folder`` (or its nearest existing parent) holds."""
    p = Path(os.path.abspath(os.fspath(folder)))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(os.pathconf(p, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows): the common limit
        return 255


def _names_fit(what: str, p: Path, beside: str) -> None:
    """A name too long for the file system was an OSError traceback (Errno 36) from the first stat."""
    for k, part in enumerate(p.parts[1:], start=1):
        last = k == len(p.parts) - 1
        longest = len(os.fsencode(part)) + (len(os.fsencode(beside)) if last else 0)
        if longest > 128 and longest > (most := name_max(Path(*p.parts[:k]))):
            shown = part if len(part) <= 60 else f"{part[:40]}...{part[-12:]}"
            extra = f" with '{beside}' after it (a file written beside it)" if last and beside else ""
            raise LakeError(f"{what} '{shown}' cannot be written: its name is {len(os.fsencode(part))} bytes long{extra}, "
                            f"and the file system holds names of at most {most}; choose a shorter name")


def _read_only(folder: Path) -> bool:
    """Whether ``folder`` is on a file system that refuses new files (root passes os.access there)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or folder.resolve().parts[1:2] in (("proc",), ("sys",))
    except (OSError, AttributeError):  # no statvfs (Windows): os.access decided
        return False


_DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


def device(value: Any, option: str = "--device") -> str:
    """A torch device name a model stage may be given: auto, cpu, mps, cuda or cuda:N."""
    if not isinstance(value, str) or not re.fullmatch(_DEVICE, value):
        raise LakeError(f"{spell(option)} must be auto, cpu, cuda, cuda:N or mps, not {value!r}")
    return value


def half_the_memory() -> float | None:
    """Half of this machine's physical memory in bytes (None where the system does not say): the
    default bound of a SQL query's memory (``lakecurate sql``, the browser app's SQL page)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    except (AttributeError, ValueError, OSError):
        return None


def canonical_uri(uri: str) -> str:
    """The one spelling of a lake's location, so that every spelling of one lake shares its
    checkpoints, claims and locks: a local path or ``file://`` URI becomes an absolute path with '~'
    expanded, '.' and '..' folded and no trailing '/'; an object-store URI has its '.' and '..' folded
    and loses its trailing '/' (a doubled '/' inside stays: the store refuses it, in words; '..' above
    the bucket is refused).

    >>> canonical_uri("file:///tmp/x/"), canonical_uri("/tmp/y/../x"), canonical_uri("s3://b/lake/")
    ('/tmp/x', '/tmp/x', 's3://b/lake')
    >>> canonical_uri("s3://b/lake/."), canonical_uri("s3://b/./x/../lake"), canonical_uri("S3://b/lake")
    ('s3://b/lake', 's3://b/lake', 's3://b/lake')
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:  # ("~/x" made a folder named '~' in the working directory)
        return os.path.abspath(os.path.expanduser(uri))
    if scheme.lower() == "file":
        return os.path.abspath(os.path.expanduser(rest))
    # (s3://b/x/. was another lake than s3://b/x: its own claims and checkpoints, both runs computed everything)
    parts: list[str] = []
    for i, part in enumerate(rest.rstrip("/").split("/")):
        if part in (".", "..") and (i == 0 or (part == ".." and len(parts) < 2)):  # (s3://./x was bucket x)
            raise LakeError(f"lake {uri!r}: '{part}' {'is not a bucket' if i == 0 else 'goes above the bucket'}; "
                            "name the lake's folder in its bucket (s3://BUCKET/FOLDER)")
        if part == ".":
            continue
        if part == "..":
            parts.pop()
            continue
        parts.append(part)
    # (the scheme in one case: S3://b/x and s3://b/x kept claims and checkpoints of their own)
    return f"{scheme.lower()}://{'/'.join(parts).rstrip('/')}"


def location(uri: str) -> tuple[str, str]:
    """(scheme, normalized path) of a local path or object-store URI, to compare locations: local
    paths resolved (symlinks, '..'), URIs with '//', '.' and '..' folded (``s3://b/x//y/`` -> /b/x/y)."""
    uri = canonical_uri(uri)
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "file", os.path.realpath(uri)
    return scheme.lower(), posixpath.normpath("/" + rest.strip("/"))


def overlaps(dest: str, lake_uri: str) -> bool:
    """Whether ``dest`` is the lake folder, inside it (its table, a branch under ``tree/``), or holds it.

    >>> overlaps("s3://b/lake//pairs.lance/", "s3://b/lake"), overlaps("s3://b/lake2", "s3://b/lake")
    (True, False)
    """
    (s1, a), (s2, b) = location(dest), location(lake_uri)
    if s1 != s2:
        return False
    common = posixpath.commonpath([a, b]) if s1 != "file" else os.path.commonpath([a, b])
    return common in (a, b)


# Control characters text may carry (NUL, ESC of a terminal colour code, DEL, C1) reach every tool
# that prints it; ASCII white space stays, to become one space where runs of it collapse.
_CONTROL = {c: None for c in (*range(32), *range(127, 160)) if chr(c) not in "\t\n\r\v\f"}
# ... and bidirectional controls (marks, embeddings, overrides, isolates): U+202E stored in a reason
# showed the rest of a --history row, or of a grid cell, reversed ('ok\u202egnp.exe' reads 'okexe.png')
_CONTROL.update({c: None for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})
# ... and invisible characters that make one name look like another ('a\u200bna' was a second reviewer 'ana'):
# soft hyphen, zero width space, word joiner, byte order mark (ZWJ and ZWNJ stay: scripts and emoji use them)
_CONTROL.update({c: None for c in (0x00AD, 0x180E, 0x200B, 0x2060, 0xFEFF)})


def clean_text(text: str) -> str:
    """Text as stored (an endpoint's caption, a reviewer's name or reason): control characters and
    bidirectional controls removed, runs of white space (newlines, tabs) one space.

    >>> clean_text("<b>red</b>\\x00\\x1b[31m car\\n\\tparked")
    '<b>red</b>[31m car parked'
    >>> clean_text("ok\\u202egnp.exe"), clean_text("a\\u200bna\\ufeff")
    ('okgnp.exe', 'ana')
    """
    return " ".join(text.translate(_CONTROL).split())
