"""Train straight from the lake: a PyTorch dataset over a curated version, read by random access.

``LakeDataset(lake)`` is the samples of a view (default: the current curated view; or ``where``)
of one lake version (default: the latest; or a number, tag or branch), each row as many times as
``repeats`` says, in the curated order (``seq_order``) or, with ``shuffle``, a seeded global
permutation per epoch. Each sample is a dict: ``id``, ``image`` (a decoded RGB PIL image, the
``transform`` of it, or the stored bytes with ``decode=False``), ``caption`` (any caption column,
``caption="caption_coca"``), and the ``columns`` asked for.

Sharding is deterministic and exact: the epoch's sample order is dealt to ranks (sample ``i`` to
rank ``i % world_size``; with ``even``, the default, first topped up with its own first samples to a
multiple of the ranks, so each rank runs as many batches and DDP never waits on one that ended), and each rank's samples to its DataLoader workers a batch at a time (the
run's batch ``b`` to worker ``b % num_workers``, the order in which a DataLoader takes the workers'
batches), so
across all ranks every sample of the epoch comes exactly once (with ``even``, at most
``world_size - 1`` of them twice), and a rank's batches arrive in its
order. ``resume(epoch, step)`` skips the first ``step`` batches of each rank in that epoch: a
restarted job reads nothing it trained on. Images are read with Lance's random access
(``read_blobs`` by row id, ``read_size`` at a time) and decoded in the workers.

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

import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from lakecurate.errors import LakeError, removed_meanwhile
from lakecurate.images import decode_image

if TYPE_CHECKING:
    from lakecurate.store import Store

try:  # torch is a dependency of the model stages; the dataset is a torch IterableDataset when it is there
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - torch is installed with lakecurate
    _Base = object  # type: ignore[assignment,misc]


class LakeDataset(_Base):  # type: ignore[misc,valid-type]
    """The samples of a lake view as a PyTorch ``IterableDataset`` (see the module doc)."""

    def __init__(self, lake: "Store | str | os.PathLike", *, version: int | str | None = None, where: str | None = None,
                 caption: str = "caption", columns: str | Sequence[str] = (), shuffle: bool = True, seed: int = 0,
                 batch_size: int = 1, transform: Callable[[Any], Any] | None = None, decode: bool = True,
                 repeats: bool = True, rank: int | None = None, world_size: int | None = None,
                 read_size: int = 64, allow_stale: bool = False, even: bool = True):
        from lakecurate.export import plan
        from lakecurate.options import texts
        from lakecurate.store import Store

        store = lake if not isinstance(lake, (str, os.PathLike)) else Store.open(lake)
        for name, value, lo in (("batch_size", batch_size, 1), ("read_size", read_size, 1), ("seed", seed, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise LakeError(f"{name} must be a whole number >= {lo}, not {value!r}")
        columns = texts("columns", columns)  # "keep" is one column, not four letters
        ds = store.dataset(version)
        missing = [c for c in columns if c not in ds.schema.names]
        if missing:
            raise LakeError(f"no column {', '.join(missing)} in lake '{store.uri}'; columns: {', '.join(ds.schema.names)}")
        if "image" in columns or caption in columns:
            raise LakeError("image and the caption are in every sample; name other columns in columns=")
        ds, tbl, _copy, self.where, self.warnings = plan(store, where=where, version=ds.version if version is None
                                                         else version, repeats=repeats, caption=caption,
                                                         allow_stale=allow_stale, extra=columns, what="the loader",
                                                         allow_hint="allow_stale=True")
        self.uri, self.branch, self.version = store.uri, getattr(store, "branch", None), ds.version
        self.storage_options = getattr(store, "storage_options", None)
        # a tag or branch name is opened by name in the workers and must still be this version there
        self.ref: int | str = version if isinstance(version, str) and not version.isdigit() else ds.version
        if isinstance(self.ref, str) and hasattr(store, "_ref") and store._ref(self.ref)[1] is None:
            # a branch name means its latest version, which a teammate's commit moves: the workers
            # open the version the loader planned on, on that branch
            self.ref = f"{self.ref.partition(':')[0]}:{ds.version}"
        if not tbl.num_rows:  # an epoch of nothing, without a word (export refuses an empty selection)
            raise LakeError(f"no rows to load from lake '{store.uri}' (version {ds.version}) with where {self.where!r}; "
                            "check the view (lakecurate status) or where=")
        self.rowids = tbl.column("_rowid").to_numpy().astype(np.uint64)
        self.fields = {"id": tbl.column("id").to_pylist(), "caption": tbl.column(caption).to_pylist(),
                       **{c: tbl.column(c).to_pylist() for c in columns}}
        self.caption_column, self.shuffle, self.seed = caption, shuffle, seed
        self.batch_size, self.read_size, self.transform, self.decode = batch_size, read_size, transform, decode
        self._rank, self._world, self.even = rank, world_size, bool(even)
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise LakeError(f"rank {rank!r} of world_size {world_size!r}: give both, with 0 <= rank < world_size")
        self.epoch, self.start_step = 0, 0
        self._ds: Any = None

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
        if epoch != self.epoch:
            self.start_step = 0
        self.epoch = epoch

    def resume(self, epoch: int, step: int) -> None:
        """Continue at ``step`` (batches each rank has trained on) of ``epoch``."""
        if not isinstance(step, int) or step < 0 or not isinstance(epoch, int) or epoch < 0:
            raise LakeError(f"resume(epoch={epoch!r}, step={step!r}): whole numbers >= 0")
        self.epoch, self.start_step = epoch, step

    def state_dict(self, step: int) -> dict[str, int]:
        """What to save with a checkpoint after ``step`` batches of the current epoch."""
        return {"epoch": self.epoch, "step": step, "seed": self.seed, "version": self.version}

    def rank_world(self) -> tuple[int, int]:
        if self._world is not None:
            return int(self._rank), int(self._world)  # type: ignore[arg-type]
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return dist.get_rank(), dist.get_world_size()
        except ImportError:  # pragma: no cover
            pass
        return 0, 1

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
        if self.even and short:
            order = np.concatenate([order, order[:short]])
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
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def __iter__(self) -> Any:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.rank_world()
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
        options.setdefault("persistent_workers", False)
    return DataLoader(dataset, batch_size=dataset.batch_size, num_workers=num_workers, collate_fn=collate, **options)
