"""The store: a lake's storage and commit primitives (ground floor: it imports no stage).

A lake is a directory (or object-store URI) holding Lance tables, the main one being ``pairs``.

The layout is LanceDB's: ``LAKE/pairs.lance``. So ``lancedb.connect(LAKE).open_table("pairs")`` and
``lance.dataset(LAKE + "/pairs.lance")`` open the same table this class writes, unchanged.

:class:`Store` opens versions, tags, branches, runs read-only SQL, appends rows and retries
commits; every stage works on a ``Store``. :class:`lakecurate.lake.Lake` is the facade on top of it
that adds one method per stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import numbers
import os
import random
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import lance
import lance.fragment
import numpy as np
import pandas as pd
import pyarrow as pa
from lance.commit import CommitConflictError

from lakecurate.errors import LakeError, QueryStopped
from lakecurate.options import canonical_uri, flag, is_number, keywords, texts, whole, words
from lakecurate.schema import EVAL_TABLE, EVIDENCE_TABLE, NODE_KEY, PAIRS_SCHEMA, PROVENANCE_KEY, TABLE, evidence_pin, is_blob

T = TypeVar("T")
log = logging.getLogger("lakecurate")

# Rows per data file. Fragments of 20-50k rows keep per-fragment work (embedding, features) in
# useful units without creating thousands of small files.
ROWS_PER_FILE = 32_768


def _join(uri: str, name: str) -> str:
    if "://" in uri:
        return uri.rstrip("/") + "/" + name
    return os.path.join(uri, name)


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is a commit that lost a race and can be redone at a fresh version.

    Lance raises ``CommitConflictError`` for most operations, but a losing compaction
    (``Rewrite``) raises a plain ``OSError`` whose message says "Retryable commit conflict".
    """
    msg = str(exc).lower()
    return isinstance(exc, CommitConflictError) or (isinstance(exc, OSError) and (
        "retryable commit conflict" in msg
        # two metadata updates at once (lakecurate's record of a column set): the loser reads again
        or ("updateconfig transaction is incompatible with concurrent transaction updateconfig" in msg)))


def checkpoint_root(uri: str, branch: str | None) -> Path:
    """Where the stages of a lake's branch (None: main) keep their batch checkpoints: in the lake
    folder, or for an object store in the local cache (see lakecurate.columns.Checkpoint)."""
    uri = canonical_uri(uri)  # (file:///x/ and ../x are one lake: one folder of claims and checkpoints)
    if "://" in uri:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lakecurate" / "checkpoints"
        base = base / hashlib.sha256(uri.encode()).hexdigest()[:16]
    else:
        base = Path(uri) / "_lakecurate" / "checkpoints"
    return base / f"branch-{branch}" if branch else base


def retry_on_conflict(fn: Callable[[], T], *, attempts: int = 12, base_delay: float = 0.05,
                      max_delay: float = 2.0) -> T:
    """Run ``fn`` (one Lance commit) again after a commit conflict, with jittered exponential backoff.

    ``fn`` must be safe to repeat: it should re-open the dataset at its latest version and commit
    work that is already computed, so a retry costs a manifest read, not a recomputation. The
    delays (50 ms doubling, at most 2 s, 12 tries, ~12 s in all) outlast a table with a handful of
    writers committing every fragment.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except OSError as exc:
            if not is_conflict(exc):
                raise
            if attempt == attempts - 1:  # (the CLI says so in one line: conflicts_exhausted)
                exc.lakecurate_conflicts = attempts  # type: ignore[attr-defined]
                raise
            CONFLICTS_RETRIED[0] += 1
            log.debug("commit conflict, retry %d: %s", attempt + 1, str(exc).splitlines()[0][:200])
            time.sleep(min(max_delay, base_delay * (2**attempt)) * (0.5 + random.random()))
    raise AssertionError("unreachable")


# Commits redone after a conflict in this process: the CLI reads it before and after a command and
# reports the difference (a line on stderr, ``conflicts_retried`` in --json); tests and benchmarks too.
CONFLICTS_RETRIED = [0]


def conflicts_exhausted(exc: BaseException) -> int | None:
    """How many tries of one commit conflicted, where ``exc`` is the conflict that
    :func:`retry_on_conflict` gave up on (None for any other error)."""
    return getattr(exc, "lakecurate_conflicts", None) if isinstance(exc, OSError) else None

# Below this many rows a flat vector scan is fast (a few ms per query); above it, embed builds an index.
INDEX_MIN_ROWS = 100_000

# A fragment id that no version ever has (ids count up from 0); see Lake.append(guard=...).
GUARD_FRAGMENT_ID = 2**32 - 1


def _deletions(ds: lance.LanceDataset, where: str) -> tuple[list[Any], list[int]]:
    """(fragments with the rows matching ``where`` deleted, ids of fragments left empty) at ``ds``,
    ready for one Update commit. Deletion files are written now; a commit that loses a race
    leaves them unreferenced (``cleanup`` removes them)."""
    addrs = ds.to_table(columns=["id"], filter=where, with_row_address=True).column("_rowaddr").to_pylist()
    offsets: dict[int, list[int]] = {}
    for a in addrs:
        offsets.setdefault(a >> 32, []).append(a & 0xFFFFFFFF)
    updated, removed = [], []
    for fid, offs in sorted(offsets.items()):
        frag = ds.get_fragment(fid).delete_rows(offs)
        if frag is None:
            removed.append(fid)
        else:
            updated.append(frag)
    return updated, removed


# A tag's or branch's name: what Lance takes as a ref (git's rules: no "..", no ending in "." or
# ".lock": such names passed here and failed in Lance as "OSError: Ref is invalid", a traceback).
# A lake opens at its latest version: what is said to a caller who asked for another
PAST_VERSIONS = ("a lake opens at its latest version: read a past one (a number or tag) with lake.dataset(V), "
                 "lake.sql(QUERY, version=V) or lake.status(V), or go back to it with lake.restore(V)")


def _opening(what: str, kw: Mapping[str, Any]) -> None:
    """Refuse what opening a lake does not take in one line (a TypeError traceback), a version
    with the ways to read one."""
    if "version" in kw:
        raise LakeError(f"{what} takes no version; {PAST_VERSIONS}")
    keywords(what, kw, ("storage_options", "branch"))


BRANCH_RE = re.compile(r"^(?!.*\.\.)(?!.*\.$)(?!.*\.lock$)[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NAME_RULE = "up to 100 letters, digits, '.', '_' and '-' (no '..', not ending in '.' or '.lock')"


# pandas types of Arrow types it would not hold exactly: a uint64 hash with a null in its column became
# float64 (15173274023371857856 read back as ...7920: Hamming distances from it were wrong)
_EXACT = {pa.uint64(): pd.UInt64Dtype()}


def frame(tbl: pa.Table) -> pd.DataFrame:
    """``tbl`` as pandas with uint64 kept exact: a uint64 column as pandas' nullable UInt64
    (``_EXACT``), a list of uint64 (``copy_hashes``) as uint64 numpy arrays even where a row is null
    (pyarrow made the whole column float64 then, the hashes rounded). What every frame of the
    lake's rows here goes through."""
    df = tbl.to_pandas(types_mapper=_EXACT.get)
    for i, field in enumerate(tbl.schema):
        t = field.type
        if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
                and t.value_type == pa.uint64() and tbl.column(i).null_count:
            values = [None if v is None else np.array(v, dtype=np.uint64) for v in tbl.column(i).to_pylist()]
            df.isetitem(i, pd.Series(values, index=df.index, dtype=object))  # (by position: names may repeat)
    return df


def is_lance_table(path: str) -> bool:
    """Whether ``path`` is the folder of a Lance table (``export --format lance`` writes one): its
    ``_versions`` folder holds the table's manifests. Walked as an ingest source, its own files were
    pairs."""
    try:
        return any(n.endswith(".manifest") for n in os.listdir(os.path.join(path, "_versions")))
    except (OSError, ValueError):
        return False


def is_lake_folder(path: str) -> bool:
    """Whether ``path`` is a lakecurate lake's folder: its table ``pairs.lance`` is there."""
    return is_lance_table(os.path.join(path, f"{TABLE}.lance"))


def _memory_growth() -> Callable[[], float]:
    """A function giving how many bytes this process's resident memory grew by since this call (0
    where /proc/self/statm cannot be read: not Linux)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss() -> float:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            return 0.0

    base = rss()
    return lambda: max(0.0, rss() - base) if base else 0.0


class Store:
    """A Lance data lake of image-text pairs: storage only. Use :meth:`create` or :meth:`open`."""

    def __init__(self, uri: str | os.PathLike, storage_options: dict[str, str] | None = None, *,
                 branch: str | None = None):
        uri = os.fspath(uri) if isinstance(uri, (str, os.PathLike)) else uri  # (None, 5: a TypeError traceback)
        if not isinstance(uri, str) or not uri.strip():  # "" was the working directory, made a lake
            what = "empty" if isinstance(uri, str) else "not a path"
            raise LakeError(f"the lake path is {what} ({uri!r}); give a folder (or object-store URI) for the lake")
        # one spelling of the lake (file:// a local path, no trailing '/', '..' folded): claims, checkpoints and
        # locks are found by it, so a run given file:///x resumes one given ../x, and the two share fragments
        self.uri = canonical_uri(uri)
        if storage_options is not None and (not isinstance(storage_options, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in storage_options.items())):
            raise LakeError(f"invalid storage_options {storage_options!r}: expected a dict of text to text "
                            "(such as {'aws_region': 'us-east-1'}) or None"  # (a Lance TypeError at first use)
                            + (f"; {PAST_VERSIONS}" if isinstance(storage_options, (str, int)) else ""))
        self.storage_options = storage_options
        self.main_uri = _join(self.uri, f"{TABLE}.lance")
        if branch is not None and (not isinstance(branch, str) or not BRANCH_RE.match(branch)):
            raise LakeError(f"branch name {branch!r} is not valid; use {NAME_RULE}")
        self.branch = branch if branch not in (None, "main") else None
        # A Lance branch is a table of its own under tree/<name> that shares main's data files, so
        # every stage works on it unchanged through this one path.
        self.table_uri = self._branch_uri(self.branch)

    @property
    def shell(self) -> str:
        """The lake's path as a command line takes it (quoted where it has spaces or quotes): what
        the hints in messages ("run: lakecurate embed ...") print, so that they can be pasted."""
        return shlex.quote(self.uri)

    @property
    def command(self) -> str:
        """What a hint's command starts with: on a branch, ``lakecurate --branch NAME`` (a pasted
        hint without it runs on main)."""
        return f"lakecurate --branch {shlex.quote(self.branch)}" if self.branch else "lakecurate"

    def _branch_uri(self, branch: str | None) -> str:
        return self.main_uri if branch is None else _join(self.main_uri, f"tree/{branch}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}{', branch=' + repr(self.branch) if self.branch else ''})"

    # ----------------------------------------------------------------- open / create
    @classmethod
    def create(cls, uri: str | os.PathLike, *, exist_ok: bool = True, **kw: Any) -> "Store":
        """Create an empty lake, or with ``exist_ok`` (the default) open the lake already there,
        unchanged: what ``lakecurate ingest`` into a new or existing lake does, and a script run
        twice. ``exist_ok=False`` refuses an existing lake (a LakeError): a new lake, or nothing.

        Example::

            lake = Lake.create("./lake")                  # new, or the one there
            Lake.create("./lake", exist_ok=False)         # LakeError: lake '.../lake' already exists
        """
        exist_ok = flag("exist_ok", exist_ok)  # ("no" is true)
        _opening("Lake.create", kw)
        lake = cls(uri, **kw)
        if lake.branch is not None:
            if not exist_ok:  # (it opened the branch: nothing new, and nothing said so)
                raise LakeError(f"Lake.create makes a new lake, not branch '{lake.branch}' of one; make a branch with "
                                f"lake.create_branch('{lake.branch}')")
            return cls.open(uri, **kw)  # branches are made with create_branch, never implicitly
        if lake.exists():
            if not exist_ok:
                raise LakeError(f"lake '{lake.uri}' already exists; open it with Lake.open")
            return lake
        if (outer := lake._enclosing_lake()) is not None:  # (`ingest LAKE/pairs.lance SRC` made a lake in its table)
            raise LakeError(f"'{lake.uri}' is inside the table of the lake '{outer}'; a lake is not made there: give "
                            f"the lake ('{outer}') or another folder")
        with lake._creating():
            if not lake.exists():  # (another process may have made it while this one waited)
                lance.write_dataset(PAIRS_SCHEMA.empty_table(), lake.table_uri, schema=PAIRS_SCHEMA, mode="create",
                                    storage_options=lake.storage_options)
        return lake

    @contextlib.contextmanager
    def _creating(self) -> Iterator[None]:
        """Held while a table of the lake is looked for and created. Lance commits a create that
        lost a race as an overwrite of the winner's table, so two processes creating one table at
        once (two first ingests, two first evaluations) lost the rows the first had added
        meanwhile. On a local lake: an exclusive ``flock`` on ``LAKE/_lakecurate/create.lock``; an
        object-store lake has no lock here (the race stays, narrow: a table's first commit)."""
        if "://" in self.uri:
            yield
            return
        import fcntl

        folder = os.path.join(self.uri, "_lakecurate")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:  # under a file, in /proc, read-only: one line, not a traceback
            raise LakeError(f"cannot make a lake at '{self.uri}': {exc.strerror or exc} ('{exc.filename or folder}'); "
                            "give a folder you can write") from None
        with open(os.path.join(folder, "create.lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @classmethod
    def open(cls, uri: str | os.PathLike, **kw: Any) -> "Store":
        """Open an existing lake (``branch=`` for one of its branches); fails with a hint if absent."""
        _opening("Lake.open", kw)
        lake = cls(uri, **kw)
        if lake.branch is not None:
            main = cls(uri, storage_options=lake.storage_options)
            if not main.exists():
                raise LakeError(f"no lake at '{lake.uri}'; create one with: lakecurate ingest {shlex.quote(os.fspath(uri))} SOURCE")
            names = sorted(main.branches())
            if lake.branch not in names:
                raise LakeError(f"lake '{lake.uri}' has no branch '{lake.branch}' (branches: {', '.join(['main', *names])}); "
                                f"create it with: lakecurate branch create {shlex.quote(os.fspath(uri))} {lake.branch}")
            return lake
        if not lake.exists():
            if (outer := lake._enclosing_lake()) is not None:
                raise LakeError(f"no lake at '{lake.uri}': it is the table of the lake '{outer}' (or a folder in "
                                f"it); give the lake: {shlex.quote(outer)}")
            raise LakeError(
                f"no lake at '{lake.uri}' (expected a Lance table at '{lake.table_uri}'); "
                f"create one with: lakecurate ingest {shlex.quote(os.fspath(uri))} SOURCE"
            )
        return lake

    def _enclosing_lake(self) -> str | None:
        """The local lake whose table (``pairs.lance``) this lake's folder is, or is inside, if any: a
        lake is never made in another's table (a lake's own folder holds others: evaluate's eval sets).
        On an object store, where a folder is only a prefix: a ``pairs.lance`` segment of the URI whose
        table is there (asked of the store only then)."""
        if "://" in self.uri:
            scheme, _, rest = self.uri.partition("://")
            parts = rest.split("/")
            for i in range(len(parts) - 1, 0, -1):
                if parts[i] == f"{TABLE}.lance":
                    try:
                        lance.dataset(f"{scheme}://{'/'.join(parts[: i + 1])}", storage_options=self.storage_options)
                    except (ValueError, OSError):
                        continue
                    return f"{scheme}://{'/'.join(parts[:i])}"
            return None
        path = Path(os.path.abspath(self.uri))
        for folder in (path, *path.parents):
            if folder.name == f"{TABLE}.lance" and is_lake_folder(str(folder.parent)):
                return str(folder.parent)
        return None

    def exists(self) -> bool:
        """Whether the lake's table is there. One that is there but cannot be read (a damaged version
        file) is a LakeError saying so: it was "no lake at ...", and the ingest it advised failed
        with a Lance traceback."""
        try:
            lance.dataset(self.table_uri, storage_options=self.storage_options)
            return True
        except (ValueError, OSError, FileNotFoundError) as exc:
            versions = os.path.join(self.table_uri, "_versions")
            if "://" in self.table_uri:
                if "was not found" in str(exc):  # (the store answered: nothing there)
                    return False
                raise LakeError(f"cannot use lake '{self.uri}': {_store_problem(exc)}") from None
            if not os.path.isdir(versions) or "not found" in str(exc).lower():
                return False
            from lakecurate.sqlcheck import clean_message

            raise LakeError(f"lake '{self.uri}' is there but its latest version cannot be read ({clean_message(exc)}); "
                            f"a version file in {versions} may be damaged (a disk or copy fault): restore the folder "
                            "from a backup, or move the newest .manifest file (Lance numbers them down: the smallest) aside to make the version before it "
                            "the latest") from None

    # ----------------------------------------------------------------- access
    def dataset(self, version: int | str | None = None) -> lance.LanceDataset:
        """The pairs table at its latest version, or at ``version``: a number (on this lake's branch),
        a tag, a branch name (its latest version) or ``branch:number``."""
        if isinstance(version, str) and is_number(version):
            self._unambiguous(version, self._lance(self.table_uri).tags.list())
            version = int(version)
        if isinstance(version, numbers.Integral) and not isinstance(version, bool):
            version = int(version)  # a numpy integer (a version read from a frame) is a number too
        elif version is not None and not isinstance(version, str):
            raise LakeError(f"version {version!r}: give a version number, a tag or a branch name")
        if isinstance(version, str):
            branch, number = self._ref(version)
            uri = self.table_uri if isinstance(number, str) else self._branch_uri(branch)  # Lance resolves tags itself
            return self._open_version(uri, number, branch)
        return self._open_version(self.table_uri, version, self.branch)

    def _open_version(self, uri: str, number: int | str | None, branch: str | None) -> lance.LanceDataset:
        """``lance.dataset`` at ``number``; a number that is not a version is a LakeError naming the versions."""
        if isinstance(number, int) and not 1 <= number < 1 << 64:  # Lance numbers versions from 1, in a u64
            raise LakeError(self._no_version(uri, number, branch))
        try:
            return self._lance(uri, version=number)
        except (ValueError, OSError) as exc:
            if not isinstance(number, int) or "not found" not in str(exc).lower():
                raise
            raise LakeError(self._no_version(uri, number, branch)) from None

    def _lance(self, uri: str, version: int | str | None = None) -> lance.LanceDataset:
        """``lance.dataset(uri)`` of this lake's table (main's or a branch's), every open of it here
        going through this: a table that is not there (the lake folder deleted or moved after it was
        opened, a branch another writer deleted, a path where no lake ever was) is one LakeError line,
        not Lance's "Dataset at path ... was not found" with its Rust source lines."""
        try:
            return lance.dataset(uri, version=version, storage_options=self.storage_options)
        except (ValueError, OSError) as exc:
            if "not found" not in str(exc).lower() or not self._table_gone(uri):
                raise  # (a version or tag that is not there: the callers say which)
            raise LakeError(self._gone(uri)) from None

    def _table_gone(self, uri: str) -> bool:
        """Whether the table at ``uri`` is not there at all (no latest version to open)."""
        try:
            lance.dataset(uri, storage_options=self.storage_options)
            return False
        except (ValueError, OSError) as exc:
            return "not found" in str(exc).lower()

    def _gone(self, uri: str) -> str:
        """What a missing table at ``uri`` means: the lake is gone, or one of its branches."""
        branch = uri[len(self.main_uri) + len("/tree/"):] if uri != self.main_uri and uri.startswith(self.main_uri) else None
        if branch and not self._table_gone(self.main_uri):
            return (f"branch '{branch}' of lake '{self.uri}' was deleted (its branches now: "
                    f"{', '.join(['main', *sorted(self.branches())])}); open another with Lake.open({self.uri!r}, branch=...)")
        return (f"no lake at '{self.uri}': it was deleted or moved (or never made; expected a Lance table at "
                f"'{self.main_uri}'); open an existing lake with Lake.open, or make one with Lake.create")

    def _no_version(self, uri: str, number: int, branch: str | None) -> str:
        numbers = [v["version"] for v in self._lance(uri).versions()]
        spans: list[list[int]] = []  # runs of consecutive numbers: cleanup leaves gaps
        for n in sorted(numbers):
            if spans and n == spans[-1][1] + 1:
                spans[-1][1] = n
            else:
                spans.append([n, n])
        have = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) or "none"
        on = f" --branch {shlex.quote(branch)}" if branch else ""  # (the hint showed main's versions)
        made = self.branches().get(branch, {}) if branch else {}
        start = made.get("parent_version")
        if start is not None and number <= int(start):
            # A branch's versions up to where it began are its parent's; its own copy of the start goes
            # with the branch's cleanup ("exp:3" opened, then said "not a version", the state still there).
            parent = made.get("parent_branch") or "main"
            return (f"version {number} is not on branch {branch} of lake '{self.uri}' (its versions: {have}): the "
                    f"branch began at version {start} of {parent}, whose version it is; open it as "
                    f"{shlex.quote(f'{parent}:{number}')}")
        return (f"version {number} is not a version of lake '{self.uri}' (branch {branch or 'main'} has versions {have}); "
                f"see: lakecurate{on} log {self.shell}")

    def on_branch_of(self, ref: int | str | None) -> "Store":
        """This lake on the branch the version reference ``ref`` names (a branch, ``branch:number``
        or a tag of a branch; a number or None: this store's branch), so that what it prints and
        writes for that version (a fix command, a review) goes to that branch."""
        if not isinstance(ref, str) or is_number(ref):
            return self
        return self.on_branch(self._ref(ref)[0])

    def on_branch(self, branch: str | None) -> "Store":
        """This lake on ``branch`` (None: main): itself when it is on that branch already."""
        return self if branch == self.branch else type(self)(self.uri, storage_options=self.storage_options, branch=branch)

    def _ref(self, ref: str) -> tuple[str | None, int | str | None]:
        """(branch, None for main; then a version number, a tag, or None for the branch's latest) of a
        version reference given as text: a tag, a branch name or ``branch:number``."""
        ds = self._lance(self.table_uri)
        tags = ds.tags.list()
        branches = ds.branches.list()
        if ref in tags:
            self._unambiguous(ref, tags, branches)
            return tags[ref].get("branch"), ref
        name, _, number = ref.partition(":")
        if (name == "main" or name in branches) and (not number or is_number(number)):
            return (None if name == "main" else name), int(number) if number else None
        raise LakeError(f"'{ref}' is not a version, tag or branch of lake '{self.uri}' "
                        f"(tags: {', '.join(sorted(tags)) or 'none'}; branches: main{''.join(', ' + b for b in sorted(branches))}); "
                        f"see: lakecurate log {self.shell}")

    def _unambiguous(self, ref: str, tags: dict[str, Any], branches: dict[str, Any] | None = None) -> None:
        """Refuse a reference that is a tag and also a version number or a branch name (Lance and
        LanceDB make tags of any name; lakecurate's :meth:`tag` refuses these): it read as the tag,
        or as the version, silently, wherever a version is named."""
        if ref not in tags:
            return
        at = f"{tags[ref].get('branch') or 'main'}:{tags[ref]['version']}"
        if is_number(ref):
            other, pick = f"version {int(ref)}", f"the number {int(ref)} (an int) or 'main:{int(ref)}' for the version"
        elif ref == "main" or ref in (branches or {}):
            other, pick = f"branch '{ref}' (its latest version)", f"'{ref}:N' for a version of the branch"
        else:
            return
        raise LakeError(f"'{ref}' is both a tag of lake '{self.uri}' (version {at}, made outside lakecurate) and "
                        f"{other}: give {pick}, or '{at}' for the tag's version; or delete the tag: "
                        + words(f"lakecurate tag {self.shell} {shlex.quote(ref)} --delete", f"lake.delete_tag({ref!r})"))

    @property
    def version(self) -> int:
        return self.dataset().version

    def names_latest(self, version: int | str | None, ds: "lance.LanceDataset | None" = None) -> bool:
        """Whether ``version`` (as :meth:`dataset` takes it) means this branch's latest version: None,
        its number, or the branch's name. A tag does not, even on the latest: it names a state (a
        recipe's result), which stays what it was when the branch moves on. ``ds``: that version,
        when the caller has opened it (else it is opened here)."""
        if version is None:
            return True
        if isinstance(version, str) and not is_number(version):
            branch, number = self._ref(version)
            return branch == self.branch and number is None
        ds = self.dataset(version) if ds is None else ds
        return ds.version == ds.latest_version

    def count(self, where: str | None = None) -> int:
        """Rows (those matching the SQL condition ``where``, when given)."""
        from lakecurate.sqlcheck import check_where

        ds = self.dataset()
        return ds.count_rows(filter=check_where(where, "where", ds))

    def to_pandas(
        self, columns: Sequence[str] | None = None, where: str | None = None, limit: int | None = None
    ) -> pd.DataFrame:
        """Rows as pandas. Image bytes are not read unless ``image`` is asked for by name. A uint64
        column (an image hash) is pandas' nullable UInt64, exact where float64 would round it; a list
        of uint64 (``copy_hashes``) uint64 arrays. Other columns as pyarrow gives them: an integer
        column with nulls is float64 (``width``, ``concept``, ``repeats``), a boolean one with nulls
        object (True, False, None), a vector a numpy array per row."""
        from lakecurate.sqlcheck import check_where

        ds = self.dataset()
        where = check_where(where, "where", ds)
        columns = texts("columns", columns, none_ok=True)  # "key" is one column, not three letters; 5 a TypeError
        if columns is None:
            columns = [n for n in ds.schema.names if n != "image"]
        limit = whole("limit", limit, 0, none_ok=True)  # -1 returned no rows, 2.5 a Lance error
        if len(set(columns)) < len(columns):  # (Lance refused some repeats, and repeated others)
            raise LakeError(f"columns {columns}: name each column once")
        missing = [c for c in columns if c not in ds.schema.names]
        if missing:
            raise LakeError(f"column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} {'are' if len(missing) > 1 else 'is'} not in lake '{self.uri}' (version {ds.version}); "
                            f"its columns: {', '.join(ds.schema.names)}")
        if "image" in columns:
            rest = [c for c in columns if c != "image"]
            tbl = ds.to_table(columns=rest, filter=where, limit=limit, with_row_id=True)
            df = frame(tbl)
            df["image"] = self._read_blobs(ds, df.pop("_rowid").tolist())
            return df[list(columns)]
        return frame(ds.to_table(columns=list(columns), filter=where, limit=limit))

    def read_images(self, ids: str | Sequence[str]) -> list[bytes | None]:
        """Image bytes for the given pair ids, in the same order; None where a row has no image (an
        ingest error that kept none). One id (a string) is a list of one, not of its characters. An
        id that is not in the lake is a LakeError naming it: it read as None, like a row without an
        image."""
        ds = self.dataset()
        if not hasattr(ids, "__iter__"):  # (None, a number)
            raise LakeError(f"read_images takes a pair id or a list of them, not {ids!r}")
        id_list = [ids] if isinstance(ids, str) else list(ids)
        if not all(isinstance(i, str) for i in id_list):
            raise LakeError(f"read_images takes pair ids (text), not {next(i for i in id_list if not isinstance(i, str))!r}")
        if not id_list:
            return []
        from lakecurate.sqlcheck import in_list

        tbl = ds.to_table(columns=["id"], filter=f"id IN ({in_list(id_list)})", with_row_id=True)
        found = tbl.column("id").to_pylist()
        twice = sorted({i for i in found if found.count(i) > 1}) if len(set(found)) < len(found) else []
        if twice:  # (rows another writer added with an id that was there: the last one's image was given, or None)
            raise LakeError(f"id {', '.join(map(repr, twice[:5]))} of lake '{self.uri}' (version {ds.version}) is the id "
                            f"of more than one row (added outside lakecurate: ingest never repeats an id); see them: "
                            f"{self.command} sql {self.shell} \"SELECT id, key, source FROM pairs WHERE id = "
                            f"'{twice[0]}'\", and delete the extra row, or restore the version before it")
        rowids = dict(zip(found, tbl.column("_rowid").to_pylist()))
        unknown = list(dict.fromkeys(i for i in id_list if i not in rowids))
        if unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise LakeError(f"no pair of lake '{self.uri}' (version {ds.version}) has id {shown}; find ids with: "
                            f"{self.command} sql {self.shell} \"SELECT id, key FROM pairs LIMIT 10\"")
        wanted = [rowids[i] for i in id_list]
        blobs = dict(zip(wanted, self._read_blobs(ds, wanted)))
        return [blobs.get(rowids.get(i)) for i in id_list]

    @staticmethod
    def _read_blobs(ds: lance.LanceDataset, rowids: list[int]) -> list[bytes | None]:
        if not rowids:
            return []
        got = ds.read_blobs("image", ids=rowids, preserve_order=True)
        return [b for _, b in got]

    # ----------------------------------------------------------------- queries
    def sql(self, query: str, version: int | str | None = None, *, with_row_id: bool = False,
            limit: int | None = None, stop: threading.Event | None = None, timeout: float | None = None,
            max_memory: float | None = None) -> pd.DataFrame:
        """Run SQL (DataFusion, through Lance) against the ``pairs`` table and return pandas.

        Example: ``lake.sql("SELECT format, COUNT(*) AS n FROM pairs GROUP BY format")``.
        The ``image`` column holds blob descriptors in SQL results; use :meth:`read_images` for bytes.
        ``with_row_id`` makes the ``_rowid`` column selectable (what ``dataset().read_blobs`` takes).
        Only one read-only SELECT/WITH over ``pairs`` runs: DataFusion would also run ``COPY ... TO``
        (writing any file) or ``CREATE EXTERNAL TABLE`` (reading any), so anything else is refused
        (:func:`lakecurate.sqlcheck.check_query`). ``limit``: stop reading after that many rows
        (the browser app's bound on what a query may return); ``stop``, ``timeout``, ``max_memory``:
        see :meth:`sql_table`.
        """
        return frame(self.sql_table(query, version, with_row_id=with_row_id, limit=limit, stop=stop, timeout=timeout,
                                    max_memory=max_memory))

    def sql_table(self, query: str, version: int | str | None = None, *, with_row_id: bool = False,
                  limit: int | None = None, stop: threading.Event | None = None, timeout: float | None = None,
                  max_memory: float | None = None) -> pa.Table:
        """:meth:`sql`'s result as an Arrow table: exact where pandas is not (a uint64 hash with a
        null in its column, ints with nulls: pandas makes them float64) and columns named alike kept.

        The query runs in a thread of its own while this one waits, so Ctrl+C (KeyboardInterrupt)
        reaches the caller at once, not when DataFusion is done. ``stop``: once set, the query ends
        at its next batch (DataFusion through Lance has no interrupt of a batch being computed;
        dropping the stream cancels the rest of the plan). ``timeout`` (seconds) and ``max_memory``
        (bytes this process grows by while the query runs; Linux): past either, a
        :class:`QueryStopped` (the query's thread is told to stop at its next batch; a process that
        ends, as the CLI does, frees what it holds)."""
        from lakecurate.sqlcheck import check_query, clean_message

        check_query(query)
        limit = whole("limit", limit, 0, none_ok=True)  # -1 returned no rows, 2.5 a Lance error
        with_row_id = flag("with_row_id", with_row_id)  # ("no": a DataFusion error that blamed the query)
        if stop is not None and not callable(getattr(stop, "is_set", None)):  # (True: an AttributeError in its thread)
            raise LakeError(f"invalid stop {stop!r}: expected a threading.Event (or None)")
        for name, bound in (("timeout", timeout), ("max_memory", max_memory)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not bound > 0):
                raise LakeError(f"{name} = {bound!r}: give a positive number (or None: no bound)")
        ds = self.dataset(version)
        stop = stop if stop is not None else threading.Event()
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                reader = ds.sql(query).table_name(TABLE).with_row_id(with_row_id).build().to_stream_reader()
                batches, rows = [], 0
                for batch in reader:
                    if stop.is_set():
                        reader.close()  # (between batches: the plan's remaining work is dropped)
                        return
                    batches.append(batch)
                    rows += batch.num_rows
                    if limit is not None and rows >= limit:
                        break
                out["table"] = pa.Table.from_batches(batches, schema=reader.schema).slice(0, limit)
            except BaseException as exc:  # DataFusion reports planning errors as plain exceptions
                out["error"] = exc

        grown = _memory_growth()
        started = time.monotonic()
        worker = threading.Thread(target=run, name="lakecurate-sql", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.05)
                if timeout is not None and time.monotonic() - started > timeout:
                    raise QueryStopped(f"SQL on lake '{self.uri}' was stopped: it ran past its time ({timeout:g} s); "
                                       "narrow it (WHERE, LIMIT), or give it more time")
                if max_memory is not None and grown() > max_memory:
                    size = f"{max_memory / 2**30:.3g} GiB" if max_memory >= 2**30 else f"{max_memory / 2**20:.0f} MiB"
                    raise QueryStopped(f"SQL on lake '{self.uri}' was stopped: it took more than {size} of memory; "
                                       "narrow it (WHERE, a LIMIT inside the query, fewer columns, no cross join), or allow it more")
        except BaseException:
            stop.set()
            raise
        if stop.is_set() and "table" not in out and "error" not in out:
            raise QueryStopped(f"SQL on lake '{self.uri}' was stopped: it ran past its time")
        if "error" in out:
            raise LakeError(f"SQL failed on lake '{self.uri}': {clean_message(out['error'])}") from None
        return out["table"]  # no rows: an empty table that still has the query's columns

    # ----------------------------------------------------------------- writes
    def append(self, data: pa.Table | pa.RecordBatchReader, *, overwrite: bool = False,
               guard: Callable[[lance.LanceDataset], bool | str] | None = None) -> int | None:
        """Append rows in one atomic commit and return the new version.

        ``data`` may be a stream (``pa.RecordBatchReader``): data files are written while it is
        consumed, so producing and writing overlap. The commit retries on conflicts without
        rewriting the files. ``overwrite`` makes a new version holding only ``data``; older versions
        stay readable (and their files on disk) until :meth:`cleanup`.

        ``guard(ds)`` makes check-then-commit atomic among guarded appends (what keeps ingest's ids
        unique): it runs on the fresh version ``ds`` right before each commit attempt, after the data
        files are written. It returns False to drop the commit (the result is then None), True to
        commit, or a SQL condition: the rows of ``ds`` matching it are deleted in the same commit, so
        a replaced row is never visible twice.
        """
        overwrite = flag("overwrite", overwrite)
        if not overwrite and self.exists():
            self._check_pairs_schema(self.dataset())
        frags = lance.fragment.write_fragments(
            data,
            self.table_uri,
            schema=PAIRS_SCHEMA,
            mode="overwrite" if overwrite else "append",
            max_rows_per_file=ROWS_PER_FILE,
            storage_options=self.storage_options,
        )

        def commit() -> int | None:
            ds = self.dataset()
            if overwrite:
                op: Any = lance.LanceOperation.Overwrite(PAIRS_SCHEMA, frags)
            elif guard is None:
                op = lance.LanceOperation.Append(frags)
            else:
                verdict = guard(ds)
                if verdict is False:
                    return None
                updated, removed = _deletions(ds, verdict) if isinstance(verdict, str) else ([], [])
                # An Append rebases over any concurrent Append, so a check made before it can be stale
                # by the time it lands. Guarded appends commit as an Update that also "removes"
                # GUARD_FRAGMENT_ID, a fragment no version has: Lance sees two of them touch the same
                # fragment and fails the later one with a retryable conflict, and its guard then
                # re-runs on the newer version. Other commits (appends, column fills) rebase as before.
                op = lance.LanceOperation.Update(removed_fragment_ids=[*removed, GUARD_FRAGMENT_ID],
                                                 updated_fragments=updated, new_fragments=frags)
            return lance.LanceDataset.commit(
                self.table_uri, op, read_version=ds.version, storage_options=self.storage_options
            ).version

        return retry_on_conflict(commit)

    def _check_pairs_schema(self, ds: lance.LanceDataset) -> None:
        """Refuse to append pairs to a table whose pairs columns were dropped or retyped outside
        lakecurate (plain Lance): Lance's own error names neither the lake nor a way out."""
        have = {f.name: f for f in ds.schema}

        def differs(f: pa.Field) -> bool:
            # A blob column reads back as Lance's blob type, not as the large_binary it was written
            # as; a plain large_binary written over it (lance.write_dataset) is no blob, and Lance's
            # own refusal of the append ("image should have type large_binary") says nothing useful.
            if is_blob(f):
                return not is_blob(have[f.name])
            return not have[f.name].type.equals(f.type)

        def wanted(f: pa.Field) -> str:
            return "a Lance blob column" if is_blob(f) else str(f.type)

        wrong = [f"column {f.name} is missing" if f.name not in have
                 else f"column {f.name} is {have[f.name].type}, not {wanted(f)}"
                 for f in PAIRS_SCHEMA if f.name not in have or differs(f)]
        if wrong:
            raise LakeError(f"lake '{self.uri}': the pairs table was changed outside lakecurate ({'; '.join(wrong)}), "
                            f"so new pairs cannot be added; restore the version before that change (see: {self.command} "
                            f"log {self.shell}) or ingest into a new lake")
        # A column another writer added with values (an SQL expression: Lance makes it non-null) has no
        # value for new rows, and Lance refuses the append ("Append with different schema ... missing").
        strict = [f.name for f in ds.schema if not f.nullable and f.name not in PAIRS_SCHEMA.names]
        if strict:
            raise LakeError(f"lake '{self.uri}': column{'s' if len(strict) > 1 else ''} {', '.join(strict)}, which "
                            f"another writer added, {'are' if len(strict) > 1 else 'is'} not nullable, so new pairs "
                            f"(which have no value there) cannot be added; nothing was written. Make "
                            f"{'them' if len(strict) > 1 else 'it'} nullable (python -c \"import lance; "
                            f"lance.dataset('{ds.uri}').alter_columns("
                            + ", ".join(f"{{'path': '{c}', 'nullable': True}}" for c in strict)
                            + ")\"), then add the pairs again")

    def existing_ids(self, sources: Sequence[str] | None = None, *, where: str | None = None,
                     ds: lance.LanceDataset | None = None, fragment_ids: Sequence[int] | None = None) -> set[str]:
        """Ids already in the lake (only those from ``sources`` when given, and matching the SQL
        ``where``): what re-ingest skips. ``ds`` and ``fragment_ids`` narrow the scan to some fragments
        of one version (how ingest re-checks only the fragments other writers added)."""
        ds = ds or self.dataset()
        conds = []
        if sources is not None:
            if not sources:
                return set()
            from lakecurate.sqlcheck import in_list

            conds.append(f"source IN ({in_list(sources)})")
        if where:
            conds.append(f"({where})")
        frags = None if fragment_ids is None else [ds.get_fragment(i) for i in fragment_ids]
        if frags == []:
            return set()
        tbl = ds.scanner(columns=["id"], filter=" AND ".join(conds) or None, fragments=frags).to_table()
        return set(tbl.column("id").to_pylist())

    # ----------------------------------------------------------------- side tables
    def side_uri(self, name: str, *, per_branch: bool = True, branch: str | None | Literal[False] = False) -> str:
        """A table beside ``pairs`` in the lake (``LAKE/<name>.lance``; LanceDB lists it too). With
        ``per_branch`` a branch gets its own (``<name>-<branch>``): what describes a branch's rows;
        ``branch`` names another branch's (None: main's) than this store's."""
        per_branch = flag("per_branch", per_branch)  # (every side-table call comes here first)
        branch = self.branch if branch is False else branch
        return _join(self.uri, f"{name}-{branch}.lance" if per_branch and branch else f"{name}.lance")

    def side_dataset(self, name: str, *, per_branch: bool = True, branch: str | None | Literal[False] = False,
                     version: int | None = None) -> lance.LanceDataset | None:
        """The side table ``name`` (of ``branch``, see :meth:`side_uri`) at its latest version or at
        ``version``, or None when there is none (yet, or any more: cleanup removed that version)."""
        uri = self.side_uri(name, per_branch=per_branch, branch=branch)
        try:
            return lance.dataset(uri, version=version,
                                 storage_options=self.storage_options)
        except (ValueError, OSError, FileNotFoundError):
            return None

    def write_side(self, name: str, data: pa.Table, *, mode: str = "append", per_branch: bool = True) -> int:
        """Append ``data`` to the side table ``name`` (created on first use) or, with ``mode="overwrite"``,
        replace its rows by a new version (old versions stay readable). One atomic commit, retried when
        another writer's commit lands first. Returns the side table's new version."""
        if mode not in ("append", "overwrite"):
            raise ValueError(f"mode must be 'append' or 'overwrite', not {mode!r}")
        uri = self.ensure_side(name, data.schema, per_branch=per_branch)
        return retry_on_conflict(lambda: lance.write_dataset(data, uri, mode=mode,
                                                             storage_options=self.storage_options).version)

    def ensure_side(self, name: str, schema: pa.Schema, *, per_branch: bool = True) -> str:
        """The uri of the side table ``name``, created empty with ``schema`` when there is none yet
        (under :meth:`_creating`), so that rows are only ever appended: two first writers that
        each created the table with their rows both "succeeded", and one's rows were gone."""
        uri = self.side_uri(name, per_branch=per_branch)
        if self.side_dataset(name, per_branch=per_branch) is None:
            with self._creating():
                if self.side_dataset(name, per_branch=per_branch) is None:
                    lance.write_dataset(schema.empty_table(), uri, mode="create", storage_options=self.storage_options)
        return uri

    # ----------------------------------------------------------------- versions
    def tag(self, name: str, version: int | str | None = None) -> int:
        """Name a version (default: the latest) so it can be reopened later; ~1 ms, metadata only.
        ``version``: a number, or a tag, branch or ``branch:number`` (what ``--version`` takes
        elsewhere). Returns the version number tagged.

        On a branch the tag points at the branch's version; ``lake.dataset(name)`` reopens it.
        """
        if not isinstance(name, str) or not BRANCH_RE.match(name) or name.isdigit():  # a number would read as a version
            raise LakeError(f"tag name {name!r} is not valid; use {NAME_RULE}, not only digits")
        ds = self.dataset()
        tags = ds.tags.list()
        if name in tags:
            raise LakeError(f"lake '{self.uri}' already has a tag '{name}' (version {tags[name]['version']}); "
                            f"pick another name, or delete it first: {words(f'lakecurate tag {self.shell} {name} --delete', f'lake.delete_tag({name!r})')}")
        if name == "main" or name in self.branches():  # a version named so would be the tag, never the branch
            raise LakeError(f"'{name}' is a branch of lake '{self.uri}'; a tag of that name would hide it wherever "
                            f"a version is named ({words('--version', 'version=')}, diff, restore): pick another name")
        number = self.dataset(version).version if version is not None else ds.version  # LakeError if not a version
        branch = self.on_branch_of(version).branch  # a ref of another branch: that branch's version
        ds.tags.create(name, (branch, number))  # (a bare number was read on ds's branch: main:3 from exp was exp:3)
        return number

    def branches(self) -> dict[str, dict[str, Any]]:
        """Branches of the lake: name -> {parent_branch, parent_version, ...} (``main`` is implied)."""
        return dict(self._lance(self.main_uri).branches.list())

    def create_branch(self, name: str, source: int | str | None = None) -> "Store":
        """Start a branch at ``source`` (a version of this lake's branch, a tag, or None: the latest)
        and return the lake opened on it. Metadata only: the branch shares every data file, and new
        columns, appends and curation on it leave main untouched.

        Example::

            exp = lake.create_branch("exp-strict")
            exp.curate("strict")            # main's keep column is unchanged
        """
        if not isinstance(name, str) or not BRANCH_RE.match(name) or name == "main" or name.isdigit():  # a number reads as a version
            raise LakeError(f"branch name {name!r} is not valid; use {NAME_RULE}, not 'main', not only digits")
        if name in self.branches():
            how = words(f"--branch {name}", f"Lake.open({self.uri!r}, branch={name!r})")
            raise LakeError(f"lake '{self.uri}' already has a branch '{name}'; open it with {how}")
        if name in self.dataset().tags.list():
            raise LakeError(f"'{name}' is a tag of lake '{self.uri}'; a branch of that name would be hidden by it "
                            f"wherever a version is named ({words('--version', 'version=')}, diff, restore): pick another name")
        if isinstance(source, str) and not is_number(source):
            branch, number = self._ref(source)
            if isinstance(number, int):  # branch:N: a version of that branch (a Lance traceback when it is not)
                self._open_version(self._branch_uri(branch), number, branch)
            ref: Any = number if isinstance(number, str) else (branch, number)
        else:
            # (int(2.5) branched from version 2: a version is a number, a tag or a branch, as dataset() takes it)
            ref = (self.branch, self.dataset(source).version if source is not None else None)  # LakeError if not a version
        self._forget_branch(name)  # leftovers of an earlier branch of this name (deleted by plain Lance, say)
        self.dataset().create_branch(name, ref)
        return type(self)(self.uri, self.storage_options, branch=name)

    def delete_branch(self, name: str) -> None:
        """Delete a branch; the data files it shares with main stay (main's versions reference them)."""
        if name == "main":
            raise LakeError(f"main is lake '{self.uri}'s own line of versions, not a branch made from it: it cannot be "
                            f"deleted (to go back on main: {words(f'lakecurate restore {self.shell} VERSION', 'lake.restore(VERSION)')})")
        if name not in self.branches():
            raise LakeError(f"lake '{self.uri}' has no branch '{name}'")
        ds = self._lance(self.main_uri)
        tags = sorted(t for t, meta in ds.tags.list().items() if meta.get("branch") == name)
        if tags:  # Lance refuses too; say which tags and how to drop them
            raise LakeError(f"branch '{name}' of lake '{self.uri}' is referenced by tags {', '.join(tags)}; "
                            f"delete them first: {words(f'lakecurate tag {self.shell} TAG --delete', 'lake.delete_tag(TAG)')}")
        children = sorted(b for b, meta in ds.branches.list().items() if meta.get("parent_branch") == name)
        if children:  # (a Lance "Ref conflict" traceback)
            raise LakeError(f"branch '{name}' of lake '{self.uri}' has branches made from it: {', '.join(children)}; "
                            f"delete them first: {words(f'lakecurate branch delete {self.shell} BRANCH', 'lake.delete_branch(BRANCH)')}")
        ds.branches.delete(name)
        self._forget_branch(name)

    def _forget_branch(self, name: str) -> None:
        """What lakecurate kept for a branch that is gone: its stages' batch checkpoints and its
        duplicate evidence. A branch made again under the name numbers its fragments as the old
        one did: a checkpoint would resume with the old rows' values, silently."""
        import shutil

        shutil.rmtree(checkpoint_root(self.uri, name), ignore_errors=True)
        if "://" not in self.uri:
            for table in (EVIDENCE_TABLE, EVAL_TABLE):
                shutil.rmtree(self.side_uri(table, branch=name), ignore_errors=True)

    def delete_tag(self, name: str) -> None:
        """Delete a tag (the version it named stays; cleanup may then remove its files)."""
        ds = self.dataset()
        if name not in ds.tags.list():
            raise LakeError(f"lake '{self.uri}' has no tag '{name}'")
        ds.tags.delete(name)

    def restore(self, version: int | str) -> int:
        """Go back: make the state of ``version`` (a number or tag of this branch) the latest version.

        Nothing is lost: this is a new commit, and every version after ``version`` stays readable.
        Returns the new version number; the latest unchanged where it already is ``version``'s state
        (``version`` is the latest, or the latest is a restore of it: a second restore made another
        commit of the same state).
        """
        if version is None:  # (it "restored" the latest version: nothing, silently)
            raise LakeError("restore needs a version: a number or a tag of this branch; see: "
                            f"{self.command} log {self.shell}")
        try:
            old = self.dataset(version)
        except LakeError:
            made = self.branches().get(self.branch or "", {}) if self.branch else {}
            start = made.get("parent_version")
            if start is not None and is_number(str(version)) and int(version) <= start:  # (the start too, once a cleanup took its copy)
                ref = f"{made.get('parent_branch') or 'main'}:{int(version)}"
                raise LakeError(self._past_the_start(f"version {int(version)}", start, ref)) from None
            raise
        branch = self._ref(version)[0] if isinstance(version, str) and not is_number(version) else self.branch
        if branch != self.branch:
            if self.branch is not None:  # (it said "open the lake with --branch", which the person had done)
                start = self.branches().get(self.branch, {}).get("parent_version")
                raise LakeError(self._past_the_start(f"'{version}' (a version of {branch or 'main'})", start, str(version)))
            raise LakeError(f"'{version}' belongs to branch {branch}, not main; restore works within a branch: "
                            + words(f"lakecurate --branch {shlex.quote(branch or '')} restore {self.shell} "
                                          f"{shlex.quote(str(version))}",
                                          f"Lake.open({self.uri!r}, branch={branch!r}).restore({version!r})"))
        latest = self.dataset()
        if latest.version == old.version:
            return latest.version
        tx = self._transaction(latest, latest.version)
        if tx is not None and type(tx.operation).__name__ == "Restore" and getattr(tx.operation, "version", None) == old.version:
            return latest.version
        old.restore()
        return self.version

    def _past_the_start(self, what: str, start: int | None, ref: str) -> str:
        """Why a branch cannot restore ``what`` (a state from before it began, or of another branch),
        and the two ways to have that state on a branch."""
        began = f" began at version {start} of its parent" if start is not None else " is another line of versions"
        create = words(f"lakecurate branch create {self.shell} NAME --from {shlex.quote(ref)}",
                             f"lake.create_branch(NAME, {ref!r})")
        delete = words(f"lakecurate branch delete {self.shell} {shlex.quote(self.branch or '')}",
                             f"lake.delete_branch({self.branch!r})")
        return (f"{what} is not on branch {self.branch} of lake '{self.uri}': the branch{began}, and restore works "
                f"within a branch; start a branch from that state: {create} (to reuse the name {self.branch}, delete "
                f"it first: {delete})")

    def history(self, limit: int | None = 20, *, changes: bool = True) -> list[dict[str, Any]]:
        """The latest versions of this branch, newest first: number, time, operation (Lance's),
        rows, tags (a list of names), and with ``changes`` what each version changed (:func:`_change`: "embed: +4
        columns clip_vitb32_image, ...", "+28 rows"; each version's schema is read for it)."""
        limit = whole("limit", limit, 0, none_ok=True)  # a count of versions, or None for all
        changes = flag("changes", changes)
        ds = self.dataset()
        every = ds.versions()
        versions = every[::-1][:limit]
        # Each version's transaction is read alone: Lance's batch read stops at the first gap that
        # cleanup leaves and fails whole on one transaction it cannot parse (another tool's index).
        ops: dict[int, str] = {}
        change: dict[int, str] = {}
        listed = {v["version"]: v for v in every}  # the version before one, where cleanup left it
        opened: dict[int, lance.LanceDataset] = {}
        for v in versions:
            tx = self._transaction(ds, v["version"])
            if tx is not None:
                ops[v["version"]] = _op_name(tx, lambda n: _checkout(ds, n, opened), v["version"])
            if changes:
                change[v["version"]] = _change(ds, v, listed.get(v["version"] - 1), tx, opened)
        tags: dict[int, list[str]] = {}
        for name, t in ds.tags.list().items():
            if t.get("branch") == self.branch:
                tags.setdefault(t["version"], []).append(name)
        return [{"version": v["version"], "time": _iso(v["timestamp"]), "operation": ops.get(v["version"], ""),
                 "rows": int(v["metadata"].get("total_rows", 0)),  # live rows: deleted ones are not counted
                 **({"change": change[v["version"]]} if changes else {}),
                 "tags": sorted(tags.get(v["version"], []))} for v in versions]  # a list: a name may hold ", "

    @staticmethod
    def _transaction(ds: lance.LanceDataset, version: int) -> Any:
        """The transaction that made ``version``, or None where it cannot be read."""
        try:
            return ds.checkout_version(version).get_transactions(1)[0]
        except Exception:  # noqa: BLE001 - the log shows an empty operation rather than failing
            return None

    def ensure_vector_index(self, column: str, min_rows: int = INDEX_MIN_ROWS) -> bool:
        """Build an IVF_PQ (cosine) index on the vector ``column`` once it holds ``min_rows`` values;
        returns True if it built one (a column that already has an index is left alone)."""
        ds = self.dataset()
        n = ds.count_rows(filter=f"{column} IS NOT NULL")
        if n < min_rows or any(column in idx.field_names for idx in ds.describe_indices()):
            return False
        dim = ds.schema.field(column).type.list_size
        ds.create_index(column, index_type="IVF_PQ", metric="cosine", num_partitions=max(1, int(n**0.5) // 4),
                        num_sub_vectors=max(1, dim // 16))
        return True

    def cleanup(self, older_than: timedelta = timedelta(days=7)) -> dict[str, int]:
        """Delete untagged versions older than ``older_than`` and the files only they use.

        Tagged versions and the latest stay readable (and those Lance keeps for its own reasons: the
        version a branch starts from), and so do the versions of the side table ``dup_pairs`` that
        the lake versions left name. Overwrites and compactions keep the old files (time travel)
        until this runs.
        """
        check_older_than(older_than)
        # Tagged versions are kept (each recipe's tag is a curated set); Lance would refuse the whole
        # cleanup when a tagged version is old enough, so it is told to skip them instead.
        cutoff = datetime.now() - older_than  # (Lance's version timestamps are local and naive)
        stats = self.dataset().cleanup_old_versions(older_than=older_than, error_if_tagged_old_versions=False)
        out = {"bytes_removed": stats.bytes_removed, "old_versions": stats.old_versions}
        if "://" not in self.uri:  # the side tables beside pairs (dup_pairs is rewritten by every dedup)
            # Read after the lake's cleanup, not predicted before it: what Lance left is what is kept.
            pinned = self._pinned_evidence()
            for path in sorted(Path(self.uri).glob("*.lance")):
                if path.name == f"{TABLE}.lance":
                    continue
                side_ds = lance.dataset(str(path))
                if path.name in pinned:  # the evidence a kept lake version names stays (dup_pairs(version=TAG))
                    old = [v["version"] for v in side_ds.versions()
                           if v["timestamp"] < cutoff and v["version"] not in pinned[path.name]]
                    if not old:
                        continue
                    side = side_ds.cleanup_old_versions(versions=old, error_if_tagged_old_versions=False)
                else:
                    side = side_ds.cleanup_old_versions(older_than=older_than, error_if_tagged_old_versions=False)
                out["bytes_removed"] += side.bytes_removed
                out["old_versions"] += side.old_versions
        return out

    def _pinned_evidence(self) -> dict[str, set[int]]:
        """Evidence table file name -> the versions of it that the lake's versions name
        (``dup_group``'s :data:`EVIDENCE_KEY`): every version of every branch that is there now
        (a tag names one of them), so the lake is cleaned first. Each version's manifest is read
        once, through one open of its branch (``checkout_version`` shares that open's cache; Lance's
        version listing carries no schema)."""
        out: dict[str, set[int]] = {}
        for branch in [None, *sorted(self.branches())]:
            try:
                ds = self._lance(self._branch_uri(branch))
                numbers = [ref["version"] for ref in ds.version_refs()]
            except (ValueError, OSError, LakeError):  # (a branch deleted meanwhile by another writer)
                continue
            for number in numbers:
                try:
                    at = ds if number == ds.version else ds.checkout_version(number)
                except (ValueError, OSError):  # (a version removed meanwhile by another writer)
                    continue
                pin = evidence_pin(at.schema)
                if pin is not None:
                    out.setdefault(Path(self.side_uri(EVIDENCE_TABLE, branch=pin[0])).name, set()).add(pin[1])
        return out


def check_older_than(older_than: Any) -> None:
    """Refuse a cleanup's ``older_than`` that is not a span from 0 to 10**6 days."""
    # 5: days? versions? (a TypeError); past ~10**8 days Lance panicked (a date before year 1)
    if not isinstance(older_than, timedelta) or not timedelta(0) <= older_than <= timedelta(days=10**6):
        raise LakeError(f"invalid older_than {older_than!r}: expected a datetime.timedelta from 0 to 10**6 days, "
                        "such as timedelta(days=7) (what the CLI's --older-than-days 7 passes)")


def _store_problem(exc: BaseException) -> str:
    """Why an object store did not answer for a lake, in words (it was "no lake at ...", and the
    ingest that advised then failed with a traceback): no such bucket, a scheme no store has, an
    empty path segment, a store that cannot be reached; else the store's own message."""
    import re

    from lakecurate.sqlcheck import clean_message

    text = str(exc)
    if "NoSuchBucket" in text:
        bucket = re.search(r"<BucketName>([^<]+)</BucketName>", text)
        return (f"its bucket{' ' + repr(bucket.group(1)) if bucket else ''} does not exist; create it, or check the "
                "URI and the store's endpoint (AWS_ENDPOINT)")
    scheme = re.search(r"No object store provider found for scheme: '([^']*)'", text)
    if scheme:
        return f"no object store has the scheme '{scheme.group(1)}://'; use s3://, gs://, az:// or a local folder"
    if "empty path segment" in text:
        return "its path has an empty segment (a doubled '/'); write it with single slashes"
    if "error sending request" in text or "Connection refused" in text or "dns error" in text:
        return ("the store could not be reached; check the endpoint (AWS_ENDPOINT or the storage options), the "
                "network and the credentials")
    return clean_message(text.splitlines()[0])[:300]


# What an object store's failure reads like in Lance's errors (S3, GCS, Azure: object_store's
# "Generic <store> error", not a local disk's; a store that does not answer; no such bucket).
_STORE_ERROR = re.compile(r"Generic (?!LocalFileSystem )\w+ error|error sending request|Connection refused|dns error|NoSuchBucket")


def store_problem(exc: BaseException) -> str | None:
    """Why an object store failed ``exc``, in :func:`_store_problem`'s words, where it (or the error
    it was raised from) is one: a store that went away in the middle of a command failed with an
    ArrowInvalid or ValueError traceback. None for any other error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _STORE_ERROR.search(str(exc)):
            return _store_problem(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _change(ds: lance.LanceDataset, version: dict, before: dict | None, tx: Any,
            opened: dict[int, lance.LanceDataset] | None = None) -> str:
    """What ``version`` (an entry of ``ds.versions()``) changed against ``before`` (the one before
    it, None for the first), in words: rows added or removed, columns added, removed, rewritten or
    (re)declared (their provenance), led by the stages named in those columns' provenance. Lance's
    operation name where nothing else shows (an index, a compaction); "" where a version cannot be
    read (cleaned up). ``opened``: versions checked out already (a log compares each with the one
    before it: each is opened once)."""
    opened = {} if opened is None else opened

    def checkout(number: int) -> lance.LanceDataset:
        return _checkout(ds, number, opened)
    op = _op_name(tx, checkout, version["version"]) if tx is not None else ""
    if op == "ReserveFragments":
        return _WORDS[op]
    try:
        now = checkout(version["version"])
        old = checkout(before["version"]) if before is not None else None
    except Exception:  # noqa: BLE001 - a version cleanup removed: nothing to compare
        return op
    rows = int(version["metadata"].get("total_rows", 0))
    if old is None and version["version"] == 1:
        return "lake created" + (f" with {rows:,} rows" if rows else "")
    if op == "Restore":
        return f"restored version {getattr(tx.operation, 'version', '?')}"
    if op == "Overwrite":
        return f"overwritten: {rows:,} rows"
    if op == "UpdateConfig" and old is not None:  # (lakecurate's own: a set's record forgotten before its drop)
        forgotten = [k.decode(errors="replace")[len(NODE_KEY):] for k in (old.schema.metadata or {})
                     if k.startswith(NODE_KEY.encode()) and k not in (now.schema.metadata or {})]
        if forgotten:
            return f"forgot the record of {', '.join(forgotten)} (to drop {'them' if len(forgotten) > 1 else 'it'})"
    fields = {f.name: f for f in now.schema}
    if old is None:  # the version before was cleaned up (this one is kept: tagged): what its commit says
        was, grown = fields, _rows_added(tx)
    else:
        was = {f.name: f for f in old.schema}
        grown = rows - int(before["metadata"].get("total_rows", 0))  # type: ignore[index]
    added = [n for n in fields if n not in was]
    removed = [n for n in was if n not in fields]
    written: list[str] = []
    if op == "DataReplacement":
        ids = {i for r in tx.operation.replacements for i in r.new_file.fields}
        written = [f.name() for f in now.lance_schema.fields() if f.id() in ids and f.name() not in added]
    declared = [n for n in fields if old is not None and n in was and n not in written
                and (fields[n].metadata or {}).get(PROVENANCE_KEY.encode()) != (was[n].metadata or {}).get(PROVENANCE_KEY.encode())]
    stages = []
    for n in added + written + declared:
        try:
            stage = json.loads(fields[n].metadata[PROVENANCE_KEY.encode()]).get("stage")
        except (TypeError, KeyError, ValueError, AttributeError):  # no provenance: a column lakecurate did not derive
            stage = None
        if stage and stage not in stages:
            stages.append(stage)

    def listed(sign: str, names: list[str], what: str = "") -> str:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        count = f"{len(names)} columns" if len(names) > 1 else "column"
        return f"{sign}{what}{count} {shown}"
    parts = [f"{grown:+,} rows"] if grown else []
    parts += [listed("+", added)] if added else []
    parts += [listed("-", removed)] if removed else []
    parts += [listed("", written, "wrote ")] if written else []
    parts += [listed("", declared, "declared ")] if declared and not added else []
    return (", ".join(stages) + ": " if stages else "") + "; ".join(parts or [_WORDS.get(op, op)])


def _checkout(ds: lance.LanceDataset, number: int, opened: dict[int, lance.LanceDataset]) -> lance.LanceDataset:
    if number not in opened:
        opened[number] = ds.checkout_version(number)
    return opened[number]


def _op_name(tx: Any, checkout: Callable[[int], lance.LanceDataset], number: int) -> str:
    """Lance's name of the operation that made version ``number``. Its Python side names some
    operations only by their base class ("BaseOperation"): a compaction's first commit, which
    reserves the ids of the fragments it will write (each compact adds such a version) and changes
    no fragment, is named "ReserveFragments"; another, "unnamed"."""
    op = type(tx.operation).__name__
    if op != "BaseOperation":
        return op
    try:
        now, old = checkout(number), checkout(number - 1)
        same = ([f.fragment_id for f in now.get_fragments()] == [f.fragment_id for f in old.get_fragments()]
                and now.schema == old.schema and now.count_rows() == old.count_rows())
    except Exception:  # noqa: BLE001 - the version before was cleaned up: not known
        same = False
    return "ReserveFragments" if same else "unnamed"


def _rows_added(tx: Any) -> int:
    """The rows a commit added, from its transaction alone (the version before it is gone): the
    rows of its new fragments where it changed no fragment it kept (an ingest's guarded commit, an
    append); 0 where that does not say (rows deleted as well: the operation's words instead)."""
    op = tx.operation if tx is not None else None
    kind = type(op).__name__
    if kind == "Append":
        return sum(int(f.physical_rows or 0) for f in op.fragments)
    if kind == "Update" and not op.updated_fragments and set(op.removed_fragment_ids) <= {GUARD_FRAGMENT_ID}:
        return sum(int(f.physical_rows or 0) for f in op.new_fragments)
    return 0


# Lance's operations in words, where a version's schema and rows do not say what it changed.
_WORDS = {"Append": "rows appended", "Update": "rows rewritten", "Rewrite": "fragments compacted",
          "CreateIndex": "index built", "Project": "schema metadata", "UpdateConfig": "table config",
          "Merge": "columns merged", "DataReplacement": "columns rewritten", "Delete": "rows deleted",
          "ReserveFragments": "fragment ids reserved (a compaction's first commit)",
          "unnamed": "an operation Lance does not name"}


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="seconds")
