"""The ``lakecurate`` command line. Every command is a thin wrapper over one library call."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import numbers
import os
import shlex
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from lakecurate.columns import describe_provenance
from lakecurate.errors import Terminated, removed_meanwhile, stopped_by
from lakecurate.images import MAX_DECODE_PIXELS
from lakecurate.graph import lakecurate_on
from lakecurate.lake import Lake, LakeError
from lakecurate.names import DEDUP_DEFAULT_METHODS, DEDUP_METHODS, DEDUP_OPTIONS, DEDUP_TEXT_METHODS, EVAL_LR
from lakecurate.names import EVAL_METRICS as METRIC_NAMES
from lakecurate.options import MOST, MOST_WORKERS, canonical_uri, half_the_memory, is_number
from lakecurate.store import CONFLICTS_RETRIED, conflicts_exhausted, store_problem


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a user can fix into a one-line message and exit code 1, not a traceback."""
    from lakecurate.encoders import EncoderError
    from lakecurate.ingest import IngestError

    def fail(message: str, as_json: bool) -> click.ClickException:
        if as_json:  # a script reading stdout gets JSON here too; the person, the one line on stderr
            echo_json({"error": message})
        return click.ClickException(message)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json")) or kwargs.get("fmt") == "json"  # sql --format json too
        where = kwargs.get("dest") or kwargs.get("lake") or kwargs.get("lake_uri") or "the lake"
        with _prints_to_stderr(as_json), _counts_conflicts():  # (the error's JSON too goes to the real stdout)
            try:
                return fn(*args, **kwargs)
            except (LakeError, IngestError, EncoderError) as exc:
                raise fail(str(exc), as_json) from None
            except (OSError, ValueError) as exc:
                problem = store_problem(exc)
                if problem is not None:  # the object store went away (or never answered) mid-command
                    lake = kwargs.get("lake") or kwargs.get("lake_uri") or where
                    raise fail(f"cannot use lake '{lake}': {problem}; what was committed is kept: run the command "
                               "again when the store answers", as_json) from None
                tries = conflicts_exhausted(exc)
                if tries is not None:
                    raise fail(f"{tries} commits conflicted; another writer kept committing to '{where}' at the same "
                               "time (each try was made again at its latest version): what was committed is kept; "
                               "run again", as_json) from None
                gone = removed_meanwhile(exc)
                if gone is not None:  # a version (or its files) cleanup removed while this command read it
                    raise fail(f"{gone} was removed while this command read it (a `lakecurate cleanup` in another "
                               "process, after a compact or a restore?); what was committed is intact: run it again, "
                               "and tag a version that a long command reads to keep it", as_json) from None
                if not isinstance(exc, OSError):
                    raise
                # A full disk is the user's to fix, and safe to retry: every commit is atomic, so what
                # was committed before the failed write is intact and a re-run resumes from it.
                if exc.errno != errno.ENOSPC and "no space left on device" not in str(exc).lower():
                    raise
                raise fail(f"no space left on device while writing {exc.filename or where}; free space and re-run: "
                           f"committed work is kept", as_json) from None

    return wrapper


def _plain(value: Any) -> Any:
    """``value`` made of JSON types: numpy values as Python ones, NaN/inf as null (JSON has none)."""
    import dataclasses

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # a numpy scalar or array
        return _plain(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a report says how it reads, where it does
        return _plain(value.to_dict() if callable(getattr(value, "to_dict", None)) else dataclasses.asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_JSON_OUT: list[Any] = []  # the real stdout, while a --json command sends every other print to stderr
_CONFLICTS_AT: list[int] = []  # store.CONFLICTS_RETRIED when the running command started


@contextlib.contextmanager
def _counts_conflicts() -> Any:
    """Commits a command retried after a conflict with another writer's (store.retry_on_conflict,
    at most 12 tries each) shown, not only logged: ``conflicts_retried`` in its --json result
    (:func:`echo_json`) and a line on stderr. Commits in this process (not a Ray worker's)."""
    _CONFLICTS_AT.append(CONFLICTS_RETRIED[0])
    try:
        yield
    finally:
        n = CONFLICTS_RETRIED[0] - _CONFLICTS_AT.pop()
        if n:
            click.echo(f"note: {n} commit{'s' if n > 1 else ''} conflicted with another writer's and "
                       f"{'were' if n > 1 else 'was'} made again at the latest version (a shared lake; "
                       "each commit tries at most 12 times)", err=True)


def _conflicts_retried() -> int | None:
    """Commits retried after a conflict since the running command started (None outside one)."""
    return CONFLICTS_RETRIED[0] - _CONFLICTS_AT[-1] if _CONFLICTS_AT else None


@contextlib.contextmanager
def _prints_to_stderr(on: bool) -> Any:
    """With ``--json``, stdout holds the JSON alone: what else prints there meanwhile (a user
    function's ``print()``, a library's chatter) goes to stderr, where the person still sees it."""
    if not on:
        yield
        return
    _JSON_OUT.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _JSON_OUT.pop()


def echo_json(value: Any) -> None:
    """Print ``value`` (a dict, a list, a report with ``to_dict``, a DataFrame) as JSON: the one
    emitter behind every ``--json``."""
    import pandas as pd  # already loaded with the lake

    if isinstance(value, pd.DataFrame):  # one object per row
        value = json.loads(value.to_json(orient="records", date_format="iso", default_handler=str))
    elif hasattr(value, "to_dict"):
        value = value.to_dict()
    retried = _conflicts_retried()
    if retried and isinstance(value, dict) and "error" not in value:  # (only where some were: see _counts_conflicts)
        value = {**value, "conflicts_retried": retried}
    click.echo(json.dumps(_plain(value), indent=2, default=str), file=_JSON_OUT[-1] if _JSON_OUT else None)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
allow_stale_option = click.option(
    "--allow-stale", is_flag=True,
    help="Go on when a decision this reads is stale (a stage upstream re-ran after it); warns instead of refusing.")


class Count(click.IntRange):
    """An IntRange with the upper bound of ``options.whole`` by default: click takes any Python int,
    and one past a C integer was an OverflowError traceback deep in a stage."""

    def __init__(self, min: int | None = None, max: int | None = MOST, **kw: Any) -> None:
        super().__init__(min, max, **kw)


WORKERS = Count(min=0, max=MOST_WORKERS)
SQL_ROWS = 10_000  # rows `lakecurate sql` prints by default (--limit)


class EnvBool(click.types.BoolParamType):
    """A flag's boolean that, read from the environment, says which variable held the bad value
    (LAKECURATE_PROGRESS=banana was reported as a bad --progress)."""

    def __init__(self, envvar: str):
        self.envvar = envvar

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            if ctx is not None and param is not None and \
                    ctx.get_parameter_source(param.name) == click.core.ParameterSource.ENVIRONMENT:
                self.fail(f"{value!r} in the environment variable {self.envvar} is not a boolean; "
                          "use 1 or 0 (or unset it)", param, ctx)
            raise


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf (click's range checks let nan through)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


class TargetType(click.ParamType):
    """A row budget: a fraction of the candidates in (0, 1] (1 = all of them), or a whole count > 1."""

    name = "FRACTION|COUNT"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | int:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            f = float(value)
        else:
            try:
                f = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number: give a fraction in (0, 1] or a whole count of rows > 1", param, ctx)
        from lakecurate.options import target

        try:
            target(f)  # the library's own rule, checked here before the lake is opened
        except LakeError:
            self.fail(f"{value!r} is neither a fraction in (0, 1] nor a whole count of rows > 1", param, ctx)
        return f if f <= 1 else int(f)


class BudgetType(click.ParamType):
    """Multiples of --steps, comma-separated (evaluate --budget): the library's own rule, checked
    before the lake is opened; the text is passed on as given."""

    name = "MULTIPLES"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from lakecurate.evaluate import parse_budgets

        try:
            parse_budgets(value)
        except LakeError as exc:
            self.fail(str(exc).removeprefix(f"--budget {value}: ").removeprefix(f"--budget {value!r}: "), param, ctx)
        return value


lake_argument = click.argument("lake", type=click.Path(file_okay=False))


# Characters a table cell shows escaped: control characters (a scraped caption's "\x1b]0;...\x07"
# set the terminal's title, "\x1b[2J" cleared it) and the bidi overrides (the rest of a row shown reversed).
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))} | {
    c: f"\\u{c:04x}" for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def _frame_text(df: Any, width: int) -> str:
    """A frame as a table for a terminal: a null is NULL in every column (pandas shows NaN in numeric
    ones, None in others), what a terminal would act on escaped (a caption's escape codes set its
    title), no cell wider than ``width`` (pandas' display option does not bound to_string: one
    100,000-character caption padded every line to it)."""
    from pandas.api.types import is_numeric_dtype

    shown = df.copy()
    for name in shown.columns:
        col = shown[name]
        if not is_numeric_dtype(col) or col.isna().any():  # (text: object, or pandas' own string dtype)
            shown[name] = col.astype(object).where(col.notna(), "NULL").map(
                lambda v: v.translate(_UNPRINTABLE) if isinstance(v, str) else v)
    shown.columns = [str(c).translate(_UNPRINTABLE) for c in shown.columns]
    return shown.to_string(index=False, max_colwidth=width)


def _cell(value: Any) -> str:
    """A table cell: floats to 4 decimals (a float32 read back prints 0.4713999927043915); what a
    terminal would act on (escape codes, bidi overrides) escaped, as ``\\x1b``."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return str(round(float(value), 4))
    return str(value).translate(_UNPRINTABLE)


def _echo_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    if not rows:
        click.echo("(no rows)")
        return
    columns = columns or list(rows[0])
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    heads = [_cell(c) for c in columns]  # (a column another writer named so: escaped too)
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))


class _OneLineUsageError(click.UsageError):
    """A bad option or argument, shown as one line (click would add the usage and a hint above it)."""

    def __init__(self, original: click.UsageError):
        super().__init__(original.format_message(), original.ctx)
        self.exit_code = original.exit_code

    def show(self, file: Any = None) -> None:
        hint = f" (see: {self.ctx.command_path} --help)" if self.ctx is not None else ""
        click.echo(f"Error: {self.format_message()}{hint}", err=True)


class _Group(click.Group):
    """The command group: usage errors of every command are one line on stderr, exit code 2 (with
    ``--json`` also ``{"error": ...}`` on stdout, as for every other error)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["lakecurate.json"] = "--json" in args
        try:  # the group's own options (--branch, --progress and their env variables) are parsed here
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:  # bare `lakecurate`: the help
            raise
        except click.UsageError as exc:  # (LAKECURATE_PROGRESS=bogus: usage text, no JSON error)
            raise _one_line(ctx, exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(ctx, exc) from None


def _one_line(ctx: click.Context, exc: click.UsageError) -> click.UsageError:
    """A usage error as one line on stderr, and with ``--json`` as ``{"error": ...}`` on stdout."""
    if isinstance(exc, _OneLineUsageError):
        return exc
    if ctx.meta.get("lakecurate.json"):
        echo_json({"error": exc.format_message()})
    return _OneLineUsageError(exc)


def _branch_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--branch (or LAKECURATE_BRANCH) checked as the group parses it: a bad name is a bad option,
    exit code 2 (the lake refused it later, exit code 1)."""
    from lakecurate.store import BRANCH_RE, NAME_RULE

    if value is not None and not BRANCH_RE.match(value):
        where = ("in the environment variable LAKECURATE_BRANCH "
                 if ctx.get_parameter_source("branch") == click.core.ParameterSource.ENVIRONMENT else "")
        raise click.BadParameter(f"branch name {value!r} {where}is not valid; use {NAME_RULE}", ctx, param)
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lakecurate")
@click.option("--branch", envvar="LAKECURATE_BRANCH", metavar="NAME", callback=_branch_name,
              help="Work on this branch of the lake (default: main; env LAKECURATE_BRANCH). "
                   "Make one with: lakecurate branch create LAKE NAME")
@click.option("--progress/--no-progress", default=None, envvar="LAKECURATE_PROGRESS", type=EnvBool("LAKECURATE_PROGRESS"),
              help="Show progress: a bar on a terminal, else a log line on stderr every 10 s and at the end "
                   "(default: a bar on a terminal, else lines only for runs over 10 s; env LAKECURATE_PROGRESS=1/0).")
def main(branch: str | None, progress: bool | None) -> None:
    """Curate image-text training data on a Lance data lake.

    A LAKE is a folder (or object-store URI) holding the Lance table `pairs`; LanceDB opens it too:
    lancedb.connect(LAKE).open_table("pairs").
    """
    from lakecurate.options import speaking
    from lakecurate.progress import set_default

    set_default(progress)  # every stage's bar follows it unless the command passes progress= itself
    # the library's messages name the flags a person typed (the Lake methods it calls would say batch_size)
    click.get_current_context().with_resource(speaking("cli"))


def entry() -> Any:
    """The ``lakecurate`` program: :func:`main` with SIGTERM and Ctrl-C (SIGINT) turned into
    :class:`Terminated` (exit 143 and 130, one line each): SIGTERM's default ends the process at
    once (a killed run's claims held its fragments from other hosts' runs for two minutes, its
    export left a staging folder for the next export to remove), and click read Ctrl-C as "Aborted!",
    exit 1, as any failure. Only the program: a process that calls ``main`` (a test, a notebook)
    keeps its own handlers, and this puts back the ones it found when ``main`` is done. Once the
    program is stopping, SIGTERM is ignored (its cleanup runs: a supervisor's SIGTERM after a
    Ctrl-C raised again in it) and a second Ctrl-C exits at once, without cleaning up."""
    def stopped(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, again)
        click.echo(f"lakecurate: {stopped_by(signum)}; what was committed is kept: run the same command again to go "
                   "on from there", err=True)
        raise Terminated(128 + signum)

    def again(signum: int, frame: Any) -> None:
        click.echo("lakecurate: interrupted again: exiting now, without cleaning up (the next run takes over what "
                   "this one held)", err=True)
        os._exit(130)

    before = {sig: signal.signal(sig, stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return main()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def open_lake(uri: str, *, create: bool = False) -> Lake:
    """The lake at ``uri`` on the branch given by ``lakecurate --branch`` (main by default)."""
    ctx = click.get_current_context(silent=True)
    branch = ctx.find_root().params.get("branch") if ctx is not None else None
    return (Lake.create if create else Lake.open)(uri, branch=branch)


# --------------------------------------------------------------------------- ingest
def print_ingest_report(report: Any) -> None:
    d = report.to_dict()
    rate = d["written"] / d["seconds"] if d["seconds"] else 0.0
    click.echo(
        f"ingested {d['written'] - d['replaced'] - d['updated']} new pairs from {d['kind']} '{d['source']}' in {d['seconds']:.1f}s "
        f"({rate:.0f} pairs/s); {d['skipped_existing']} already in the lake; "
        f"status: " + (", ".join(f"{k} {v}" for k, v in sorted(d["status"].items())) or "nothing written")
    )
    if d["updated"]:
        click.echo(f"updated {d['updated']} pairs that changed in the source, in place (same ids; the earlier version "
                   "keeps their old values; their derived columns are computed by the next runs)")
    for note in d["warnings"]:
        click.echo(f"note: {note}")
    if d["replaced"]:
        click.echo(f"replaced {d['replaced']} error rows in place (same ids; their derived columns are computed by the next runs)")
    if d.get("errors_removed"):
        markers = d.get("markers_removed", 0)
        click.echo(f"removed {d['errors_removed']} error rows the source no longer gives (fixed under another key, "
                   f"or gone)" + (f", {markers} of them saying where a shard broke: it now reads to its end" if markers else ""))
    if d["skipped_errors"]:
        click.echo(f"{d['skipped_errors']} of them errors: re-run with --retry-errors to read those pairs again "
                   f"(after fixing the cause, e.g. --image-dir)")
    if d.get("errors_unchanged"):
        click.echo(f"{d['errors_unchanged']} error rows read again are the same errors: left as they were (fix their "
                   "cause first; the ingest_error of each says what it is)")
    if d["content_present"]:
        click.echo(f"{d['content_present']} new pairs hold images already in the lake under another source or key "
                   f"(same content_hash): a pair is identified by source + key, so moved or renamed files are new "
                   f"pairs; dedup groups them")
    rows = [{"reason": r, "severity": s, "rows": n} for r, s, n in report.reason_rows()]
    if rows:
        click.echo("")
        _echo_table(rows)
    if d["ignored_files"]:
        shown = ", ".join(d["ignored_files"][:5]) + (" ..." if len(d["ignored_files"]) > 5 else "")
        click.echo(f"\nnot pairs (no image extension and no caption sidecar) or hidden, left alone: {len(d['ignored_files'])}: {shown}")


def _echo_elsewhere(rep: Any, stage: str) -> None:
    """The note of a per-row run that left fragments to another run computing them now."""
    if rep.fragments_elsewhere:
        click.echo(f"note: {rep.fragments_elsewhere} fragments were left to another {stage} of these columns running "
                   f"now ({', '.join(rep.elsewhere)}: host and process); run this again once it ends to fill any it "
                   "did not finish", err=True)


@main.command()
@lake_argument
@click.argument("source")
@click.option("--kind", type=click.Choice(["folder", "manifest", "webdataset"]), help="Default: detected from SOURCE.")
@click.option("--mode", type=click.Choice(["append", "overwrite"]), default="append", show_default=True,
              help="append skips pairs already in the lake; overwrite makes a version holding only SOURCE.")
@click.option("--retry-errors", is_flag=True,
              help="Re-read the pairs of SOURCE whose rows have ingest_status 'error' and replace those rows (same id).")
@click.option("--update", is_flag=True,
              help="Re-read the pairs of SOURCE whose caption or image file size changed since they were ingested "
                   "and rewrite their rows in place (same id); without it they are only counted.")
@click.option("--image-dir", help="Manifest only: folder that relative image paths resolve against (default: the manifest's folder).")
@click.option("--root", help="Manifest only: image paths must stay inside this folder (default: the image dir).")
@click.option("--image-col", help="Manifest column with the image path (default: detected).")
@click.option("--caption-col", help="Manifest column with the caption (default: detected).")
@click.option("--key-col", help="Manifest column with a unique key (default: the image path).")
@click.option("--max-pixels", type=Count(min=1), help=f"Images declaring more pixels are flagged decompression_bomb, not decoded (default and most: "
              f"{MAX_DECODE_PIXELS}, what the image stages decode).")
@click.option("--max-bytes", type=Count(min=1), help="Larger files are flagged file_too_large, not stored.")
@click.option("--max-caption-chars", type=Count(min=1), help="Longer captions are flagged caption_too_long (kept whole).")
@click.option("--verify", type=click.Choice(["header", "decode"]),
              help="header (default): header + end marker; decode: also decode, to catch corrupt data (slower).")
@click.option("--workers", type=Count(min=1, max=MOST_WORKERS), help="Reader threads (per Ray task with --engine ray).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: one task per shard (or Arrow file), each committing its own chunks; RAY_ADDRESS names a "
                   "cluster whose nodes all reach SOURCE and LAKE.")
@json_option
@_friendly_errors
def ingest(lake: str, source: str, kind: str | None, mode: str, retry_errors: bool, update: bool, image_dir: str | None,
           root: str | None, image_col: str | None, caption_col: str | None, key_col: str | None, engine: str,
           as_json: bool, **limits: Any) -> None:
    """Ingest image-text pairs from SOURCE into LAKE (created if missing).

    SOURCE is a folder of images with .txt/.json caption sidecars, a CSV/TSV/Parquet/Arrow/JSONL
    manifest (a Parquet/Arrow image column may hold the bytes; a Parquet/Arrow file named without
    its extension and a Lance table's folder, as export writes them, are read as manifests too), or
    WebDataset .tar shards (a folder of them, a glob, or shard-{000..009}.tar). Bad inputs become rows flagged with a reason; re-running
    adds nothing new; --retry-errors re-reads the rows that failed; pairs whose caption or image
    changed in SOURCE are counted, and --update rewrites them.

    Example: lakecurate ingest ./lake sample_data/   (or shards/ --engine ray: one task per shard)
    """
    from dataclasses import replace

    from lakecurate.ingest import IngestError, IngestOptions, check_options, open_source, refuse_source_in_lake

    opts = replace(IngestOptions(), **{k: v for k, v in limits.items() if v is not None})
    if retry_errors and mode != "append":
        raise IngestError("--retry-errors replaces error rows of an appended source; drop --mode overwrite")
    if update and mode != "append":
        raise IngestError("--update rewrites the pairs of an appended source that changed in the source; it cannot be "
                          "used with --mode overwrite (which reads every pair again): drop one of them")
    # An unusable source or option fails here, before the lake is created.
    check_options(opts)
    refuse_source_in_lake(lake, source)
    open_source(source, kind, root=root, image_col=image_col, caption_col=caption_col, key_col=key_col,
                image_dir=image_dir)
    report = open_lake(lake, create=True).ingest(source, kind=kind, mode=mode, retry_errors=retry_errors, update=update, root=root,
                                                 image_col=image_col, caption_col=caption_col, key_col=key_col,
                                                 image_dir=image_dir, options=opts, engine=engine)
    if as_json:
        echo_json(report)
    else:
        print_ingest_report(report)


# --------------------------------------------------------------------------- embed
engine_option = click.option(
    "--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="Where fragments are computed: this process, or Ray tasks (RAY_ADDRESS names a cluster; "
         "else a local Ray). Commits are the same either way.")


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--model/--pretrained/--checkpoint/--name, shared by every command that loads an encoder."""
    for opt in reversed([
        click.option("--model", default="offline", show_default=True,
                     help="offline | tiny-random (tests; meaningless) | an open_clip architecture (ViT-B-32, or ViT-B-32:TAG)."),
        click.option("--pretrained", help="open_clip pretrained tag (default: laion2b_s34b_b79k where it exists)."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), help="Local weights file for the architecture."),
        click.option("--name", help="Column prefix (default: from the model, e.g. clip_vitb32_laion2b)."),
    ]):
        fn = opt(fn)
    return fn


def explain_encoder(spec_arch: str, meaningless: bool) -> None:
    if meaningless:
        click.echo("note: tiny-random is randomly initialised: its embeddings and scores are meaningless (for tests).", err=True)
    elif spec_arch.startswith("offline"):
        click.echo("note: using the offline encoder (EfficientNet-Lite0 + MiniLM with trained projection heads), "
                   "a small model with weaker semantics than CLIP; use --model ViT-B-32 where CLIP weights are available.",
                   err=True)


@main.command()
@lake_argument
@model_options
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--batch-size", type=Count(min=1), default=64, show_default=True)
@click.option("--workers", type=WORKERS, help="Decode processes (default: half the cores, all but two beside a GPU; "
              "0 decodes in this process); with --engine ray, each GPU actor's own (default: its GPU's share of the node's "
              "CPUs, but one).")
@click.option("--recompute", is_flag=True, help="Drop and recompute these columns (e.g. after changing the config).")
@click.option("--caption-col", default="caption", show_default=True,
              help="Score another caption column (e.g. caption_coca from recaption) against the images this encoder "
                   "embedded: PREFIX_COL_text, PREFIX_COL_score.")
@click.option("--decode", type=click.Choice(["cpu", "device"]), default="cpu", show_default=True,
              help="Where JPEGs are decoded, resized and cropped: by the decode processes (Pillow), or on the model's "
                   "device (nvJPEG with --device cuda; pixels within a few grey levels of Pillow's). Other images are "
                   "always decoded by the processes.")
@click.option("--tokenize", type=click.Choice(["auto", "model", "readers"]), default="auto", show_default=True,
              help="Where captions are tokenized: in the model's process, or by the decode processes (auto: by them "
                   "with --device cuda --decode device, where they only parse headers). The tokens are the same.")
@engine_option
@json_option
@_friendly_errors
def embed(lake: str, model: str, pretrained: str | None, checkpoint: str | None, name: str | None, device: str,
          precision: str, batch_size: int, workers: int | None, recompute: bool, caption_col: str, decode: str,
          tokenize: str, engine: str, as_json: bool) -> None:
    """Add image/text embedding and alignment-score columns to LAKE (rows that lack them, and the
    fragments whose image or caption was rewritten since).

    Columns: PREFIX_image, PREFIX_text (L2-normalised float16 vectors), PREFIX_score (cosine) and
    PREFIX_error (why a row has none). Only the new columns' bytes are written; re-running is a
    no-op; rows appended later, and fragments whose inputs were rewritten since (stale), are the
    next run's only work; --recompute: every row; a killed run resumes.

    Example: lakecurate embed ./lake --model offline
    """
    from lakecurate.encoders import resolve

    the_lake = open_lake(lake)  # a missing lake is the one error line, before any note
    spec = resolve(model, pretrained, checkpoint, name)
    explain_encoder(spec.arch, spec.meaningless)
    rep = the_lake.embed(model, pretrained=pretrained, checkpoint=checkpoint, name=name, device=device,
                                precision=precision, batch_size=batch_size, workers=workers, recompute=recompute,
                                engine=engine, caption_col=caption_col, decode=decode, tokenize=tokenize)
    if as_json:
        echo_json(rep)
        return
    rate = rep.rows_embedded / rep.seconds if rep.seconds else 0.0
    missing = f"{rep.errors} without embedding (see {rep.columns['error']}); " if "error" in rep.columns else ""
    again = f" ({rep.rows_refreshed} of them again: their fragments' inputs changed since)" if rep.rows_refreshed else ""
    click.echo(f"embedded {rep.rows_embedded} rows{again} in {rep.fragments_done} fragments ({rate:.1f} rows/s); "
               f"{rep.rows_resumed} resumed from a checkpoint; {missing}columns: {', '.join(rep.columns.values())}")
    _echo_elsewhere(rep, "embed")


@main.command()
@lake_argument
@click.argument("query")
@click.option("-k", type=Count(min=1), default=10, show_default=True, help="How many pairs.")
@click.option("--embedding", "--prefix", "prefix",
              help="Which embedding (its column prefix; default: the only one). --prefix is the same.")
@click.option("--target", type=click.Choice(["image", "text"]), default="image", show_default=True,
              help="Compare with the pairs' image vectors or caption vectors.")
@click.option("--where", help="SQL filter applied before the search, e.g. \"ingest_status = 'ok'\".")
@click.option("--text", "as_text", is_flag=True, help="QUERY is words, even where a file of that name is in this folder.")
@click.option("--version", "at_version", help="Search an older version (number, tag or branch:number).")
@json_option
@_friendly_errors
def search(lake: str, query: str, k: int, prefix: str | None, target: str, where: str | None, as_text: bool,
           at_version: str | None, as_json: bool) -> None:
    """Find the pairs nearest to QUERY: a text, or the path of an image file.

    Example: lakecurate search ./lake "a cat looking to the side" -k 5
    """
    the_lake = open_lake(lake)
    df = the_lake.search(query, k, prefix=prefix, target=target, where=where, option="--embedding NAME",
                         text=as_text, version=_version_arg(the_lake, at_version))
    for note in df.attrs.get("notes", []):
        click.echo(f"note: {note}", err=True)
    if as_json:
        echo_json(df)
    else:
        click.echo(_frame_text(df, 70) if len(df) else "(no rows)")


# --------------------------------------------------------------------------- dedup
# The dedup options that only one method reads (given for a method the run does not compute, they
# were taken and ignored without a word): click's parameter name -> its method.
_METHOD_OPTIONS = {flag[2:].replace("-", "_"): m for m, flags in DEDUP_OPTIONS.items() for flag in flags.values()}


def _check_dedup_options(methods: list[str], phash_search: str, copy_search: str) -> None:
    """Options given on the command line for a method this run does not compute, or a search's
    cosine without that search, are refused (they were ignored)."""
    from lakecurate.dedup import METHODS

    ctx = click.get_current_context()
    run = set(METHODS) if "all" in methods else set(methods)
    given = [n for n in _METHOD_OPTIONS if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    # --no-flips sets no key of DEDUP_OPTIONS (the fix commands write it apart) but is read by two methods
    if ctx.get_parameter_source("no_flips") == click.core.ParameterSource.COMMANDLINE and not {"phash", "semantic"} & run:
        raise click.UsageError(f"--no-flips is read by the phash/semantic method, which --method {','.join(methods)} "
                               "does not run: add phash or semantic to --method, or drop --no-flips")
    for name in given:
        flag = "--" + name.replace("_", "-")
        if _METHOD_OPTIONS[name] not in run:
            raise click.UsageError(f"{flag} is read by the {_METHOD_OPTIONS[name]} method, which --method "
                                   f"{','.join(methods)} does not run: add {_METHOD_OPTIONS[name]} to --method, or drop {flag}")
        search = {"phash_cosine": phash_search, "copy_cosine": copy_search}.get(name)
        if search is not None and search != "clusters":
            method = _METHOD_OPTIONS[name]
            raise click.UsageError(f"{flag} is read by --{method}-search clusters only (this run: --{method}-search {search})")


def _methods(value: str) -> list[str]:
    from lakecurate.dedup import METHODS

    out = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in out if m not in (*METHODS, "all")]
    if bad or not out:
        raise click.BadParameter(f"{', '.join(bad) or value!r}: choose from {', '.join(METHODS)} or all (comma-separated)")
    return out


def _decided_by(keep_from: list[str]) -> str:
    """Which methods' groups made dup_keep; none when only caption links ran on a lake without image
    groups (it printed "groups from " and nothing)."""
    if keep_from:
        return f"groups from {', '.join(keep_from)}"
    return (f"no groups decide: {' and '.join(DEDUP_TEXT_METHODS)} links are reported only, unless in --keep-from; "
            f"add an image method, e.g. --method {','.join(DEDUP_DEFAULT_METHODS)}")


@main.command()
@lake_argument
@click.option("--method", "method", default=",".join(DEDUP_DEFAULT_METHODS), show_default=True,
              help=f"Comma-separated: {', '.join(DEDUP_METHODS)}, or all ({' and '.join(DEDUP_TEXT_METHODS)} link "
              "captions: reported only, unless in --keep-from).")
@click.option("--embedding", help="Embedding columns for semantic/caption dedup and the keep rule's score "
              "(default: the lake's only embedding).")
@click.option("--phash-distance", type=click.IntRange(0, 64), default=8, show_default=True, help="Max differing bits of 64 for phash links.")
@click.option("--no-flips", is_flag=True, help="Do not link mirror images.")
@click.option("--phash-search", type=click.Choice(["all", "clusters"]), default="all", show_default=True,
              help="all: every hash against every other (exact; ~N^2, minutes at 10M rows); clusters: identical hashes "
                   "anywhere, near ones among each row's 32 most similar rows within --phash-cosine (linear; needs an embedding).")
@click.option("--phash-cosine", type=FiniteFloat(-1, 1), help="With --phash-search clusters: image cosine above which "
              "hashes are compared (default: per model, 0.8 CLIP, 0.45 offline).")
@click.option("--semantic-threshold", type=FiniteFloat(-1, 1), help="Image cosine for semantic links (default: per model, 0.95 CLIP, 0.85 offline).")
@click.option("--confirm-cosine", type=FiniteFloat(-1, 1), help="Lower image cosine that links when the hashes are within "
              "--confirm-distance bits (default: per model, 0.85 CLIP, 0.70 offline).")
@click.option("--confirm-distance", type=click.IntRange(0, 64), default=16, show_default=True)
@click.option("--caption-threshold", type=FiniteFloat(-1, 1), default=0.98, show_default=True, help="Caption cosine for caption links.")
@click.option("--minhash-threshold", type=FiniteFloat(0.01, 1), default=0.35, show_default=True,
              help="minhash: Jaccard of caption 5-gram sets with the group's most connected caption (templated captions).")
@click.option("--keep-from", default="exact,phash,semantic,copy,verify", show_default=True,
              help="Methods whose groups decide dup_keep, among those computed (caption and minhash duplicates are reported "
                   "only, unless listed).")
@click.option("--copy-distance", type=click.IntRange(0, 64), default=6, show_default=True,
              help="Max differing bits of 64 for copy links (any of 8 turned/mirrored hashes against any of 8).")
@click.option("--copy-search", type=click.Choice(["all", "clusters"]), default="all", show_default=True,
              help="all: every row's 8 hashes against every other's (exact; out of reach above a few million rows); "
                   "clusters: identical hashes anywhere, near ones among each row's 32 most similar rows within --copy-cosine "
                   "(linear; needs an embedding; misses copies whose hashes are near but not identical when the embedding "
                   "calls the images different).")
@click.option("--copy-cosine", type=FiniteFloat(-1, 1), help="With --copy-search clusters: image cosine above which "
              "copy hashes are compared (default: per model, 0.8 CLIP, 0.45 offline).")
@click.option("--verify-neighbors", type=Count(min=1), default=5, show_default=True,
              help="verify: each new row's nearest image embeddings that are candidate copies.")
@click.option("--verify-cosine", type=FiniteFloat(-1, 1), help="verify: lowest cosine of a candidate "
              "(default: per model, 0.7 CLIP, 0.4 offline).")
@click.option("--verify-inliers", type=Count(min=4), default=50, show_default=True,
              help="verify: keypoints that must agree on one transform for a verified copy.")
@click.option("--workers", type=WORKERS, help="Hashing processes (default: every core; 0 hashes in this process).")
@click.option("--recompute", is_flag=True, help="Drop and recompute the chosen methods' columns (e.g. new thresholds).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: the image hashes on Ray actors, the semantic/caption joins a Ray task per group of clusters.")
@json_option
@_friendly_errors
def dedup(lake: str, method: str, embedding: str | None, phash_distance: int, no_flips: bool, phash_search: str, phash_cosine: float | None,
          semantic_threshold: float | None, confirm_cosine: float | None, confirm_distance: int,
          caption_threshold: float, minhash_threshold: float, keep_from: str, copy_distance: int, copy_search: str,
          copy_cosine: float | None, verify_neighbors: int,
          verify_cosine: float | None, verify_inliers: int, workers: int | None, recompute: bool, engine: str,
          as_json: bool) -> None:
    """Find duplicate groups in LAKE and mark one member of each to keep (rows are never deleted).

    Writes dup_exact_group, dup_pair_group, dup_phash_group, dup_semantic_group, dup_caption_group,
    dup_minhash_group (templated and near-identical captions), dup_copy_group, dup_verify_group (the id of the member each group keeps) and dup_group,
    dup_group_size, dup_keep, dup_reason ("METHOD:KEPT_ID"). Kept: highest alignment score (within 0.02
    of the group's best: equal), then most pixels, then earliest ingested. Every link found is a row of the dup_pairs table (method, score,
    detail): why two rows are one group. copy and verify find turned, letterboxed, heavily cropped
    and framed copies (verify: local features on candidate pairs; needs an embedding).
    Re-running checks only rows added since the last run against all the others.

    Example: lakecurate dedup ./lake --method all
    """
    _check_dedup_options(_methods(method), phash_search, copy_search)
    lk = open_lake(lake)
    rep = lk.dedup(_methods(method), embedding=embedding, phash_distance=phash_distance, flips=not no_flips,
                                phash_search=phash_search, phash_cosine=phash_cosine, semantic_threshold=semantic_threshold, confirm_cosine=confirm_cosine,
                                confirm_distance=confirm_distance, caption_threshold=caption_threshold,
                                minhash_threshold=minhash_threshold,
                                keep_from=_methods(keep_from), copy_distance=copy_distance, copy_search=copy_search,
                                copy_cosine=copy_cosine,
                                verify_neighbors=verify_neighbors, verify_cosine=verify_cosine,
                                verify_inliers=verify_inliers, workers=workers, recompute=recompute, engine=engine)
    for note in rep.warnings:
        click.echo(f"warning: {note}", err=True)
    if as_json:
        echo_json(rep)
        return
    _echo_table([{"method": m.method, "rows": m.rows, "new rows": m.new_rows, "links": m.pairs, "groups": m.groups,
                  "duplicates": m.duplicates, "fragments written": m.fragments_written, "seconds": f"{m.seconds:.1f}"}
                 for m in rep.methods])
    click.echo(f"\nkeep: {rep.kept} of {rep.rows} rows; {rep.dropped} marked dup_keep = false "
               f"({_decided_by(rep.keep_from)}); {rep.hashed} images hashed; {rep.seconds:.1f} s")
    if rep.flat:
        click.echo(f"note: {rep.flat} images have too little detail for a perceptual hash (a solid colour, a plain "
                   "gradient): phash and copy leave them out; exact and semantic still compare them")
    if rep.dropped:
        click.echo(f"see them: {lakecurate_on(lk)} sql {shlex.quote(lake)} \"SELECT key, dup_reason FROM pairs WHERE NOT dup_keep LIMIT 20\"")


# --------------------------------------------------------------------------- recaption
@main.command()
@lake_argument
@click.option("--model", default="tiny-random-coca", show_default=True,
              help="An open_clip CoCa (coca_ViT-B-32, coca_ViT-L-14), a local Hugging Face image-to-text checkpoint "
              "directory (BLIP, GIT, Florence-2...), or tiny-random-coca (tests).")
@click.option("--pretrained", help="open_clip pretrained tag (default: the first the model has).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Local weights file instead of a tag.")
@click.option("--name", help="Column name suffix: caption_NAME, lowercase letters and digits (default from the model and tag).")
@click.option("--max-tokens", type=click.IntRange(1, 512), default=30, show_default=True,
              help="Most new tokens per caption (CoCa: at most 75).")
@click.option("--temperature", type=click.FloatRange(0, 5), default=0.0, show_default=True,
              help="0: greedy (deterministic); above 0: top-k sampling, seeded.")
@click.option("--top-k", type=Count(min=1), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=Count(min=1), help="Rows per batch (default: 16 for CoCa, 256 for an endpoint).")
@click.option("--workers", type=WORKERS, help="Decode processes (default: half the cores); with --engine "
              "ray, each GPU actor's own (default: its GPU's share of the node's CPUs, but one).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--recompute", is_flag=True, help="Replace the column written with other settings.")
@click.option("--retry-errors", is_flag=True,
              help="Compute again the rows whose caption_NAME is null with an error set (an endpoint that failed "
              "them: down, 500s, timeouts), keeping every caption; then fill new rows as usual.")
@click.option("--endpoint", help="An OpenAI-compatible server's base URL (vLLM, llama.cpp, Ollama, hosted): "
              "its model captions or rephrases instead of a local CoCa.")
@click.option("--api-model", help="The model the endpoint serves.")
@click.option("--mode", type=click.Choice(["caption", "rephrase"]), default="caption", show_default=True,
              help="caption: a vision-language model describes the image; rephrase: a text model rewrites the caption.")
@click.option("--prompt", help="Endpoint: the instruction, with {column} placeholders filled per row (rephrase: "
              "must name the caption, e.g. {caption}); Hugging Face checkpoint: the text prefix or task token "
              "(Florence-2: <MORE_DETAILED_CAPTION>). Default: see the README.")
@click.option("--concurrency", type=Count(min=1), default=32, show_default=True, help="Requests in flight.")
@click.option("--timeout", type=click.FloatRange(0, 3600, min_open=True), default=30.0, show_default=True)
@click.option("--retries", type=Count(min=0), default=4, show_default=True)
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="The environment variable holding the API key (read if set; never stored or printed).")
@json_option
@_friendly_errors
def recaption(lake: str, model: str, pretrained: str | None, checkpoint: str | None, name: str | None,
              max_tokens: int, temperature: float, top_k: int, seed: int, device: str, batch_size: int | None,
              workers: int | None, engine: str, recompute: bool, endpoint: str | None, api_model: str | None,
              mode: str, prompt: str | None, concurrency: int, timeout: float, retries: int, api_key_env: str,
              retry_errors: bool, as_json: bool) -> None:
    """Add a synthetic caption for every image of LAKE as the column caption_NAME (+ _error).

    The original caption is never modified; the new column is a caption like any other (recipes,
    embed, export can use it). Re-runs fill only rows that lack it; a killed run resumes; rows an
    endpoint failed keep their error until a run with --retry-errors computes them again.

    Example: lakecurate recaption ./lake --model coca_ViT-B-32 --pretrained mscoco_finetuned_laion2b_s13b_b90k
    """
    from lakecurate.captioners import check_name
    from lakecurate.recaption import misplaced_options

    # what needs no lake is checked before it is opened: a usage error (exit 2, as click's own checks)
    try:
        check_name(name)
    except LakeError as exc:
        raise click.BadParameter(str(exc).removeprefix("--name "), param_hint="'--name'") from None
    ctx = click.get_current_context()
    given = [p for p in ctx.params if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    problem = misplaced_options(given, endpoint is not None)
    if problem:
        raise click.UsageError(problem)
    rep = open_lake(lake).recaption(model, pretrained=pretrained, checkpoint=checkpoint, name=name,
                                    max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed,
                                    device=device, batch_size=batch_size, workers=workers, engine=engine,
                                    recompute=recompute, endpoint=endpoint, api_model=api_model, mode=mode,
                                    prompt=prompt, concurrency=concurrency, timeout=timeout, retries=retries,
                                    api_key_env=api_key_env, retry_errors=retry_errors)
    if as_json:
        echo_json(rep)
        return
    for note in rep.warnings:
        click.echo(f"warning: {note}", err=True)
    if rep.meaningless:
        click.echo("note: tiny-random-coca is randomly initialised: its captions mean nothing (tests only)", err=True)
    click.echo(f"{rep.column}: {rep.captioned} rows captioned, {rep.errors} errors (of {rep.rows + rep.rows_resumed} "
               f"rows: {rep.rows_resumed} resumed" + (f", {rep.retried} errors computed again" if retry_errors else "")
               + (f", {rep.retries} retries" if endpoint else "") + f") in {rep.fragments} fragments, "
               f"{rep.seconds:.1f} s (model load {rep.model_load_seconds:.1f} s)")
    if rep.retry_command:
        click.echo(f"{rep.endpoint_errors} rows of {rep.column} have no caption because the endpoint failed them "
                   f"({rep.column}_error says why); once it answers, compute them again with:\n  {rep.retry_command}")
    _echo_elsewhere(rep, "recaption")


# --------------------------------------------------------------------------- signals
@main.command("signals")
@lake_argument
@click.option("--caption/--no-caption", default=True, show_default=True, help="Caption checks, privacy, language.")
@click.option("--image/--no-image", default=True, show_default=True, help="Perceptual hashes, sharpness, entropy, colour.")
@click.option("--copy", is_flag=True, help="Copy hashes: 8 pHashes of the picture inside its uniform surround, turned and mirrored.")
@click.option("--faces", is_flag=True, help="Faces (YuNet): img_faces, img_face_boxes, img_face_scores.")
@click.option("--text", is_flag=True, help="Text in the image (PP-OCRv5 detection): img_text_share, img_text_lines.")
@click.option("--redact", is_flag=True, help="caption_redacted: the caption with e-mail addresses and phone numbers "
                                              "replaced (what a recipe with redact = true writes).")
@click.option("--workers", type=WORKERS, help="Decode processes (default: every core).")
@click.option("--recompute", is_flag=True, help="Every row again, not only new ones: the chosen kinds' columns are "
                                                 "replaced (e.g. made by an older lakecurate).")
@engine_option
@json_option
@_friendly_errors
def signals_cmd(lake: str, caption: bool, image: bool, copy: bool, faces: bool, text: bool, redact: bool,
                workers: int | None, recompute: bool, engine: str, as_json: bool) -> None:
    """Compute per-row signal columns of LAKE where they are missing (on a re-run: new rows, and the
    fragments whose inputs were rewritten since; --recompute: every row).

    Recipes compute the signals they need by themselves; this computes them ahead (or the ones no
    recipe step asked for yet, such as faces before export --blur-faces).

    Example: lakecurate signals ./lake --faces
    """
    kinds = [k for k, on in (("caption", caption), ("image", image), ("copy", copy), ("faces", faces), ("text", text),
                             ("redact", redact)) if on]
    if not kinds:
        raise click.UsageError("no signal chosen; e.g. lakecurate signals LAKE --faces")
    done = open_lake(lake).signals(kinds, workers=workers, recompute=recompute, engine=engine)
    if as_json:  # rows computed per kind (as it was), and each kind's run
        echo_json({**done, "runs": done.runs})  # (each run's report as RunReport.to_dict says)
        return
    _echo_table([{"signals": k, "rows computed": rep.computed,
                  "of them again": f"{rep.rows_refreshed} (inputs changed since)" if rep.rows_refreshed else "-",
                  "resumed": rep.rows_resumed, "fragments": rep.fragments} for k, rep in done.runs.items()])
    for k, rep in done.runs.items():
        _echo_elsewhere(rep, f"signals --{k}")


# --------------------------------------------------------------------------- curate
@main.command()
@lake_argument
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True,
              help="Decide and show what each step would drop (counts, examples, rows either side of each cut, "
                   "kept rows at other cuts); write nothing.")
@click.option("--set", "sets", multiple=True, metavar="STEP.PARAM=VALUE",
              help="Override a parameter for this run (repeatable), e.g. --set alignment.min_percentile=20; "
                   "STEP is a filter name, a reason or a step number. Recorded in the provenance and the tag.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: the signals and dedup the recipe needs run on Ray; the decisions are made here.")
@json_option
@_friendly_errors
def curate(lake: str, recipe: str, dry_run: bool, sets: tuple[str, ...], engine: str, as_json: bool) -> None:
    """Apply the filter RECIPE (TOML) to LAKE: keep / drop_reason columns and a tag of the result.

    Computes the caption and image signals and dedup groups the recipe needs (embeddings must
    exist), marks each row keep or drops it with the first failing step's reason, and tags the
    version NAME-HASH-vVERSION (NAME-set-HASH-vVERSION with --set) so the exact set can be
    reopened. Same recipe again: no work. Filters: ingest_error, duplicate, caption_missing,
    caption_length, caption_filename, caption_url, caption_boilerplate, caption_repeat,
    caption_nonprintable, caption_template, language, image_size, aspect, blur, dark, low_contrast,
    low_information, grayscale, faces, pii, alignment, zero_shot, review (human verdicts), and over any column
    (user features too): column (min/max/equals/in/not_null) and sql (where = "a SQL condition"
    rows must meet).

    Example: lakecurate curate ./lake basic --dry-run --set alignment.min_percentile=20
    """
    from lakecurate.curate import parse_override

    overrides = dict(parse_override(s) for s in sets)
    lk = open_lake(lake)
    rep = lk.curate(recipe, dry_run=dry_run, overrides=overrides, engine=engine)
    if as_json:
        echo_json(rep)
        return
    rows = [{"step": reason, "dropped": n, "share": f"{n / rep.rows:.1%}" if rep.rows else "-"} for reason, n in rep.dropped.items()]
    if dry_run:
        for r, v in zip(rows, rep.steps):
            r["first dropped"] = ", ".join(str(e.get("key") or e["id"]) + (f" ({e['value']:.3g})" if e["value"] is not None else "")
                                           for e in v.examples)
    _echo_table(rows, ["step", "dropped", "share"] + (["first dropped"] if dry_run else []))
    for note in rep.warnings:
        click.echo(f"warning: {note}", err=True)
    # kept is not a drop: its own line, not a row under "dropped"
    click.echo(f"{'would keep' if dry_run else 'kept'} {rep.kept} of {rep.rows} rows"
               + (f" ({rep.kept / rep.rows:.1%})" if rep.rows else ""))
    if rep.overrides:
        click.echo("overrides: " + ", ".join(f"{k}={v!r}" for k, v in rep.overrides.items()))
    if dry_run:
        _echo_whatifs(rep)
        click.echo(f"\ndry run of recipe {rep.recipe} ({rep.recipe_hash}) on version {rep.version}: nothing written "
                   f"({rep.seconds:.1f} s)" + (f"; {rep.unjudged} rows lack signals and were not judged" if rep.unjudged else ""))
        return
    if rep.unjudged:
        click.echo(f"{rep.unjudged} rows were not judged: they lack a column this recipe reads (a feature or signal "
                   f"computed before they arrived: {lakecurate_on(lk)} status {shlex.quote(lake)} names it), or arrived while "
                   "this ran; left undecided (not kept): fill it, then run curate again")
    how = "nothing to do (same recipe, lake unchanged)" if rep.nothing_to_do else (
        f"computed: {', '.join(rep.computed) or 'no new signals'}; {rep.fragments_written} fragments written")
    click.echo(f"\nrecipe {rep.recipe} ({rep.recipe_hash}): {how}; tag {rep.tag} (version {rep.version}) in {rep.seconds:.1f} s")
    click.echo(f"reopen: {lakecurate_on(lk)} sql {shlex.quote(lake)} \"SELECT key, caption FROM pairs WHERE keep\" --version {rep.tag}")


def _echo_whatifs(rep: Any) -> None:
    """Per thresholded step of a dry run: the cut, the rows nearest it, and kept rows at other cuts."""
    for v in rep.steps:
        if not v.cut or not v.whatif:
            continue
        c = v.cut
        click.echo(f"\n{v.reason}: drops {c['label']} {'under' if c['side'] == 'min' else 'over'} {c['at']:.4g} "
                   f"({c['param']}); other cuts, every other step unchanged:")
        _echo_table([{"cut": f"{w['cut']:.4g}" + (" *" if w["current"] else ""), "judged below": f"{w['judged_below']:.0%}",
                      "dropped here": w["dropped"], "kept": w["kept"]} for w in v.whatif],
                    ["cut", "judged below", "dropped here", "kept"])
        for side, rows in (("just failing", v.below[:3]), ("just passing", v.above[:3])):
            for r in rows:
                click.echo(f"  {side} {r['value']:.4g}  {r.get('key') or r['id']}  {str(r.get('caption') or '')[:70]!r}")


# --------------------------------------------------------------------------- concepts and export
@main.command()
@lake_argument
@click.option("-k", "k", type=Count(min=2), help="Concepts, 2 or more (default: those of the lake's concepts, else "
              "about sqrt of the embedded rows, 2..4096, at most the rows).")
@click.option("--embedding", help="Embedding columns to cluster (default: those of the lake's concepts, else the "
              "lake's only embedding).")
@click.option("--seed", type=Count(min=0), help="k-means seed (default: that of the lake's concepts, else 0).")
@click.option("--recompute", is_flag=True, help="Replace concepts made with other settings (-k, --seed and "
              "--embedding not given take their defaults, not the lake's concepts').")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Assign rows here, or in one Ray task per fragment (the fit runs here on a sample).")
@json_option
@_friendly_errors
def cluster(lake: str, k: int | None, embedding: str | None, seed: int | None, recompute: bool, engine: str,
            as_json: bool) -> None:
    """Cluster LAKE's image embeddings into concepts: concept and concept_dist columns.

    Example: lakecurate cluster ./lake -k 100
    """
    rep = open_lake(lake).cluster(k, embedding=embedding, seed=seed, recompute=recompute, engine=engine)
    if as_json:
        echo_json(rep)
        return
    sizes = sorted((c["size"] for c in rep.concepts), reverse=True)
    empty = sum(1 for n in sizes if n == 0)
    if empty:  # more concepts than distinct images (copies are one point): k-means left some without a row
        click.echo(f"warning: {empty} of the {rep.k} concepts got no row (fewer distinct images than -k?); "
                   "a smaller -k gives every concept rows", err=True)
    click.echo(f"{rep.k} concept{'s' if rep.k != 1 else ''} over {rep.rows} rows in {rep.seconds:.1f} s; sizes: largest {sizes[:5]}, "
               f"smallest {sizes[-5:]}")


@main.command()
@lake_argument
@click.option("--target", type=TargetType(), default=0.5, show_default=True,
              help="Rows to keep: a fraction of the candidates in (0, 1] (1 = all), or a whole count of rows > 1.")
@click.option("--temperature", type=FiniteFloat(min=0, min_open=True), default=0.5, show_default=True,
              help="Softmax temperature over concept complexity: lower prunes simple concepts harder.")
@click.option("--rule", type=click.Choice(["far", "random"]), default="far", show_default=True,
              help="Inside a concept keep the rows farthest from the centroid first, or at random.")
@click.option("--max-repeats", type=Count(min=1), default=1, show_default=True, help="Up-sample small complex concepts up to this many times.")
@click.option("--where", help="Candidate rows (SQL; default: keep, when a recipe ran).")
@click.option("--seed", type=Count(min=0), default=0, show_default=True)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: each million candidate rows' vectors are read and summed per concept by a Ray task.")
@allow_stale_option
@json_option
@_friendly_errors
def rebalance(lake: str, target: float | int, temperature: float, rule: str, max_repeats: int, where: str | None, seed: int,
              engine: str, allow_stale: bool, as_json: bool) -> None:
    """Keep fewer rows of dense, simple concepts and more of rare, complex ones (never deletes).

    Writes rebalance_keep, sample_weight and repeats, and prints the per-concept table (size,
    spread, isolation, complexity, budget, kept).

    Example: lakecurate rebalance ./lake --target 0.5 --max-repeats 3
    """
    rep = open_lake(lake).rebalance(target, temperature=temperature, rule=rule,
                                    max_repeats=max_repeats, where=where, seed=seed, allow_stale=allow_stale,
                                    engine=engine)
    for note in rep.stale:  # (an incomplete input is a warning without --allow-stale too: name the flag only if given)
        click.echo(f"warning: rebalanced{' with --allow-stale' if allow_stale else ''} although {note}", err=True)
    if as_json:
        echo_json(rep)
        return
    rows = sorted((c for c in rep.concepts if c["size"]), key=lambda c: -c["size"])  # (an empty one's numbers mean nothing)
    _echo_table(rows[:10] + (rows[-5:] if len(rows) > 15 else rows[10:]),
                ["concept", "size", "spread", "isolation", "complexity", "budget", "kept", "repeats"])
    empty = len(rep.concepts) - len(rows)
    click.echo(f"\nkept {rep.kept} of {rep.rows} candidate rows ({rep.exported_rows} samples with repeats) "
               f"over {rep.k} concept{'s' if rep.k != 1 else ''} in {rep.seconds:.1f} s"
               + (f"; {empty} concept{'s have' if empty != 1 else ' has'} no candidate row" if empty else ""))


@main.command()
@lake_argument
@click.option("--mode", type=click.Choice(["interleave", "random", "curriculum"]), default="interleave", show_default=True)
@click.option("--score", help="Curriculum column (prefix '-' for descending), e.g. offline_score.")
@click.option("--shard-size", type=Count(min=1), default=10_000, show_default=True)
@click.option("--where", help="Rows to order (default: rebalance_keep, else keep, else all).")
@click.option("--seed", type=Count(min=0), default=0, show_default=True)
@allow_stale_option
@json_option
@_friendly_errors
def sequence(lake: str, mode: str, score: str | None, shard_size: int, where: str | None, seed: int, allow_stale: bool,
             as_json: bool) -> None:
    """Write a training order (seq_order) and shard assignment (seq_shard) for LAKE's chosen rows.

    Example: lakecurate sequence ./lake --mode interleave
    """
    out = open_lake(lake).sequence(mode, score=score, shard_size=shard_size, where=where, seed=seed, allow_stale=allow_stale)
    if as_json:
        echo_json(out)
        return
    click.echo(f"ordered {out['rows']} rows ({out['mode']}, where {out['where']}) into {out['shards']} shard{'' if out['shards'] == 1 else 's'}")


@main.command("export")
@lake_argument
@click.argument("dest", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["webdataset", "parquet", "lance", "mds"]), default="webdataset",
              show_default=True, help="mds: MosaicML Streaming shards (needs mosaicml-streaming; see the README).")
@click.option("--version", "at_version", help="Export the lake as of this version or tag (e.g. a recipe's tag).")
@click.option("--where", help="Rows to export (default: rebalance_keep, else keep, else usable images).")
@click.option("--caption", default="caption", show_default=True, help="Caption column, e.g. caption_redacted.")
@click.option("--no-repeats", is_flag=True, help="Write each row once even when it has repeats.")
@click.option("--shard-size", type=Count(min=1), default=None,
              help="WebDataset samples per shard (default: the --shard-size `sequence` used, so without repeats "
                   "shard i holds seq_shard i; else 1000).")
@click.option("--overwrite", is_flag=True)
@click.option("--caption-mix", help="Train on a mix of caption columns, e.g. caption=0.5,caption_coca=0.5: one per "
              "row, chosen from --mix-seed and the row's id (recorded in the manifest).")
@click.option("--mix-seed", type=Count(min=0), default=0, show_default=True)
@click.option("--caption-mix-both", is_flag=True, help="With --caption-mix: every non-null caption of the mix as its own sample.")
@click.option("--blur-faces", is_flag=True,
              help="Write images with the faces found by `lakecurate signals --faces` blurred (the stored images "
                   "are never modified; recorded in the manifest).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="WebDataset: write the shards here, or one Ray task a shard (DEST on a file system every worker shares).")
@click.option("--image-ext", help="WebDataset: name every image member KEY.EXT whatever its format (default: by "
              "format, .jpg/.png...). Hugging Face datasets refuses samples whose members differ; PIL reads by content.")
@allow_stale_option
@json_option
@_friendly_errors
def export_cmd(lake: str, dest: str, fmt: str, at_version: str | None, where: str | None, caption: str,
               no_repeats: bool, shard_size: int | None, overwrite: bool, caption_mix: str | None, mix_seed: int,
               caption_mix_both: bool, blur_faces: bool, engine: str, image_ext: str | None, allow_stale: bool,
               as_json: bool) -> None:
    """Export the chosen rows of LAKE to DEST for training, in order and with repeats, plus a manifest.

    Example: lakecurate export ./lake shards/ --format webdataset --caption caption_redacted --blur-faces
    """
    target = open_lake(lake)
    version = _version_arg(target, at_version)
    rep = target.export(dest, fmt, where=where, version=version, repeats=not no_repeats, caption=caption,
                                 shard_size=shard_size, overwrite=overwrite, allow_stale=allow_stale,
                                 blur_faces=blur_faces, caption_mix=caption_mix, mix_seed=mix_seed,
                                 mix_both=caption_mix_both, engine=engine, image_ext=image_ext)
    for note in rep.stale:
        click.echo(f"warning: exported{' with --allow-stale' if allow_stale else ''} although {note}", err=True)
    for note in rep.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        echo_json(rep)
        return
    click.echo(f"exported {rep.samples} samples ({rep.rows} pairs) from version {rep.version} where {rep.where} "
               f"to {rep.dest} ({rep.format}, {len(rep.files)} files, {rep.bytes / 2**20:.1f} MiB) in {rep.seconds:.1f} s"
               + (f"; faces blurred in {rep.blurred} images" if blur_faces else ""))
    if rep.removed_partial:
        click.echo(f"removed {rep.removed_partial} partial folder{'s' if rep.removed_partial != 1 else ''} left by an "
                   f"interrupted export to {rep.dest}")


@main.command()
@lake_argument
@click.option("--eval-set", required=True, type=click.Path(exists=True),
              help="Clean pairs disjoint from the lake: a folder, manifest or WebDataset shards.")
@click.option("--view", help="A tag (its curated rows) or a SQL condition (default: rebalance_keep, else keep).")
@click.option("--baseline", "baselines", multiple=True, default=("all", "random"), show_default=True,
              help="Repeatable: 'all' (every usable row: no filtering), 'random' (as many rows as the view), "
                   "or a tag / SQL condition.")
@click.option("--seeds", type=Count(min=1), default=3, show_default=True)
@click.option("--steps", type=Count(min=1), default=300, show_default=True, help="Training steps for every arm (the budget).")
@click.option("--eval-every", type=Count(min=1), help="Steps between learning-curve points (default: steps / 20; at most --steps).")
@click.option("--budget", "budgets", type=BudgetType(),
              help="Also train every arm at these multiples of --steps (above 0, at most 16), e.g. 0.25,0.5,1,2; "
                   "multiples that round to the same number of steps are trained once.")
@click.option("--metric", type=click.Choice(METRIC_NAMES), default="t2i_R@5", show_default=True,
              help="The metric the curves, speed-ups and budgets are read on.")
@click.option("--lr", type=FiniteFloat(0, 1, min_open=True), default=EVAL_LR, show_default=True,
              help="The proxy's learning rate (every arm the same).")
@click.option("--embedding", help="Embedding prefix when the lake has several.")
@click.option("--held-out-cosine", type=FiniteFloat(-1, 1),
              help="Pool rows whose image is this close (cosine) to an evaluation image are near copies of it, "
                   "left out of every arm's training (default: 0.75 offline, measured; 0.95 CLIP, dedup's semantic "
                   "threshold).")
@click.option("--root", type=click.Path(file_okay=False, exists=True),
              help="Folder the evaluation set's image paths must stay inside (default: the manifest's folder); "
                   "needed when a manifest holds absolute paths elsewhere.")
@click.option("--no-record", is_flag=True, help="Do not append the result to LAKE/evaluations.lance (on a branch, evaluations-BRANCH.lance).")
@click.option("--caption-col", default="caption", show_default=True,
              help="Train on another caption column (scored first with embed --caption-col), e.g. a synthetic one.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: the evaluation set is ingested and embedded on Ray (once: it is cached); the proxies train here.")
@allow_stale_option
@json_option
@_friendly_errors
def evaluate(lake: str, eval_set: str, view: str | None, baselines: tuple[str, ...], seeds: int, steps: int,
             eval_every: int | None, budgets: str | None, metric: str, lr: float, embedding: str | None,
             held_out_cosine: float | None, root: str | None, no_record: bool, caption_col: str, engine: str,
             allow_stale: bool, as_json: bool) -> None:
    """Train a small proxy (contrastive heads on frozen embeddings) on a curated view and on baselines
    with the same compute; report retrieval R@1/5/10 and swapped-caption AUROC on EVAL_SET over
    seeds, the learning curves, and the speed-up: how many times fewer steps the view needs to
    reach each baseline's final score. EVAL_SET stays held out: its exact copies in LAKE are
    refused, its near copies (--held-out-cosine) left out of every arm's training.

    Example: lakecurate evaluate ./lake --eval-set clean_eval/captions.csv --budget 0.25,0.5,1,2
    """
    from lakecurate.evaluate import parse_baselines

    # what needs no lake is checked before it is opened (exit 2, as click's own checks)
    if eval_every is not None and eval_every > steps:
        raise click.BadParameter(f"{eval_every} is more than --steps ({steps}): give a number of steps from 1 to "
                                 f"{steps}", param_hint="'--eval-every'")
    try:
        parse_baselines(list(baselines))
    except LakeError as exc:
        raise click.BadParameter(str(exc).removeprefix("--baseline: "), param_hint="'--baseline'") from None
    the_lake = open_lake(lake)
    res = the_lake.evaluate(view, eval_set=eval_set, baseline=list(baselines), seeds=seeds, steps=steps,
                                   embedding=embedding, record=not no_record, root=root, allow_stale=allow_stale,
                                   caption_col=caption_col, eval_every=eval_every, budgets=budgets, metric=metric, lr=lr,
                                   engine=engine, held_out_cosine=held_out_cosine)
    for note in res.warnings:
        click.echo(f"warning: {note}", err=True)
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        echo_json({**res.to_dict(), "table": res.table().to_dict("records"),
                   "budget_table": res.budget_table().to_dict("records"),
                   metric: {b: res.difference(metric, b) for b in res.baselines}})
        return
    click.echo(f"view '{res.view}' ({res.rows['view']} rows) vs {', '.join(f'{b} ({res.rows[b]} rows)' for b in res.baselines)} "
               f"of {res.pool_rows} usable rows at version {res.version}; eval set {res.eval_images} images / "
               f"{res.eval_captions} captions; {len(res.seeds)} seeds x {res.steps} steps, {res.seconds:.0f} s")
    t = res.table()
    shown = list(dict.fromkeys(["t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@5", "swapped_auroc", metric]))
    rows = [{"arm": r["arm"], "rows": r["rows"], **{m: f"{r[m]:.3f}±{r[m + ' spread'] / 2:.3f}" for m in shown}}
            for r in t.to_dict("records")]
    click.echo("")
    _echo_table(rows)
    click.echo("")
    for b, sp in res.speedups().items():
        d = res.difference(metric, b)
        verdict = "larger than" if abs(d["difference"]) > d["spread"] else "within"
        # one seed has no spread to compare with: say so, not "larger than the spread (0.000)"
        judged = (f", {verdict} the spread across seeds ({d['spread']:.3f})" if len(res.seeds) > 1
                  else " (one seed: no spread to judge it by; pass --seeds 3)")
        click.echo(f"vs {b}: speed-up {sp['median']:.2f}x (seeds {sp['min']:.2f}-{sp['max']:.2f}) to {b}'s final "
                   f"{metric}; at equal steps view - {b} = {d['difference']:+.3f}{judged}")
    if len(res.budgets) > 1:
        click.echo(f"\n{metric} by compute (multiples of {res.steps} steps):")
        _echo_table([{"budget": f"{r['budget']:g}x", "steps": r["steps"],
                      **{a: f"{r[a]:.3f}" for a in ["view", *res.baselines]},
                      **{f"view - {b}": f"{r[f'view - {b}']:+.3f}" for b in res.baselines}}
                     for r in res.budget_table().to_dict("records")])
    if not no_record:
        click.echo(f"recorded as {res.eval_id} in {the_lake.side_uri('evaluations')}")


@main.command("report")
@lake_argument
@click.argument("out", type=click.Path(dir_okay=False), default="report.html")
@click.option("--version", "at_version", help="Report the lake as of this version or tag.")
@click.option("--sample-rows", type=Count(min=1), default=100_000, show_default=True, help="Rows sampled for the plots.")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in a browser when written.")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT even when it is not a lakecurate report (an earlier report is replaced without it).")
@json_option
@_friendly_errors
def report_cmd(lake: str, out: str, at_version: str | None, sample_rows: int, open_browser: bool, overwrite: bool,
               as_json: bool) -> None:
    """Write one self-contained HTML report of LAKE to OUT: counts per stage and reason, duplicate
    groups, low-alignment and rejected pairs, concept galleries, histograms, flagged inputs.

    Example: lakecurate report ./lake report.html
    """
    target = open_lake(lake)
    version = _version_arg(target, at_version)
    rep = target.report(out, version=version, sample_rows=sample_rows, overwrite=overwrite)
    empty = f"; no data yet for: {', '.join(rep.empty_sections)}" if rep.empty_sections else ""
    for note in rep.stale:
        click.echo(f"warning: {note}", err=True)
    if as_json:
        echo_json(rep)
    else:
        click.echo(f"wrote {rep.path} ({rep.bytes / 2**10:.0f} KiB, {rep.thumbnails} thumbnails) for version {rep.version} "
                   f"({rep.rows} rows) in {rep.seconds:.1f} s{empty}")
    if open_browser:
        import webbrowser

        webbrowser.open(Path(rep.path).resolve().as_uri())


# --------------------------------------------------------------------------- browse and review
@main.command()
@lake_argument
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Any other than the loopback needs a token (--token, or one is made and printed).")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--read-only", is_flag=True, help="Refuse every write (reviews, labels).")
@click.option("--version", "at_version", help="Show this version, tag or branch by default (the page can pick others).")
@click.option("--token", help="Token every request must carry (at least 16 characters); made for you on a non-loopback host.")
@click.option("--labels", help="Comma-separated labels reviewers choose from (stored in the lake).")
@json_option
@_friendly_errors
def serve(lake: str, host: str, port: int, read_only: bool, at_version: str | None, token: str | None,
          labels: str | None, as_json: bool) -> None:
    """Browse, search and review LAKE in a browser: a grid of thumbnails with filters (SQL WHERE,
    reasons, concepts, duplicate groups, ingest flags), sorting, text and image search, pair,
    group, concept, cut and diff views, and review marks written to review_* columns.

    Example: lakecurate serve ./lake --labels "watermark,nsfw,wrong caption"
    """
    def echo(line: str) -> None:
        if as_json:
            url = line.split(" at ", 1)[1].split(" ", 1)[0]
            echo_json({"url": url, "host": host, "port": port, "read_only": read_only, "lake": lake})
        else:
            click.echo(line)

    label_list = [x for x in (labels or "").split(",") if x.strip()] if labels is not None else None
    open_lake(lake).serve(host=host, port=port, read_only=read_only, token=token, version=at_version,
                          labels=label_list, echo=echo)


@main.command("review")
@lake_argument
@click.argument("ids", nargs=-1)
@click.option("--keep", "verdict", flag_value="keep", help="Mark the rows kept (overrides the machine in a recipe's review step).")
@click.option("--drop", "reason", help="Mark the rows dropped, for this reason.")
@click.option("--label", help="Give the rows one of the lake's labels.")
@click.option("--by", help="Who reviews (stored in review_by).")
@click.option("--undo", "undo_action", help="Restore what the rows of this action held before it.")
@click.option("--history", is_flag=True, help="List the latest review actions.")
@click.option("--from-version", "from_version", metavar="VERSION",
              help="Write back the marks the lake held at VERSION (a number or tag): what status names when "
                   "another writer dropped the review columns. One action, undone as any.")
@json_option
@_friendly_errors
def review_cmd(lake: str, ids: tuple[str, ...], verdict: str | None, reason: str | None, label: str | None,
               by: str | None, undo_action: str | None, history: bool, from_version: str | None, as_json: bool) -> None:
    """Mark pairs of LAKE by id (what the browser's review does), undo a mark, list marks, or write
    back the marks of an older version.

    Example: lakecurate review ./lake 1655f610fee3ee5d a9fd79ccf602cf61 --drop watermark --by ana
    """
    from lakecurate.review import history as review_history

    marks = [name for name, given in (("ids", ids), ("--keep", verdict), ("--drop", reason is not None),
                                      ("--label", label is not None)) if given]
    if from_version is not None:
        others = marks + [name for name, given in (("--undo", undo_action is not None), ("--history", history)) if given]
        if others:
            raise click.UsageError(f"--from-version writes back an older version's marks; it takes no {', '.join(others)}")
        if not from_version.strip():
            raise click.UsageError(f"--from-version: give a version number or tag (see: lakecurate log {shlex.quote(lake)})")
        lk = open_lake(lake)
        back = lk.restore_reviews(_version_arg(lk, from_version), by=by)
        if as_json:
            echo_json(back)
        else:
            click.echo(f"wrote back the marks of {back['rows']} rows from version {from_version}"
                       + (f" (undo: {lakecurate_on(lk)} review {shlex.quote(lake)} --undo {back['action']})"
                          if back["action"] else "")
                       + (f"; no longer in the lake: {len(back['not_found'])}" if back["not_found"] else ""))
            if back["replaced"]:
                shown = ", ".join(back["replaced"][:5]) + (f" and {len(back['replaced']) - 5} more" if len(back["replaced"]) > 5 else "")
                click.echo(f"note: {len(back['replaced'])} of them had been marked otherwise since version {from_version} "
                           f"({shown}): their newer marks were replaced (the undo above brings them back)")
        return
    if history and (marks or undo_action is not None):  # (they were ignored without a word)
        raise click.UsageError(f"--history lists the latest actions; it takes no {', '.join(marks) or '--undo'}")
    if undo_action is not None and marks:
        raise click.UsageError(f"--undo ACTION restores what that action changed; it takes no {', '.join(marks)}")
    if undo_action is not None and not undo_action.strip():
        raise click.UsageError(f"--undo: give an action id (see: lakecurate review {shlex.quote(lake)} --history)")
    if reason is not None and not reason.strip():
        raise click.UsageError("--drop needs a reason: what is wrong with the pair")
    lk = open_lake(lake)
    if history:
        out: Any = review_history(lk)
    elif undo_action:
        out = lk.undo_review(undo_action, by=by)
    else:
        if verdict and reason:
            raise click.UsageError("--keep and --drop: choose one")
        out = lk.review(list(ids), verdict="drop" if reason else verdict, reason=reason, label=label, by=by)
    if as_json:
        echo_json(out)
    elif history:
        cols = ["action", "kind", "rows", "by", "at"] + (["branch"] if lk.branch else [])  # (and its parent's marks)
        _echo_table(out, cols + (["note"] if any("note" in r for r in out) else [])) if out else \
            click.echo("(no reviews yet)")
    elif undo_action and out.get("already_undone"):
        click.echo(f"nothing restored: action {undo_action} is already undone (its rows hold what they held before it)")
    elif undo_action:
        click.echo(f"restored {out['rows']} rows" + (f" (undo action {out['action']})" if out["action"] else "")
                   + (f"; changed since, left alone: {', '.join(out['changed_since'])}" if out["changed_since"] else ""))
    else:
        click.echo(f"marked {out['rows']} rows (action {out['action']}; undo: {lakecurate_on(lk)} review {shlex.quote(lake)} "
                   f"--undo {out['action']})"
                   + (f"; not in the lake: {', '.join(out['not_found'])}" if out["not_found"] else ""))


# --------------------------------------------------------------------------- features
@main.group()
def feature() -> None:
    """User-defined feature columns: a Python function over a batch of columns, one commit per fragment.

    Example: lakecurate feature add ./lake caption_chars --udf my_features:caption_chars --input caption
    """


def _param(values: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare word is a string
    return out


@feature.command("add")
@lake_argument
@click.argument("name")
@click.option("--udf", required=True, metavar="MODULE:FUNCTION",
              help="The function: module:function (importable or in the working directory) or path/file.py:function.")
@click.option("--input", "inputs", multiple=True, metavar="COL",
              help="Column the function reads (repeat; default: what @feature(inputs=...) declares). image arrives as bytes.")
@click.option("--type", "out_type", help="Arrow type of the column, e.g. int32, float32, string, bool "
                                         "(default: @feature(type=...), else inferred from the first rows).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Keyword argument for the function (JSON or text; repeat).")
@click.option("--batch-size", type=Count(min=1), default=4096, show_default=True)
@engine_option
@click.option("--recompute", is_flag=True, help="Replace the column (e.g. after changing the function).")
@json_option
@_friendly_errors
def feature_add(lake: str, name: str, udf: str, inputs: tuple[str, ...], out_type: str | None, params: tuple[str, ...],
                batch_size: int, engine: str, recompute: bool, as_json: bool) -> None:
    """Add the column NAME to LAKE, computed by a Python function per fragment (only rows lacking it).

    The function takes a pyarrow RecordBatch of its input columns and returns an array (column NAME)
    or a dict of arrays (columns NAME_KEY). Safe beside other writers: each fragment is one commit,
    retried on conflict; re-running fills only rows appended since (or a killed run's rest), and
    computes again the fragments whose inputs were rewritten since.

    Example: lakecurate feature add ./lake caption_chars --udf my_features:caption_chars --input caption
    """
    rep = open_lake(lake).add_feature(name, udf, inputs=list(inputs) or None, type=out_type, params=_param(params),
                                      engine=engine, batch_size=batch_size, recompute=recompute)
    if as_json:
        echo_json(rep)
        return
    again = f" ({rep.rows_refreshed} of them again: their fragments' inputs changed since)" if rep.rows_refreshed else ""
    click.echo(f"feature {name}: {rep.rows} rows{again} in {rep.fragments} fragments ({rep.seconds:.1f} s, engine {engine}); "
               f"columns: {', '.join(rep.columns)}")
    _echo_elsewhere(rep, f"feature add {name}")


@feature.command("list")
@lake_argument
@json_option
@_friendly_errors
def feature_list(lake: str, as_json: bool) -> None:
    """List the feature columns of LAKE: function, inputs, config and rows still missing a value.

    Example: lakecurate feature list ./lake
    """
    from lakecurate.features import list_features

    rows = list_features(open_lake(lake))
    if as_json:
        echo_json(rows)
    else:
        _echo_table(rows)


@feature.command("drop")
@lake_argument
@click.argument("name")
@json_option
@_friendly_errors
def feature_drop(lake: str, name: str, as_json: bool) -> None:
    """Drop the column(s) of feature NAME (metadata only; older versions and tags still have them).

    Example: lakecurate feature drop ./lake caption_chars
    """
    from lakecurate.features import drop_feature

    dropped = drop_feature(open_lake(lake), name)
    if as_json:
        echo_json({"dropped": list(dropped)})
    else:
        click.echo(f"dropped {', '.join(dropped)}")


@main.command("drop")
@lake_argument
@click.argument("names", nargs=-1, required=True, metavar="COLUMN...")
@json_option
@_friendly_errors
def drop(lake: str, names: tuple[str, ...], as_json: bool) -> None:
    """Drop derived columns of LAKE (metadata only; older versions and tags still have them:
    lakecurate restore brings them back), or forget a stage another writer dropped (status lists it
    "dropped"). Source columns are never dropped; the columns a stage declared together (an
    embedding's, keep and drop_reason) go together: name them all. A stage built on a dropped column
    shows stale in status after it. Nothing is written when a name is refused.

    Example: lakecurate drop ./lake caption_redacted
    """
    from lakecurate.drops import describe

    out = open_lake(lake).drop_columns(list(names))
    if as_json:
        echo_json(out)
    else:
        click.echo(describe(out))


# --------------------------------------------------------------------------- inspect
@main.command()
@lake_argument
@click.option("--version", "at_version", help="The graph as of this version or tag (default: the latest).")
@json_option
@_friendly_errors
def status(lake: str, at_version: str | None, as_json: bool) -> None:
    """Show the stage graph of LAKE: each stage's columns, current / stale / incomplete / behind, why,
    and the command that brings it up to date. Exit code 0 either way; --json for scripts.

    Example: lakecurate status ./lake
    """
    target = open_lake(lake)
    d = target.status(_version_arg(target, at_version))
    if as_json:
        echo_json(d)
        return
    click.echo(f"lake {d['uri']} (branch {d['branch']}) at version {d['version']}")
    if d["empty"] and not d["stages"]:
        click.echo(d["empty"])
        return
    if not d["stages"]:
        click.echo("no derived columns yet; next: lakecurate embed " + d["uri"])
        return
    _echo_table([{"stage": s["stage"], "columns": ", ".join(s["columns"][:3]) + (", ..." if len(s["columns"]) > 3 else ""),
                  "state": s["state"], "why": s["reasons"][0] if s["reasons"] else ""} for s in d["stages"]])
    todo = [s for s in d["stages"] if s["state"] != "current"]
    stages: dict[str, list[str]] = {}  # fix -> the stages it brings up to date (dedup's nodes, the signals share one)
    for s in todo:
        stages.setdefault(s["fix"], []).append(s["stage"])
    for fix, names in stages.items():
        click.echo(f"{', '.join(dict.fromkeys(names))}: {fix}")
    for s in d["stages"]:
        if s["rows_failed"]:
            click.echo(f"{s['columns'][0]}: {s['rows_failed']} rows failed at the endpoint (no caption; the "
                       f"{s['columns'][0]}_error column says why); compute them again: {s['retry']}")
    if d["empty"]:  # (one line for every stage: what the table says of each)
        click.echo(f"curated view: none: {d['empty']}")
        return
    click.echo(f"curated view: {d['view'] or 'none yet'}" + "".join(f"\n  note: {n}" for n in d["view_notes"]))


@main.command()
@lake_argument
@json_option
@_friendly_errors
def info(lake: str, as_json: bool) -> None:
    """Show rows, columns (with provenance), versions and tags of LAKE.

    Example: lakecurate info ./lake
    """
    d = open_lake(lake).info()
    if as_json:
        echo_json(d)
        return
    click.echo(f"lake {d['uri']}  table {d['table']}: {d['rows']} rows, version {d['version']} "
               f"({d['n_versions']} versions, last commit {d['last_commit']}), {d['fragments']} fragments")
    click.echo("status: " + (", ".join(f"{k} {v}" for k, v in sorted(d["status_counts"].items())) or "-"))
    click.echo("tags: " + (", ".join(f"{k}=v{v}" for k, v in d["tags"].items()) or "-"))
    click.echo(f"branch: {d['branch']}; branches: " + ", ".join(["main", *d["branches"]]))
    click.echo("")
    _echo_table(
        [{"column": c["name"], "type": c["type"], "about": " ".join(filter(None, [c["doc"], c["provenance"] and f"[{describe_provenance(c['provenance'])}]"]))}
         for c in d["columns"]]
    )
    if any(c["provenance"] for c in d["columns"]):
        click.echo("\n(full provenance: lakecurate info LAKE --json)")


def _version_arg(lake: Lake, at_version: str | None) -> int | str | None:
    """--version as the lake reads it: a number (a tag named like one, made with Lance, is refused as
    ambiguous, not read as the number without a word), else a tag, branch or branch:N."""
    if at_version and is_number(at_version):
        lake.dataset(at_version)  # (Store.dataset refuses a number that is also a tag's name)
        return int(at_version)
    return at_version


def _not_current_notes(lake: Lake, query: str) -> None:
    """A note on stderr for each stage behind the columns ``query`` names that is not current (a
    caption rewritten since its embedding: the scores shown are of the old caption), with its fix."""
    from lakecurate.graph import query_notes

    for note in query_notes(lake, lake.dataset(), query):
        click.echo(f"note: {note}", err=True)


@main.command()
@lake_argument
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="json: a list of records (bytes as base64); csv: with a header row.")
@click.option("--version", "at_version", help="Query an older version (number or tag).")
@click.option("--limit", type=Count(min=0), default=SQL_ROWS, show_default=True,
              help="Print at most this many rows (a note on stderr says when the result had more); 0: all.")
@click.option("--timeout", type=FiniteFloat(0, 7 * 86400, min_open=True),
              help="Stop the query after this many seconds (default: no time bound; Ctrl+C stops it too).")
@click.option("--max-memory", type=FiniteFloat(0, 1 << 20, min_open=True),
              help="Stop the query when it takes more than this many GiB of memory (default: half of this "
                   "machine's memory).")
@click.option("--json", "as_json", is_flag=True, help="The same as --format json (an error, too, is JSON then).")
@_friendly_errors
def sql(lake: str, query: str, fmt: str, at_version: str | None, limit: int, timeout: float | None,
        max_memory: float | None, as_json: bool) -> None:
    """Run a SQL QUERY against the `pairs` table of LAKE (read-only: one SELECT or WITH).

    The image column holds Lance blob descriptors (position, size) in results; export or the Python
    API's Lake.read_images give the bytes.

    Example: lakecurate sql ./lake "SELECT ingest_status, COUNT(*) AS n FROM pairs GROUP BY 1"
    """
    if as_json and fmt not in ("table", "json"):
        raise click.UsageError(f"--json and --format {fmt} ask for two formats: give one")
    fmt = "json" if as_json else fmt
    # Read one row past the limit, a batch at a time: a cross join held 8M rows (5.7 GB) to print them.
    # In a thread of its own, bounded: `unnest(range(1, 300000000))` took 8.7 GB and Ctrl+C waited for it.
    memory = max_memory * 2**30 if max_memory is not None else half_the_memory()
    target = open_lake(lake)
    version = _version_arg(target, at_version)
    table = target.sql_table(query, version=version, limit=limit + 1 if limit else None, timeout=timeout,
                             max_memory=memory)
    if version is None:  # values of a stage that is not current are shown, said on stderr (as search says it)
        _not_current_notes(target, query)
    cut = bool(limit) and table.num_rows > limit
    table = table.slice(0, limit) if cut else table
    twice = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
    if twice:  # a self-join's SELECT *: pandas and JSON records keep one of each name
        names = ", ".join(twice[:5]) + (f" and {len(twice) - 5} more" if len(twice) > 5 else "")
        raise LakeError(f"the result has more than one column named {names}: name them apart with AS "
                        "(SELECT a.key AS key_a, b.key AS key_b ...)")
    if cut:  # (on stderr: the JSON or CSV on stdout stays whole)
        click.echo(f"note: printed the first {limit} rows; the query returns more: pass --limit N for more "
                   "(0: all), or narrow it (LIMIT, WHERE)", err=True)
    import base64

    import pyarrow as pa

    def plain(v: Any) -> Any:
        if isinstance(v, bytes):  # a binary column or literal as base64 text: JSON has no bytes
            return base64.b64encode(v).decode()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if hasattr(v, "isoformat"):
            return v.isoformat()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
    if fmt == "json":  # from Arrow: a 64-bit hash stays exact, an int column with nulls stays ints
        click.echo(json.dumps([{k: plain(v) for k, v in row.items()} for row in table.to_pylist()], ensure_ascii=False),
                   file=_JSON_OUT[-1] if _JSON_OUT else None)  # (other prints go to stderr meanwhile)
        return
    if fmt == "csv":  # a list, vector or struct as JSON text (pandas wrote numpy's, with line breaks in a field)
        for i, f in enumerate(table.schema):
            if pa.types.is_nested(f.type):
                text = [None if v is None else json.dumps(plain(v), ensure_ascii=False) for v in table.column(i).to_pylist()]
                table = table.set_column(i, f.name, pa.array(text, pa.string()))
    df = table.to_pandas(integer_object_nulls=True)  # ints with nulls stay ints (500, not 500.0)
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif not len(df):
        click.echo("(no rows)")
    else:  # a null is NULL in every column (pandas would show NaN in numeric ones, None in others)
        click.echo(_frame_text(df, 60))


# --------------------------------------------------------------------------- versions
@main.command()
@lake_argument
@click.argument("name")
@click.option("--version", "at_version", help="Version to tag: a number, tag, branch or branch:number (default: latest).")
@click.option("--delete", is_flag=True, help="Delete the tag NAME instead.")
@json_option
@_friendly_errors
def tag(lake: str, name: str, at_version: str | None, delete: bool, as_json: bool) -> None:
    """Name a version of LAKE (of --branch) so it can be reopened later (metadata only).

    Example: lakecurate tag ./lake before-dedup
    """
    if delete and at_version is not None:  # (--version was ignored: the tag named was deleted, wherever it pointed)
        raise click.UsageError("--delete deletes the tag NAME wherever it points; it takes no --version")
    the_lake = open_lake(lake)
    if delete:
        the_lake.delete_tag(name)
        if as_json:
            echo_json({"deleted": name})
        else:
            click.echo(f"deleted tag '{name}'")
        return
    version = the_lake.tag(name, at_version)
    on = the_lake.on_branch_of(name).branch  # the branch the tag points into (--version exp:6 from main: exp)
    if as_json:
        echo_json({"tag": name, "version": version, "branch": on or "main", "lake": the_lake.uri})
    else:
        of = f" of branch {on or 'main'}" if on != the_lake.branch else ""
        click.echo(f"tagged version {version}{of} of {the_lake.uri} as '{name}'")


@main.group()
def branch() -> None:
    """Branches: experiment on the lake without touching main (metadata only; data files are shared).

    Example: lakecurate branch create ./lake strict && lakecurate --branch strict curate ./lake strict.toml
    """


@branch.command("create")
@lake_argument
@click.argument("name")
@click.option("--from", "source", help="Version, tag or branch:version to start from (default: the latest).")
@json_option
@_friendly_errors
def branch_create(lake: str, name: str, source: str | None, as_json: bool) -> None:
    """Create branch NAME of LAKE; then work on it with: lakecurate --branch NAME COMMAND LAKE ...

    Example: lakecurate branch create ./lake strict-captions --from curated-v1
    """
    the_lake = open_lake(lake)
    new = the_lake.create_branch(name, source)
    if as_json:  # "from" as branch list says it (it was the --from given: null by default)
        meta = the_lake.branches().get(name, {})
        echo_json({"branch": name, "version": new.version,
                   "from": f"{meta.get('parent_branch') or 'main'}:{meta.get('parent_version')}"})
        return
    click.echo(f"created branch '{name}' at version {new.version}; use: lakecurate --branch {name} ... {lake}")


@branch.command("list")
@lake_argument
@json_option
@_friendly_errors
def branch_list(lake: str, as_json: bool) -> None:
    """List the branches of LAKE with where they started and their latest version.

    Example: lakecurate branch list ./lake
    """
    the_lake = Lake.open(lake)
    rows = [{"branch": "main", "from": "", "version": the_lake.version}]
    for name, meta in sorted(the_lake.branches().items()):
        rows.append({"branch": name, "from": f"{meta.get('parent_branch') or 'main'}:{meta.get('parent_version')}",
                     "version": Lake.open(lake, branch=name).version})
    if as_json:
        echo_json(rows)
    else:
        _echo_table(rows)


@branch.command("delete")
@lake_argument
@click.argument("name")
@json_option
@_friendly_errors
def branch_delete(lake: str, name: str, as_json: bool) -> None:
    """Delete branch NAME of LAKE (main and its files are untouched).

    Example: lakecurate branch delete ./lake strict-captions
    """
    Lake.open(lake).delete_branch(name)
    if as_json:
        echo_json({"deleted": name})
    else:
        click.echo(f"deleted branch '{name}'")


@main.command()
@lake_argument
@click.argument("a")
@click.argument("b", required=False)
@click.option("--where", help="SQL condition of the view on both sides (default: each side's latest current "
              "decision: rebalance_keep, or keep when rebalancing is stale).")
@click.option("--where-b", help="Another condition for B.")
@click.option("--show", type=Count(min=0), default=10, show_default=True, help="Example ids to list per side.")
@json_option
@_friendly_errors
def diff(lake: str, a: str, b: str | None, where: str | None, where_b: str | None, show: int, as_json: bool) -> None:
    """Compare the curated views of two versions A and B of LAKE (numbers, tags, branches, branch:N):
    rows added and removed, counted per reason. B defaults to the latest version.

    Example: lakecurate diff ./lake curated-v1 strict-captions
    """
    d = open_lake(lake).diff(a, b, where=where, where_b=where_b, examples=show)
    if as_json:
        echo_json(d)
        return
    click.echo(f"A = {d.a} (v{d.version_a}, {d.where_a or 'every row ingest accepted'}): {d.rows_a} rows")
    click.echo(f"B = {d.b} (v{d.version_b}, {d.where_b or 'every row ingest accepted'}): {d.rows_b} rows")
    click.echo(f"in both {d.in_both}; only in B (added) {d.added}; only in A (removed) {d.removed}")
    for note in d.notes:
        click.echo(f"note: {note}", err=True)
    for title, by, ids in (("removed: why B leaves them out", d.removed_by, d.removed_ids),
                           ("added: why A left them out", d.added_by, d.added_ids)):
        if by:
            click.echo(f"\n{title}")
            _echo_table([{"reason": r, "rows": n} for r, n in by.items()])
            if ids[:show]:  # (--show 0 printed a bare "e.g. ")
                click.echo("e.g. " + ", ".join(ids[:show]))


@main.command()
@lake_argument
@click.argument("version")
@json_option
@_friendly_errors
def restore(lake: str, version: str, as_json: bool) -> None:
    """Go back: make VERSION (a number or tag) of LAKE the latest, as a new commit (nothing is lost;
    later versions stay readable, so a restore can itself be undone).

    Example: lakecurate restore ./lake before-dedup
    """
    import warnings

    from lakecurate.errors import LakeWarning

    the_lake = open_lake(lake)
    before = the_lake.version
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", LakeWarning)
        new = the_lake.restore(version)
    notes = [str(w.message) for w in said if issubclass(w.category, LakeWarning)]
    for w in said:  # (the others as they would have been shown: recording them all kept them from stderr)
        if not issubclass(w.category, LakeWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if as_json:
        echo_json({"restored": version, "version": new, "previous": before, "branch": the_lake.branch or "main",
                   "changed": new != before, "notes": notes})
        return
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if new == before:
        click.echo(f"the latest version ({new}) of {the_lake.branch or 'main'} is {version}'s state already: nothing to do")
        return
    click.echo(f"restored {version} as version {new} of {the_lake.branch or 'main'} (undo: {lakecurate_on(the_lake)} restore {shlex.quote(lake)} {before})")


@main.command()
@lake_argument
@click.option("-n", "limit", type=Count(min=1), default=20, show_default=True, help="How many versions.")
@json_option
@_friendly_errors
def log(lake: str, limit: int, as_json: bool) -> None:
    """Show the latest versions of LAKE (or of --branch): time, operation, rows, what each changed
    (rows, and the columns a stage added, wrote or removed) and tags.

    Example: lakecurate log ./lake -n 10
    """
    rows = open_lake(lake).history(limit)
    if as_json:
        echo_json(rows)
    else:
        _echo_table([{**r, "tags": ", ".join(r["tags"])} for r in rows])


@main.command()
@lake_argument
@click.option("--target-rows", type=Count(min=1), default=32_768, show_default=True, help="Rows per fragment to aim at.")
@json_option
@_friendly_errors
def compact(lake: str, target_rows: int, as_json: bool) -> None:
    """Merge the small fragments that many appends leave into larger ones (rows and values unchanged).

    Fragments still missing a derived column are left alone until it is filled: merging them would
    store nulls that look computed. Safe beside other writers (retried on conflict).

    Example: lakecurate compact ./lake
    """
    r = open_lake(lake).compact(target_rows)
    if as_json:
        echo_json(r)
        return
    click.echo(f"fragments {r['fragments_before']} -> {r['fragments_after']} (version {r['version']}); "
               f"{r['left_incomplete']} left as they are until their columns are filled (or computed again where stale)")


@main.command()
@lake_argument
@click.option("--older-than-days", type=FiniteFloat(min=0, max=1e6), default=7.0, show_default=True,
              help="Remove untagged versions older than this (0: every untagged one but the latest; a command "
              "reading one of them in another process then stops, and says so).")
@click.option("--allow-stale", is_flag=True, help="Clean up although a stage is stale at the latest version or a "
              "branch's head: the versions removed may be what shows it stale (status then calls it current).")
@json_option
@_friendly_errors
def cleanup(lake: str, older_than_days: float, allow_stale: bool, as_json: bool) -> None:
    """Reclaim disk space: delete old, untagged versions and the files only they use.

    Tagged versions (each recipe's tag), branches and the latest version stay readable, and so does
    what is stale at a tag: it is recorded first. Overwrites and compactions keep old files for time
    travel until this runs.

    Example: lakecurate cleanup ./lake --older-than-days 0
    """
    stats = open_lake(lake).cleanup(timedelta(days=older_than_days), allow_stale=allow_stale)
    if as_json:
        echo_json(stats)
        return
    click.echo(f"removed {stats['old_versions']} old versions, {stats['bytes_removed']} bytes"
               + (f"; recorded the stages not current at {stats['tags_recorded']} tag"
                  f"{'s' if stats['tags_recorded'] != 1 else ''} first (status --version TAG reads them)"
                  if stats["tags_recorded"] else ""))


# --------------------------------------------------------------------------- demo
def planted_defects(source: str, defect: str) -> list[str]:
    """Files that SOURCE/README.md lists with ``defect`` in its table of planted defects
    (rows like: | `chelsea_mismatch.jpg` | a cat photo captioned as a rocket launch (mismatched caption) |)."""
    import re

    readme = Path(source) / "README.md"
    if not readme.is_file():
        return []
    rows = re.findall(r"^\|\s*`([^`]+)`\s*\|([^|\n]*)\|\s*$", readme.read_text(errors="replace"), re.M)
    return [name for name, what in rows if defect in what]


def _step_line(res: Any) -> None:
    """One line per pipeline step, as it finishes (also off a terminal)."""
    took = f" in {res.seconds:.1f} s" if res.action == "ran" else ""
    made = f", versions {res.versions[0]}-{res.versions[-1]}" if len(res.versions) > 1 else (
        f", version {res.versions[0]}" if res.versions else "")
    click.echo(f"{res.step:<10} {res.action:<9} {res.why}{took}{made}", err=True)
    warned = res.result.get("warnings") if isinstance(res.result, dict) else None
    for note in warned if isinstance(warned, list) else ():  # (only --json showed a step's warnings)
        click.echo(f"warning: {note}", err=True)


@main.command("run")
@lake_argument
@click.argument("pipeline")
@click.option("--dry-run", is_flag=True, help="Only say which steps would run, and why.")
@json_option
@_friendly_errors
def run_cmd(lake: str, pipeline: str, dry_run: bool, as_json: bool) -> None:
    """Run the steps of PIPELINE (a TOML file, or a shipped name such as 'demo') on LAKE: only those
    whose columns are missing or stale, in order (ingest, embed, dedup, curate, cluster, rebalance,
    sequence, export, report). A second run of an unchanged pipeline writes nothing.

    Example: lakecurate run ./lake pipeline.toml
    """
    from lakecurate.pipeline import check_against_lake, load_pipeline

    uri = canonical_uri(lake)  # ({lake} in the file: a file:// lake is its local path)
    pipe = load_pipeline(pipeline, lake_uri=uri)  # every option checked before the lake is touched
    ctx = click.get_current_context(silent=True)
    target = Lake(lake, branch=ctx.find_root().params.get("branch") if ctx is not None else None)
    if not dry_run:  # (a dry run says what would run; creates nothing)
        check_against_lake(target, pipe, target.exists())  # and what only the lake can say, before it is made
        target = open_lake(lake, create="ingest" in pipe.steps)
    rep = target.run(pipe, dry_run=dry_run, on_step=None if as_json else _step_line)
    if as_json:
        echo_json(rep)
        return
    maybe = sum(s.why.startswith("current now; may run") for s in rep.steps) if dry_run else 0
    click.echo(f"{'would run' if dry_run else 'ran'} {len(rep.ran) if not dry_run else sum(s.action == 'would run' for s in rep.steps)} "
               f"of {len(rep.steps)} steps" + (f" ({maybe} more may follow from what those change)" if maybe else "")
               + f"; lake {rep.lake} version {rep.version_before} -> {rep.version_after} in {rep.seconds:.1f} s")


@main.command()
@click.option("--lake", "lake_uri", default="demo-lake", show_default=True, type=click.Path(file_okay=False))
@click.option("--source", default="sample_data", show_default=True, type=click.Path(exists=False))
@click.option("--model", default="offline", show_default=True,
              help="Encoder for the embedding step (e.g. ViT-B-32 where CLIP weights are available).")
@json_option
@_friendly_errors
def demo(lake_uri: str, source: str, model: str, as_json: bool) -> None:
    """Run the shipped demo pipeline (lakecurate/pipelines/demo.toml) on the photos of ./sample_data
    (or --source) into --lake, and show what it found: flagged pairs, the lowest alignment, a search,
    what curation dropped. lakecurate run LAKE demo runs the same steps, but always on the bundled
    sample_data (wherever it is run from), with the offline encoder, and prints only each step's line.

    Example: lakecurate demo --lake ./demo-lake --source sample_data
    """
    from lakecurate.encoders import resolve
    from lakecurate.pipeline import load_pipeline

    out: dict[str, Any] = {}  # --json: what the text shows, as one object
    say = (lambda *a, **k: None) if as_json else click.echo

    if not os.path.isdir(source):
        raise LakeError(f"'{source}' is not a folder; run this from the lakecurate checkout or pass --source PATH")
    spec = resolve(model)  # an unknown name is refused before the lake is made (it made one, then refused)
    overrides: dict[str, dict[str, Any]] = {"ingest": {"sources": [os.path.abspath(source)]}}
    bundled = Path(__file__).resolve().parents[1] / "sample_data"
    if not (bundled.is_dir() and os.path.samefile(source, bundled)):
        # demo.toml's k fits the bundled photos; other photos get the cluster stage's own rule (about
        # the square root of the rows): 2 pairs stopped at "-k 3 asks for more concepts", and demo has no -k
        overrides["cluster"] = {"k": None}
    if spec is not None and spec.meaningless:
        # a test model's similarities mean nothing: semantic dedup refuses them (the demo stopped at its dedup step)
        overrides["dedup"] = {"methods": ["exact", "phash"]}
    if "://" in Lake(lake_uri).uri:  # demo.toml writes the report into the lake's folder: a local file here instead
        overrides["report"] = {"out": os.path.abspath("demo-report.html")}
    pipe = load_pipeline("demo", lake_uri=Lake(lake_uri).uri, overrides={**overrides, "embed": {"model": model}})
    lake = open_lake(lake_uri, create=True)  # on --branch when given (it wrote to main, ignoring it)
    explain_encoder(spec.arch, spec.meaningless)
    say(f"== run pipeline {pipe.source} on {lake.uri}")
    if "dedup" in overrides:
        say(f"(dedup by exact and perceptual hashes only: semantic dedup needs a real model, not the test model '{model}')")
    rep = lake.run(pipe, on_step=None if as_json else _step_line)
    out["run"] = rep
    ingest = next((s for s in rep.steps if s.step == "ingest" and s.action == "ran"), None)
    if ingest is not None:
        say(f"ingested {ingest.result.get('written', 0)} rows from {source}")
    say("\n== flagged pairs")
    df = lake.sql("SELECT key, ingest_status, ingest_error FROM pairs WHERE ingest_status <> 'ok' ORDER BY key")
    out["flagged"] = df
    say(df.to_string(index=False, max_colwidth=70) if len(df) else "(none)")
    if spec is not None:
        from lakecurate.names import embedding_columns

        score = embedding_columns(spec.prefix)["score"]
        say(f"\n== embed ({model}): lowest image-caption alignment (candidates for a mismatched caption)")
        low = lake.sql(f"SELECT key, ROUND({score}, 3) AS score, caption FROM pairs "
                       f"WHERE {score} IS NOT NULL ORDER BY {score} LIMIT 4")
        say(low.to_string(index=False, max_colwidth=60))
        planted = planted_defects(source, "mismatched caption")
        if planted:  # where the documented mismatch ranks: a small encoder need not put it last
            ranked = lake.sql(f"SELECT key, ROUND({score}, 3) AS score FROM pairs WHERE {score} IS NOT NULL ORDER BY {score}")
            keys = ranked["key"].tolist()
            for key in planted:
                if key in keys:
                    i = keys.index(key)
                    say(f"the planted mismatched caption ({key}, see {os.path.join(source, 'README.md')}) ranks "
                               f"{i + 1} of {len(keys)} from the lowest (score {float(ranked['score'].iloc[i]):.3f})")
        say("\nsearch 'a cat':")
        hits = lake.search("a cat", k=3, prefix=spec.prefix)
        say(hits[["key", "similarity"]].round(3).to_string(index=False))
        by = lake.sql("SELECT drop_reason, count(*) AS n FROM pairs GROUP BY drop_reason ORDER BY n DESC, drop_reason")
        kept = int(by.loc[by["drop_reason"].isna(), "n"].sum())
        out["curate"] = {"kept": kept, "dropped": {r: int(n) for r, n in zip(by["drop_reason"], by["n"]) if isinstance(r, str)}}
        say(f"\n== curate (built-in recipe 'basic'): kept {kept} of {int(by['n'].sum())}; dropped: "
                   + ", ".join(f"{r} {int(n)}" for r, n in zip(by["drop_reason"], by["n"]) if isinstance(r, str)))
        if planted:
            from lakecurate.sqlcheck import in_list

            fate = lake.sql(f"SELECT key, keep, drop_reason FROM pairs WHERE key IN ({in_list(planted)})")
            for row in fate.itertuples():
                say(f"{row.key}: " + ("kept" if row.keep else f"dropped ({row.drop_reason})"))
        reb = lake.sql("SELECT count(*) AS n FROM pairs WHERE rebalance_keep")
        say(f"rebalanced: {int(reb['n'][0])} kept")
        out["rebalanced"] = int(reb["n"][0])
    say(f"\n== report: {os.path.join(lake.uri, 'report.html')} (open it in a browser)")
    say("\n== lake")
    d = lake.info()
    out.update(report=os.path.join(lake.uri, "report.html"), rows=d["rows"], version=d["version"])
    say(f"{d['rows']} rows, version {d['version']}, columns: {', '.join(c['name'] for c in d['columns'])}")
    # (lakecurate run LAKE demo ingests the bundled sample_data: right only when that was the source)
    from lakecurate.pipeline import SHIPPED

    shipped = os.path.realpath(source) == os.path.realpath(SHIPPED.parent.parent / "sample_data")  # demo.toml's
    again = (f"lakecurate run {shlex.quote(lake_uri)} demo" if shipped and model == "offline" else
             f"lakecurate demo --lake {shlex.quote(lake_uri)} --source {shlex.quote(source)}"
             + ("" if model == "offline" else f" --model {shlex.quote(model)}"))
    if as_json:
        out["next"] = again
        echo_json({k: (json.loads(v.to_json(orient="records")) if hasattr(v, "to_json") else v) for k, v in out.items()})
        return
    click.echo(f"\nnext: lakecurate status {shlex.quote(lake_uri)}; {again} (again: nothing to do)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
