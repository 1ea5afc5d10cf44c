"""Where per-fragment work runs: in this process ("local") or on Ray actors ("ray").

The runner (:mod:`lakecurate.runner`) hands over a picklable worker class and one argument tuple
per fragment; every actor computes its fragment *and commits it* (``columns.fill_fragment``: one
``DataReplacement`` per fragment, retried on conflict), exactly as the local engine does. So a run
on Ray is as safe beside other writers as a local one, and a failed or killed run keeps the
fragments that were committed.

Why not ``lance_ray.add_columns``: it commits one ``Merge`` over every fragment at the version it
read, which conflicts with any append or other column landing meanwhile, and it refuses columns
that already exist, so it cannot fill only the new fragments (docs/research/shared_tables.md).

The cluster: ``RAY_ADDRESS`` (or ``address=``) names one; otherwise a local Ray is started with
the machine's cores (``LAKECURATE_RAY_CPUS`` caps them, e.g. 2 in tests).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from lakecurate.errors import LakeError
from lakecurate.options import given, spell


ENGINES = ("local", "ray")


def die_with_parent(parent: int | None = None) -> None:
    """Make this worker process exit when the process that started it dies (call it in a pool's
    initializer). A pool worker blocks on its task pipe, whose write end it holds itself, so it never
    sees EOF: after a ``kill -9`` of embed one stayed alive for minutes. Linux: the kernel sends
    SIGKILL (``PR_SET_PDEATHSIG``); everywhere: a daemon thread polls the parent's pid.

    ``parent``: the pid of the process that started the pool (``os.getpid()`` there, passed in the
    initializer's arguments). A spawned worker runs its initializer only after it has imported what
    its arguments need (seconds for lance): a parent killed meanwhile made ``os.getppid()`` here
    already init's pid, which the watchdog then took for the parent, and dedup's workers stayed
    alive for good."""
    import signal
    import threading
    import time

    if parent is None:
        parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except Exception:  # no libc prctl: the watchdog below still applies
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def check_engine(engine: str, address: str | None = None) -> None:
    """Refuse an unknown engine name, and for Ray bad settings in its environment variables or a
    cluster that cannot be reached, before a stage declares or computes anything: Ray is connected
    to (or started) here, so a ``RAY_ADDRESS`` nothing answers on is refused before a first write
    (curate and dedup had declared their columns, and undone them, two empty versions a failure)."""
    if engine not in ENGINES:
        raise LakeError(f"unknown engine {engine!r}; use {' or '.join(repr(e) for e in ENGINES)}")
    if engine == "ray":
        ray_settings(address)  # (checked even when this process is connected already)
        ray_init(address)


def ray_settings(address: str | None = None) -> tuple[str | None, int | None]:
    """(the Ray address, the CPUs of a local Ray) from ``address`` or ``RAY_ADDRESS`` and
    ``LAKECURATE_RAY_CPUS``, checked: a bad value was a traceback from int() or from Ray, and 0
    CPUs or an address nothing listens on hung for ever."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    cpus = os.environ.get("LAKECURATE_RAY_CPUS", "").strip()
    if cpus and (not cpus.isdigit() or int(cpus) < 1):
        raise LakeError(f"LAKECURATE_RAY_CPUS={cpus!r}: give a whole number of CPUs, 1 or more, for the local Ray "
                        "(or unset it: every CPU of this machine)")
    if address and address not in ("auto", "local"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise LakeError(f"RAY_ADDRESS={address!r}: give a cluster's head as host:port (e.g. 10.0.0.5:6379), "
                            "'auto' for the cluster `ray start` made on this machine, or unset it for a local Ray")
    return address, int(cpus) if cpus else None


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a host:port nothing answers on (Ray would retry connecting to it for ever)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise LakeError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({exc.strerror or exc}); start it, "
                        "fix RAY_ADDRESS, or unset it to start a local Ray") from None


def ray_init(address: str | None = None) -> Any:
    """Connect to Ray (or start a local one) once per process; the module, or a clear error."""
    try:
        import ray
    except ImportError:
        raise LakeError(f"the ray engine needs Ray: pip install 'lakecurate[ray]' (or use {given('--engine', 'local')})") from None
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from this tool
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        address, cpus = ray_settings(address)
        if address:
            kw["address"] = address
            if address not in ("auto", "local"):
                _reachable(address)
        else:  # a Ray of this process's own, not a cluster someone started on this machine with `ray start`
            kw["address"] = "local"
            kw["num_cpus"] = cpus
        # Workers must import what the driver imports (lakecurate, a user's UDF module): pass the
        # driver's import path on, so a UDF in the working directory resolves there too.
        path = os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)
        kw["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        import warnings

        with warnings.catch_warnings():  # Ray starts its processes by fork+exec; Lance's fork warning is moot
            warnings.filterwarnings("ignore", message="lance is not fork-safe")
            try:
                ray.init(**kw)
            except (ConnectionError, ValueError) as exc:  # (ValueError: "ray://" without ray[client], say)
                raise LakeError(f"cannot use the Ray cluster at RAY_ADDRESS={address} ({str(exc).splitlines()[0]}); "
                                "check RAY_ADDRESS, or unset it to start a local Ray") from None
    _driver_prints_to_stderr()  # (also where the caller had started Ray itself)
    return ray


def _driver_prints_to_stderr() -> None:
    """What Ray's driver threads print, its raylet's word ("(raylet) A worker died or was killed
    ...") and the workers' lines, goes to stderr: Ray printed the raylet's on stdout, from a thread
    of its own, so the stdout of ``embed --engine ray --json`` was no longer JSON. (Ray has no
    setting for it: its ``print_to_stdstream``, which that thread looks up when it prints, is
    wrapped; a Ray without it prints as it does.)"""
    from ray._private import worker

    emit = getattr(worker, "print_to_stdstream", None)
    if emit is None or getattr(emit, "to_stderr", False):
        return

    def to_stderr(data: dict, *args: Any, **kwargs: Any) -> Any:
        return emit({**data, "is_err": True}, *args, **kwargs)

    to_stderr.to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _ship_file_udfs(ray: Any) -> None:
    """Functions loaded from a file (``--udf path/file.py:fn``) live in a module workers cannot
    import: send them by value instead of by name."""
    for name, module in list(sys.modules.items()):
        if name.startswith(FILE_UDF_PREFIX) and module is not None:
            ray.cloudpickle.register_pickle_by_value(module)


FILE_UDF_PREFIX = "lakecurate_udf_"


class RayActors:
    """A pool of ``cls(*init)`` actors for at most ``most`` calls, each built once (a stage's
    ``setup()``: a model loaded once per actor); one actor per CPU, or with ``gpus`` one per GPU of
    the cluster (each reserving it). ``map`` runs calls through them, results as they finish; the
    first call that fails raises there (its exception, e.g. a ``LakeError`` naming the fragment),
    and what was committed stays committed.
    ``ready()`` waits until every actor is built, raising the first one's error (stopping them all):
    a first run builds its actors (loads its model) before it declares its columns, so a model that
    will not load leaves no version behind, as on the local engine."""

    def __init__(self, cls: type, init: tuple, most: int, *, actors: int | None = None, address: str | None = None,
                 num_cpus: float = 1, gpus: bool = False) -> None:
        self.ray = ray = ray_init(address)
        _ship_file_udfs(ray)
        res = ray.cluster_resources()
        n = actors or max(1, int(res.get("GPU", 0)) if gpus else int(res.get("CPU", 1) // num_cpus))
        n = min(n, max(1, most))
        remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=1 if gpus else 0)(cls)
        self.actors = [remote_cls.remote(*init) for _ in range(n)]
        self.homes = [a.__ray_call__.remote(_home) for a in self.actors]  # (its first call: answered once it is built)

    def ready(self) -> None:
        """Wait until every actor is built; the first that failed raises here, the others stopped."""
        try:
            self.ray.get(self.homes)
        except BaseException as exc:
            self.stop()
            if isinstance(exc, Exception):
                raise _task_error(exc) from None
            raise

    def map(self, method: str, calls: Sequence[tuple], *, tick: Callable[[], None] | None = None,
            every: float = 2.0) -> Iterator[Any]:
        """``method(*args)`` for every ``args`` in ``calls``, results as they finish; the first call
        that fails stops every actor and raises here. ``tick``: called every ``every`` seconds while
        no result arrives (a progress bar polling what the actors did so far)."""
        from ray.exceptions import RayError
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        try:
            for args in calls:
                pool.submit(lambda a, args: getattr(a, method).remote(*args), args)
            while pool.has_next():
                try:
                    result = pool.get_next_unordered(timeout=every if tick is not None else None)
                except TimeoutError as exc:
                    if isinstance(exc, RayError) or tick is None:  # (a call that failed with a TimeoutError of its own)
                        raise
                    tick()
                    continue
                yield result
        except BaseException as exc:  # (GeneratorExit too: the caller stopped reading)
            self.stop(list(getattr(pool, "_future_to_actor", {})))
            if isinstance(exc, Exception):
                raise _task_error(exc) from None
            raise

    def stop(self, pending: Sequence[Any] = ()) -> None:
        """Kill every actor and wait until each is dead (:func:`_stop_actors`)."""
        _stop_actors(self.ray, self.actors, self.homes, list(pending))


def _home(actor: Any) -> tuple[str, int]:
    """In an actor: (its node, its pid)."""
    import ray

    return ray.get_runtime_context().get_node_id(), os.getpid()


def _stop_actors(ray: Any, actors: list, homes: list, pending: list, timeout: float = 60) -> None:
    """Kill every actor of a map that failed and wait until each is dead: an actor still computing
    its fragment would commit it after the caller rolled back (the runner undeclares the columns of
    a first run that committed nothing: the actor's commit then failed, an unhandled error that
    blamed "another writer (a restore, or a run with --recompute)"). A commit is atomic, so an
    actor killed during one leaves it made or not made. Ray says an actor is dead once it was told
    to kill it; an actor's process on this machine is waited for until it is gone too."""
    import time

    for actor in actors:
        ray.kill(actor, no_restart=True)
    for ref in [*pending, *(a.__ray_ready__.remote() for a in actors)]:  # (their errors: taken, not "unhandled")
        try:
            ray.get(ref, timeout=timeout)
        except Exception:  # RayActorError: dead, as asked (GetTimeoutError: Ray is stuck; nothing more to do)
            pass
    here = ray.get_runtime_context().get_node_id()
    pids = []
    for ref in homes:
        try:
            node, pid = ray.get(ref, timeout=0)
        except Exception:  # (an actor that died, or was killed, before it was built)
            continue
        if node == here:
            pids.append(pid)
    end = time.monotonic() + timeout
    while pids and time.monotonic() < end:
        pids = [pid for pid in pids if process_alive(pid)]
        if pids:
            time.sleep(0.02)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host: not gone, nor a zombie that has exited (its parent
    has not reaped it yet); another user's process counts as alive. What the runs' claims and a
    failed Ray map's wait for its actors both ask."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: whether it can be signalled
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # (another user's process: alive)
            pass
        return True


def gpu_actors(device: str | None, address: str | None = None) -> bool:
    """Whether a model stage on ``device`` runs on Ray as an actor a GPU, each reserving its own
    (Ray then sets its ``CUDA_VISIBLE_DEVICES``: "cuda" in an actor is its GPU), rather than an actor
    a CPU: with ``cuda``, or ``auto`` on a cluster with GPUs. Ray (2.60 here; ray-project/ray#54868)
    leaves every GPU visible to an actor that reserved none, so actors a CPU asked for "cuda" would
    each load a model on the first GPU. A device Ray cannot give (``cuda:N``: which GPU an actor
    gets is Ray's choice), or GPUs the cluster lacks, are refused here, before a stage declares
    anything.

    >>> gpu_actors(None), gpu_actors("cpu"), gpu_actors("mps")
    (False, False, False)
    """
    if device is None or device in ("cpu", "mps"):
        return False
    if device not in ("cuda", "auto"):
        raise LakeError(f"{spell('--device')} {device} with {spell('--engine')} ray: Ray gives each actor a GPU of its own (and sets "
                        f"CUDA_VISIBLE_DEVICES); use {given('--device', 'cuda')} (or auto), or {given('--engine', 'local')} for one GPU by number")
    has = bool(ray_init(address).cluster_resources().get("GPU"))
    if device == "cuda" and not has:
        raise LakeError(f"{spell('--device')} cuda with {spell('--engine')} ray, but the Ray cluster has no GPUs; use {given('--device', 'cpu')} or auto")
    return has


def cpus_per_gpu(address: str | None = None) -> int:
    """The CPUs that go with one GPU on the cluster's GPU nodes: the fewest, node by node (a
    node's CPUs over its GPUs), so that an actor reserving a GPU and these CPUs fits on every
    GPU node; 1 where the cluster has no GPU."""
    ray = ray_init(address)
    ratios = [int(n["Resources"].get("CPU", 0) // n["Resources"]["GPU"])
              for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU")]
    return max(1, min(ratios)) if ratios else 1


def task_window(ray: Any) -> int:
    """Tasks to keep in flight so every CPU of the cluster is busy while results are collected:
    two per CPU (what a window of large results holds at most)."""
    return 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_task_map(fn: Callable[..., Any], calls: Iterable[tuple], *, address: str | None = None,
                 num_cpus: float = 1, retries: int = 0, window: int | None = None) -> Iterator[Any]:
    """``fn(*args)`` for every ``args`` in ``calls`` as Ray tasks (no state to keep between calls:
    an ingest part), results as they finish. ``retries``: times Ray reruns a task whose worker
    died (only for idempotent work). ``window``: at most this many tasks submitted and not yet
    collected (``calls`` is then read as they go: a generator of large arguments stays bounded).
    The first call that fails raises here, as :meth:`RayActors.map` does; what was committed stays
    committed."""
    todo = iter(calls)
    first = next(todo, None)
    if first is None:
        return
    ray = ray_init(address)
    _ship_file_udfs(ray)
    remote = ray.remote(num_cpus=num_cpus, max_retries=retries)(fn)
    pending = [remote.remote(*first)]
    limit = window or float("inf")
    try:
        for args in todo:
            if len(pending) >= limit:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
            pending.append(remote.remote(*args))
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    except Exception as exc:
        for ref in pending:
            ray.cancel(ref)
        raise _task_error(exc) from None


def ordered_map(fn: Callable[..., Any], calls: Sequence[tuple], *, engine: str = "local", shared: tuple = (),
                address: str | None = None, retries: int = 2) -> Iterator[Any]:
    """``fn(*args, *shared)`` for every ``args`` in ``calls``, results **in the order of calls**:
    here, one after another, or (``engine="ray"``) as stateless Ray tasks, at most two per CPU in
    flight, a result held until its turn comes (so the results held stay bounded by the window).
    ``shared``: arguments every call gets, put in Ray's object store once (centroids, a source).

    A reduction over these results (a sum of float partials) therefore adds them in the same order
    on either engine and gets the same floats: what makes a global stage on Ray decide exactly as
    it does here. ``retries``: times Ray reruns a task whose worker died (the work must be
    idempotent: it reads, and returns its result).

    >>> list(ordered_map(divmod, [(7,), (9,)], shared=(2,)))
    [(3, 1), (4, 1)]
    """
    check_engine(engine)
    if engine == "local":
        for args in calls:
            yield fn(*args, *shared)
        return
    ray = ray_init(address)
    refs = tuple(ray.put(s) for s in shared)
    window = task_window(ray)
    numbered = ((i, fn, *args, *refs) for i, args in enumerate(calls))
    ready: dict[int, Any] = {}
    at = 0  # the next call whose result is due: tasks finish in any order
    for i, result in ray_task_map(_numbered, numbered, address=address, retries=retries, window=window):
        ready[i] = result
        while at in ready:
            yield ready.pop(at)
            at += 1


def _numbered(i: int, fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """A task of :func:`ordered_map`: its call's number with the result."""
    return i, fn(*args)


def _task_error(exc: Exception) -> Exception:
    """The task's own exception out of Ray's wrapper (a LakeError names the fragment), or, when
    Ray itself failed (a worker died, a function could not be unpickled), a LakeError saying so."""
    from ray.exceptions import RayError, RayTaskError

    err: Exception = exc
    while isinstance(err, RayTaskError) and isinstance(getattr(err, "cause", None), Exception):
        err = err.cause
    if not isinstance(err, RayError):
        return err  # the task's own exception
    if getattr(err, "actor_init_failed", False):  # an actor's __init__ raised: Ray keeps only its text, which ends with it
        lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if ln.strip()]
        return LakeError(f"the ray engine failed: an actor could not start (the stage's setup, e.g. loading its model, "
                         f"raised) {lines[-1][:300] if lines else ''}; fix that and run the command again")
    cause = getattr(err, "cause", None)
    what = cause if isinstance(cause, Exception) else err
    first = f"{type(what).__name__}: {str(what).strip().splitlines()[0][:300] if str(what).strip() else ''}"
    return LakeError(f"the ray engine failed: {first}; fragments already committed are kept, "
                     f"run the command again to do the rest (or use {given('--engine', 'local')})")
