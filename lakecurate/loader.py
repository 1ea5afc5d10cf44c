"""Train straight from the lake: a PyTorch dataset over a curated version, read by random access.

``LakeDataset(lake)`` is the samples of a view (default: the current curated view; or ``where``)
of one lake version (default: the latest; or a number, tag or branch), each row as many times as
``repeats`` says, in the curated order (``seq_order``) or, with ``shuffle``, a seeded global
permutation per epoch. Each sample is a dict: ``id``, ``image`` (a decoded RGB PIL image, the
``transform`` of it, or the stored bytes with ``decode=False``), ``caption`` (any caption column,
``caption="caption_coca"``), and the ``columns`` asked for.

Sharding is deterministic and exact: the epoch's sample order is dealt to ranks (torch.distributed's,
else torchrun's ``RANK``/``WORLD_SIZE``, or ``rank=``/``world_size=``; a DataLoader worker reads for its
main process's rank; sample ``i`` to rank ``i % world_size``; with ``even``, the default, first repeated from its start to a multiple of
the ranks, as torch's DistributedSampler does, so each rank runs as many batches and DDP never waits
on one that ended, even with more ranks than samples), and each rank's samples to its DataLoader
workers a batch at a time (the run's batch ``b`` to worker ``b % num_workers``, the order in which a
DataLoader takes the workers' batches), so across all ranks every sample of the epoch comes exactly
once (with ``even``, the repeated ones more often), and a rank's batches arrive in its order.

A checkpoint saves ``state_dict(step)`` (the epoch, the batches of each rank trained on, the
version and branch read, and what decides the order: seed, shuffle, batch size, world size, view,
a digest of the samples); ``load_state_dict(state)`` on a dataset made as the run made it continues
that epoch where it stopped, on the saved version (not the latest: a lake that moved on would
change the order), so a killed run sees every sample of the epoch exactly once. Anything that
would change the order is refused in one line naming it. (``resume(epoch, step)`` skips the first
``step`` batches of each rank of this dataset, without checks.) Images are read with Lance's random
access (``read_blobs`` by row id, ``read_size`` at a time) and decoded in the workers. What the
plan notes (rows left out, rows without ``seq_order`` placed last, stale decisions accepted with
``allow_stale``) is in ``warnings`` and is also a ``LoaderWarning`` when the dataset is made.

    from lakecurate.loader import LakeDataset, loader

    if __name__ == "__main__":  # spawned workers import the script again: without this, they exit
        ds = LakeDataset("./lake", version="curated-v1", shuffle=True, seed=0, batch_size=256, transform=preprocess)
        for epoch in range(10):
            ds.set_epoch(epoch)
            for batch in loader(ds, num_workers=4):
                ...  # batch["image"]: a stacked tensor, batch["caption"]: a list of str

The selection is :func:`lakecurate.export.plan`'s, so a stale decision is refused as export refuses it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from lakecurate.errors import LakeError, removed_meanwhile
from lakecurate.images import decode_image
from lakecurate.options import is_number

if TYPE_CHECKING:
    from lakecurate.store import Store

try:  # torch is a dependency of the model stages; the dataset is a torch IterableDataset when it is there
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - torch is installed with lakecurate
    _Base = object  # type: ignore[assignment,misc]


class LoaderWarning(UserWarning):
    """What the loader's plan noted (``LakeDataset.warnings``): rows left out, placed last, or a
    stale decision accepted with ``allow_stale``."""


class LakeDataset(_Base):  # type: ignore[misc,valid-type]
    """The samples of a lake view as a PyTorch ``IterableDataset`` (see the module doc)."""

    def __init__(self, lake: "Store | str | os.PathLike", *, version: int | str | None = None, where: str | None = None,
                 caption: str = "caption", columns: str | Sequence[str] = (), shuffle: bool = True, seed: int = 0,
                 batch_size: int = 1, transform: Callable[[Any], Any] | None = None, decode: bool = True,
                 repeats: bool = True, rank: int | None = None, world_size: int | None = None,
                 read_size: int = 64, allow_stale: bool = False, even: bool = True):
        from lakecurate.options import flag, path, text, texts, whole
        from lakecurate.store import Store

        # every option checked here, in one line, before the lake is read (shuffle="no" shuffled;
        # rank=0.5 or transform="x" failed only while iterating)
        store = Store.open(path("lake", lake)) if not hasattr(lake, "dataset") else lake
        self.shuffle, self.decode, self.even = flag("shuffle", shuffle), flag("decode", decode), flag("even", even)
        self.repeats, self.allow_stale = flag("repeats", repeats), flag("allow_stale", allow_stale)
        self.seed = whole("seed", seed, 0, high=2**64 - 1)
        self.batch_size, self.read_size = whole("batch_size", batch_size), whole("read_size", read_size)
        self._rank = whole("rank", rank, 0, none_ok=True)
        self._world = whole("world_size", world_size, 1, none_ok=True)
        if (rank is None) != (world_size is None) or (self._world is not None and not self._rank < self._world):
            raise LakeError(f"rank {rank!r} of world_size {world_size!r}: give both, with 0 <= rank < world_size")
        if transform is not None and not callable(transform):
            raise LakeError(f"invalid transform {transform!r}: expected a function of a PIL image, or None")
        self.transform = transform
        self.caption_column = text("caption", caption)
        self.columns = texts("columns", columns)  # "keep" is one column, not four letters
        self._where_given = None if where is None else text("where", where)
        self._version_given = version
        self.epoch, self.start_step = 0, 0
        self._resume_world: int | None = None  # the world_size a loaded state was saved with
        self._parent_rank_world: tuple[int, int] | None = None  # in a DataLoader worker: the main process's
        self._iterated = 0  # epochs a worker's copy has read
        self._ds: Any = None
        self._plan(store, version)

    def _plan(self, store: "Store", version: int | str | None) -> None:
        """The samples of ``version`` (export's plan); their warnings shown once, as Python warnings."""
        from lakecurate.export import plan

        ds = store.dataset(version)
        missing = [c for c in self.columns if c not in ds.schema.names]
        if missing:
            raise LakeError(f"no column {', '.join(missing)} in lake '{store.uri}'; columns: {', '.join(ds.schema.names)}")
        if "image" in self.columns or self.caption_column in self.columns:
            raise LakeError("image and the caption are in every sample; name other columns in columns=")
        ds, tbl, _copy, self.where, self.warnings = plan(
            store, where=self._where_given, version=ds.version if version is None else version, repeats=self.repeats,
            caption=self.caption_column, allow_stale=self.allow_stale, extra=self.columns, what="the loader",
            allow_hint="allow_stale=True")
        self.uri, self.branch, self.version = store.uri, getattr(store, "branch", None), ds.version
        self.storage_options = getattr(store, "storage_options", None)
        # a tag or branch name is opened by name in the workers and must still be this version there
        self.ref: int | str = version if isinstance(version, str) and not is_number(version) else ds.version
        # the branch the version is on (a tag or branch:N may name another than the store's)
        self.on = store._ref(self.ref)[0] if isinstance(self.ref, str) and hasattr(store, "_ref") else self.branch
        if isinstance(self.ref, str) and hasattr(store, "_ref") and store._ref(self.ref)[1] is None:
            # a branch name means its latest version, which a teammate's commit moves: the workers
            # open the version the loader planned on, on that branch
            self.ref = f"{self.ref.partition(':')[0]}:{ds.version}"
        if not tbl.num_rows:  # an epoch of nothing, without a word (export refuses an empty selection)
            raise LakeError(f"no rows to load from lake '{store.uri}' (version {ds.version}) with where {self.where!r}; "
                            "check the view (lakecurate status) or where=")
        self.rowids = tbl.column("_rowid").to_numpy().astype(np.uint64)
        self._selection: str | None = None
        self.fields = {"id": tbl.column("id").to_pylist(), "caption": tbl.column(self.caption_column).to_pylist(),
                       **{c: tbl.column(c).to_pylist() for c in self.columns}}
        for note in self.warnings:  # (ds.warnings alone went unread: rows left out, or placed last, silently)
            warnings.warn(f"lake '{store.uri}' version {ds.version}: {note}", LoaderWarning, stacklevel=3)

    # ------------------------------------------------------------------ the order and the shards
    def __len__(self) -> int:
        """This rank's samples in an epoch (from ``resume``'s step on)."""
        rank, world = self.rank_world()
        n = len(self._rank_order(rank, world))
        return max(0, n - self.start_step * self.batch_size)

    @property
    def samples(self) -> int:
        """Samples in an epoch across all ranks (rows times their repeats)."""
        return len(self.rowids)

    def set_epoch(self, epoch: int) -> None:
        """The epoch to read next (its shuffle); a resumed step applies to its own epoch only."""
        epoch = _count("set_epoch", "epoch", epoch)  # ("1" shuffled unlike 1 and was saved as text)
        if epoch != self.epoch:
            self.start_step = 0
        self.epoch = epoch

    def resume(self, epoch: int, step: int) -> None:
        """Continue at ``step`` (batches each rank has trained on) of ``epoch``, of this dataset as
        made. To resume from a checkpoint use :meth:`load_state_dict`, which also reads the saved
        version and checks that the order is the one trained on."""
        self.epoch, self.start_step = _count("resume", "epoch", epoch), _count("resume", "step", step)

    def _settings(self) -> dict[str, Any]:
        """What decides which samples come in which order to which rank and batch."""
        return {"seed": self.seed, "shuffle": self.shuffle, "batch_size": self.batch_size, "even": self.even,
                "repeats": self.repeats, "where": self._where_given, "caption": self.caption_column}

    def selection(self) -> str:
        """A digest of the epoch's samples in the view's order (ids, repeats included): what two
        datasets must share for one to continue the other's order."""
        if self._selection is None:  # once a plan (state_dict may be called every step)
            h = hashlib.sha256()
            for i in self.fields["id"]:
                h.update(str(i).encode() + b"\0")
            self._selection = h.hexdigest()[:16]
        return self._selection

    def state_dict(self, step: int) -> dict[str, Any]:
        """What to save with a checkpoint after ``step`` batches (of each rank) of the current epoch:
        where and how far, the version and branch read, and what decides the order (seed, shuffle,
        batch size, ranks, view, the samples' digest). :meth:`load_state_dict` continues from it."""
        rank, world = self.rank_world()
        return {"epoch": self.epoch, "step": _count("state_dict", "step", step), "version": self.version,
                "branch": self.on, **self._settings(), "world_size": world, "rank": rank,
                "samples": self.samples, "selection": self.selection()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a run from its :meth:`state_dict`: each rank reads the rest of the saved epoch, so
        the epoch's samples come exactly once across the restart.

        Made without ``version``, the dataset reads the saved version (on the saved branch), not
        the latest: a lake that moved on (an ingest, a re-curation) would change the order, and
        the rest of the epoch would repeat some samples and never reach others. Made with one, it
        must be the saved one. Another seed, shuffle, batch size, world size, view or set of
        samples is refused in one line that says what differs (rank is not checked: every rank
        loads rank 0's checkpoint).

            ds = LakeDataset("./lake", seed=0, batch_size=256)
            ds.load_state_dict(torch.load("ckpt.pt")["data"])   # saved as ds.state_dict(step + 1)
        """
        if not isinstance(state, dict) or not {"epoch", "step", "version"} <= set(state):
            raise LakeError(f"load_state_dict takes what state_dict(step) returned (epoch, step, version, ...), "
                            f"not {state!r:.80}")
        epoch, step = _count("load_state_dict", "epoch", state["epoch"]), _count("load_state_dict", "step", state["step"])
        differ = [f"{k} {state[k]!r} (this dataset: {v!r})" for k, v in self._settings().items()
                  if k in state and state[k] != v]
        if differ:
            raise LakeError(f"the state was saved with {', '.join(differ)}; make the dataset as the run did: "
                            "another order would repeat some samples of the epoch and skip others")
        if "world_size" in state:
            self._resume_world = _count("load_state_dict", "world_size", state["world_size"])
            self._check_world(strict=False)
        saved, branch = state["version"], state.get("branch")
        ref = f"{branch or 'main'}:{saved}"
        if (self.version, self.on) != (saved, branch):
            if self._version_given is not None:
                raise LakeError(f"the state was saved at version {ref} of lake '{self.uri}', this dataset reads "
                                f"{self.on or 'main'}:{self.version} (version={self._version_given!r}); pass "
                                f"version={ref!r}, or leave version out to read the saved one")
            from lakecurate.store import Store

            store = Store.open(self.uri, storage_options=self.storage_options, branch=branch)
            try:
                store.dataset(saved)
            except LakeError as exc:
                raise LakeError(f"the state's version {ref} cannot be read any more ({exc}); a run resumes on the "
                                "version it trained on: tag it (lakecurate tag) so that cleanup keeps it") from None
            self._ds = None
            self._plan(store, saved)  # by number on its branch: planned as the run planned it
        if "selection" in state and (state.get("samples"), state["selection"]) != (self.samples, self.selection()):
            raise LakeError(f"the samples of version {ref} of lake '{self.uri}' are not those the state was saved "
                            f"with ({self.samples} now, {state.get('samples')} then); make the dataset as the run did")
        rank, world = self.rank_world()
        world = self._resume_world or world
        batches = -(-len(self._rank_order(min(rank, world - 1), world)) // self.batch_size)
        if step > batches:  # (a state of another run, or corrupted: the epoch read nothing, without a word)
            raise LakeError(f"the state's step {step} is past the end of epoch {epoch}: each rank has {batches} batches "
                            f"of {self.batch_size} ({self.samples} samples, world_size {world}); load the state this "
                            "run saved")
        self.epoch, self.start_step = epoch, step

    def _check_world(self, strict: bool = True) -> None:
        """A state's steps count each rank's batches: with another world size they are other samples.
        Not ``strict`` (loading, maybe before ``init_process_group``): an unknown world passes."""
        if self._resume_world is None:
            return
        world = self.rank_world()[1]
        if world != self._resume_world and (strict or self._world is not None or world > 1):
            raise LakeError(f"the state was saved with world_size {self._resume_world}, this run has {world}; resume "
                            "with as many ranks (a step counts each rank's batches), or start the epoch again")

    def rank_world(self) -> tuple[int, int]:
        """(rank, world size): as given, else torch.distributed's process group, else torchrun's
        ``RANK``/``WORLD_SIZE`` (a run that reads them without a process group), else (0, 1). In a
        DataLoader worker, the main process's: a worker has no process group of its own (each
        rank's workers read the whole epoch, every sample once per rank)."""
        if self._world is not None:
            return int(self._rank), int(self._world)  # type: ignore[arg-type]
        if self._parent_rank_world is not None and _in_worker():  # what its main process saw when it sent it
            return self._parent_rank_world  # (only there: a copy made before init_process_group kept (0, 1))
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except ImportError:  # pragma: no cover
            pass
        return _env_rank_world()

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's global sample order (positions in the view): curated, or a seeded permutation."""
        n = len(self.rowids)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).permutation(n)

    def _rank_order(self, rank: int, world: int) -> np.ndarray:
        """The epoch's positions dealt to ``rank``: every ``world``-th. With ``even`` (the default)
        the order is first topped up with its own first samples to a multiple of ``world``, so
        every rank reads as many samples and batches (a rank with one batch more hangs DDP at its
        last all-reduce), as torch's DistributedSampler does."""
        order = self.order()
        short = -len(order) % world
        if self.even and short:  # repeated as often as it takes: a world of 200 ranks over 62 samples
            order = np.resize(order, len(order) + short)
        return order[rank::world]

    def indices(self, rank: int, world: int, worker: int = 0, workers: int = 1) -> np.ndarray:
        """The sample positions one DataLoader worker of one rank reads this epoch, in order."""
        mine = self._rank_order(rank, world)
        batch = np.arange(len(mine)) // self.batch_size - self.start_step  # counted from where this run starts
        return mine[(batch >= 0) & (batch % workers == worker)]

    # ------------------------------------------------------------------ reading
    def _dataset(self) -> Any:
        if self._ds is None:  # opened in the worker process, not pickled from the parent
            from lakecurate.store import Store

            store = Store.open(self.uri, storage_options=self.storage_options, branch=self.branch)
            ds = store.dataset(self.ref)
            if ds.version != self.version:
                raise LakeError(f"'{self.ref}' of lake '{self.uri}' moved from version {self.version} to {ds.version} "
                                "while the loader was starting; make the dataset again")
            self._ds = ds
        return self._ds

    def __getstate__(self) -> dict[str, Any]:
        # pickled in the main process, for a DataLoader worker: the rank it reads for is the main
        # process's (the worker's own torch.distributed is not initialised)
        state = dict(self.__dict__)
        state["_ds"] = None
        state["_parent_rank_world"] = self.rank_world()
        state["_iterated"] = 0
        return state

    def __iter__(self) -> Any:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            self._iterated += 1
            if self._iterated == 2:  # this copy is read again: the DataLoader keeps its workers
                warnings.warn(f"lake '{self.uri}': a DataLoader worker reads its copy of the dataset for a second epoch "
                              "(persistent_workers=True): set_epoch, resume and load_state_dict made in the main "
                              "process since the workers started do not reach it, so every epoch repeats the first "
                              "one's order; leave persistent_workers False (lakecurate.loader.loader does)",
                              LoaderWarning, stacklevel=2)
        rank, world = self.rank_world()
        if self.start_step:
            self._check_world()
        positions = self.indices(rank, world, worker, workers)
        ds = self._dataset()
        for s in range(0, len(positions), self.read_size):
            chunk = positions[s: s + self.read_size]
            ids = self.rowids[chunk].tolist()
            try:
                blobs = [b for _, b in ds.read_blobs("image", ids=ids, preserve_order=True)]
            except (OSError, ValueError) as exc:
                gone = removed_meanwhile(exc)
                if gone is None:
                    raise
                raise LakeError(f"{gone} of lake '{self.uri}' version {self.version} was removed while the loader read "
                                "it (a `lakecurate cleanup` after a compact or a restore?); tag the version a training "
                                "run reads to keep it (lakecurate tag), and make the dataset again") from None
            for pos, data in zip(chunk.tolist(), blobs):
                yield self._sample(pos, data)

    def _sample(self, pos: int, data: bytes | None) -> dict[str, Any]:
        out = {name: values[pos] for name, values in self.fields.items()}
        image: Any = data
        if self.decode:
            image, err = decode_image(data)
            if image is None:
                raise LakeError(f"the image of sample {out['id']} (lake '{self.uri}' version {self.version}) cannot be "
                                f"decoded: {err}; leave it out with where=\"... AND id <> '{out['id']}'\", or embed "
                                "the lake first: an embedding records undecodable images, and the loader leaves them out")
            if self.transform is not None:
                image = self.transform(image)
        out["image"] = image
        return out


def _in_worker() -> bool:
    """Whether this process is a DataLoader worker."""
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover
        return False
    return get_worker_info() is not None


def _env_rank_world() -> tuple[int, int]:
    """torchrun's ``RANK`` and ``WORLD_SIZE`` (both set, whole, 0 <= RANK < WORLD_SIZE), else (0, 1)
    where neither is set; one without the other is refused (RANK alone read every sample on each rank)."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return 0, 1
    try:
        r, w = int(rank), int(world)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        r, w = -1, 0
    if not 0 <= r < w:
        raise LakeError(f"RANK={rank!r} and WORLD_SIZE={world!r} in the environment: expected whole numbers with "
                        "0 <= RANK < WORLD_SIZE (torchrun sets them); or pass rank= and world_size=")
    return r, w


def _count(call: str, name: str, value: Any) -> int:
    """An epoch or a step: a whole number >= 0, else a one-line LakeError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise LakeError(f"{call}: {name} {value!r} must be a whole number >= 0")
    return int(value)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of samples: tensors stacked (a ``transform``'s output), everything else as lists."""
    import torch

    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def loader(dataset: LakeDataset, num_workers: int = 0, **options: Any) -> Any:
    """A ``torch.utils.data.DataLoader`` over ``dataset`` with its batch size, :func:`collate`, and
    worker processes started by spawn (a forked Lance runtime can hang). A spawned worker imports
    the main script again: with ``num_workers``, call this under ``if __name__ == "__main__":``."""
    from torch.utils.data import DataLoader

    if num_workers:
        options.setdefault("multiprocessing_context", "spawn")
        if options.get("persistent_workers"):
            raise LakeError("loader: persistent_workers=True keeps the workers' copy of the dataset of the first epoch: "
                            "set_epoch, resume and load_state_dict would not reach them (every epoch the first "
                            "one's order); leave it out (each epoch starts its workers)")
    return DataLoader(dataset, batch_size=dataset.batch_size, num_workers=num_workers, collate_fn=collate, **options)
