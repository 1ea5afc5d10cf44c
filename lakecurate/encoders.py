"""The encoder registry: one place that turns a model name into image and text towers.

Two families share one interface, so `embed`, dedup, filters and clustering cannot tell them apart:

* **open_clip** models by architecture and pretrained tag (``ViT-B-32`` + ``laion2b_s34b_b79k``, or
  ``ViT-B-32:openai``), or by a local checkpoint file (``--checkpoint PATH``). Weights load through
  open_clip's normal path: its cache, then the hub.
* **offline**: frozen ImageNet EfficientNet-Lite0 + frozen all-MiniLM-L6-v2, joined by small
  projection heads trained on Flickr8k (``lakecurate[offline]``). Weaker than CLIP, but real
  semantics with no hub access (see :mod:`lakecurate.offline`).

``tiny-random`` is a tiny, randomly initialised open_clip architecture for tests: its embeddings
are **meaningless**; it exists so the whole path runs offline in seconds.

An :class:`EncoderSpec` is small and picklable: decode workers rebuild the image transform and the
tokenizer from it, while the model itself lives only in the main process (:class:`Encoder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lakecurate.columns import file_digest  # noqa: F401 - re-exported: where it was
from lakecurate.errors import EncoderError
from lakecurate.options import given, spell
from lakecurate.images import ImageTransform, exif_upright  # noqa: F401 - re-exported
from lakecurate.names import TINY_RANDOM
from lakecurate.names import embedding_columns as column_names  # noqa: F401 - the older name

_CONFIG_DIR = Path(__file__).parent / "model_configs"
ALIASES = {"vitb32": "ViT-B-32", "vitb16": "ViT-B-16", "vitl14": "ViT-L-14", "tiny-random": TINY_RANDOM}
# Preferred pretrained tag when only an architecture is named (open_clip lists the rest).
PREFERRED_TAGS = ("laion2b_s34b_b79k", "datacomp_xl_s13b_b90k", "laion2b_s32b_b82k", "openai")
# Characters of a caption the tokenizer sees. The text towers read the first 77 (CLIP) or 64 (MiniLM)
# tokens, far fewer than 4096 characters, but tokenizers clean and split the whole string first:
# a 20 MB caption took 25 s and 4 GB. The caption itself stays whole in the lake.
MAX_TEXT_CHARS = 4096


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is (for provenance and columns), without loading any weights."""

    family: str  # "open_clip" | "offline"
    arch: str
    pretrained: str | None = None  # open_clip tag, or a checkpoint path
    prefix: str = ""  # column prefix: f"{prefix}_image", f"{prefix}_text", ...
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """What the columns' provenance records. A weights file by what it is (its name, size and
        digest), not where it lies: a shared lake is embedded by people whose installs and mounts
        differ, and a path in the config made the second person's embed "another config" (and
        search, on their machine, look for the heads at the first person's path). Where the file
        lies goes beside the config (:meth:`weights`)."""
        return {**asdict(self), **weights_file(self.pretrained)}

    def weights(self) -> dict[str, str]:
        """Where this process found the weights file (``{"weights": path}``), for the provenance
        beside the config; empty for weights by tag."""
        return {"weights": os.path.abspath(self.pretrained)} if self.pretrained and os.path.isfile(self.pretrained) else {}

    @property
    def meaningless(self) -> bool:
        return self.arch == TINY_RANDOM

    def build_transforms(self) -> tuple[Callable[[Any], Any], Callable[[list[str]], Any]]:
        """(image -> float32 CHW array, list of captions -> tokens). The image transform is what
        decode workers run; tokenizing happens beside the model."""
        if self.family == "offline":
            from lakecurate import offline

            return offline.image_transform(), CappedTokenizer(offline.text_tokenizer())
        import dataclasses

        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        # The same config open_clip's factory derives (size from the model config, mean/std/resize
        # from the pretrained tag), without building a model: workers start in a blink.
        _register_configs()
        cfg = {"size": open_clip.get_model_config(self.arch)["vision_cfg"]["image_size"]}
        if self.pretrained and not os.path.isfile(self.pretrained):
            tag = open_clip.get_pretrained_cfg(self.arch, self.pretrained) or {}
            names = {f.name for f in dataclasses.fields(PreprocessCfg)} - {"size"}
            cfg.update({k: v for k, v in tag.items() if k in names})
        pp = PreprocessCfg(**cfg)
        tokenizer = CappedTokenizer(open_clip.get_tokenizer(self.arch))
        if isinstance(pp.size, int) and pp.resize_mode in ("shortest", "squash") and pp.interpolation in ("bicubic", "bilinear"):
            return ImageTransform(pp.size, tuple(pp.mean), tuple(pp.std), pp.interpolation, pp.resize_mode), tokenizer
        return _NumpyOut(image_transform_v2(pp, is_train=False)), tokenizer

    def embed_dim(self) -> int:
        """Width of the embeddings, known without loading weights."""
        if self.family == "offline":
            from lakecurate import offline

            return offline.EMBED_DIM
        import open_clip

        _register_configs()
        return int(open_clip.get_model_config(self.arch)["embed_dim"])


class CappedTokenizer:
    """A tokenizer that sees at most ``max_chars`` characters of each text (see MAX_TEXT_CHARS).

    >>> CappedTokenizer(lambda texts: [len(t) for t in texts], 3)(["abcdef", "ab"])
    [3, 2]
    """

    def __init__(self, tokenizer: Callable[..., Any], max_chars: int = MAX_TEXT_CHARS):
        self.tokenizer, self.max_chars = tokenizer, max_chars

    def __call__(self, texts: "str | list[str]", *args: Any, **kwargs: Any) -> Any:
        texts = [texts] if isinstance(texts, str) else texts
        return self.tokenizer([t[: self.max_chars] for t in texts], *args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # context_length, vocab_size, ... of the wrapped tokenizer
        if name in ("tokenizer", "max_chars"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_registered = False


def _register_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def meaningless(prov: dict[str, Any]) -> bool:
    """Whether an embed column's provenance names a randomly initialised test model (its similarities
    and scores mean nothing)."""
    return (prov.get("config") or {}).get("arch") == TINY_RANDOM


def spec_from_provenance(prov: dict[str, Any]) -> EncoderSpec:
    """The encoder that made an embed column, rebuilt from the column's provenance; a weights file
    is looked for where this install keeps it (the offline heads) or where the run found it, and
    must be the same file (size, and digest where recorded)."""
    cfg = prov.get("config") or {}
    keys = ("family", "arch", "pretrained", "prefix", "extra")
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise EncoderError(f"the provenance of embedding '{cfg.get('prefix', '?')}' lacks {', '.join(missing)}: "
                           f"it was not made by this lakecurate's embed stage; re-embed with {given('--recompute')}")
    spec = EncoderSpec(**{k: cfg[k] for k in keys})
    if "checkpoint_bytes" not in cfg:
        return spec
    if cfg.get("family") == "offline":
        from lakecurate import offline

        places = [offline.heads_path_str()]
    else:
        places = [p for p in (prov.get("weights"), cfg.get("pretrained")) if p]
    for place in places:
        if os.path.isfile(place) and os.path.getsize(place) == cfg["checkpoint_bytes"] and \
                cfg.get("checkpoint_sha256") in (None, file_digest(place)):
            return dataclasses.replace(spec, pretrained=place)
    raise EncoderError(f"embedding '{cfg['prefix']}' was made with weights {cfg['pretrained']} "
                       f"({cfg['checkpoint_bytes']} bytes{', sha256 ' + cfg['checkpoint_sha256'] if cfg.get('checkpoint_sha256') else ''}), "
                       f"which are not at {' or '.join(places)} on this machine"
                       + (" (this lakecurate's offline heads are others)" if cfg.get("family") == "offline" else "")
                       + f"; embed again with the weights you have ({given('--recompute')}), or run where those weights are")


def weights_file(path: str | None) -> dict[str, Any]:
    """What a config records of a local weights file (an embedding's, a captioner's checkpoint): its
    name, size and digest, not where it lies (that goes beside the config); empty for weights by tag.
    A symlink is named by the file it points to (the link's name made the same file another config)."""
    if not path or not os.path.isfile(path):
        return {}
    return {"pretrained": os.path.basename(os.path.realpath(path)), "checkpoint_bytes": os.path.getsize(path),
            "checkpoint_sha256": file_digest(path)}


def same_config(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a column's recorded config ``old`` and a run's ``new`` are one model's (an encoder's,
    a captioner's), as two installs compare them: its weights file or checkpoint directory by its
    name and size (a lake made before configs recorded a file's name recorded its absolute path on
    the machine that made it), and its digest where both record one; where both record the same
    digest, the same bytes under another name are the same file (content is identity)."""
    a, b = comparable_config(old, new), comparable_config(new, old)
    return a == b


def comparable_config(cfg: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` (JSON values) with a weights file named by its file name (by no name where ``other``
    records the same digest), and without a digest ``other`` lacks: what :func:`same_config` compares.

    >>> a = {"pretrained": "coca.pt", "checkpoint_bytes": 3, "checkpoint_sha256": "ab"}
    >>> same_config(a, {**a, "pretrained": "coca-v1.pt"}), same_config(a, {**a, "pretrained": "x.pt", "checkpoint_sha256": "cd"})
    (True, False)
    """
    out = json.loads(json.dumps(cfg, default=str))
    if "checkpoint_bytes" in out and isinstance(out.get("pretrained"), str):
        out["pretrained"] = os.path.basename(out["pretrained"])
        if out.get("checkpoint_sha256") is not None and out.get("checkpoint_sha256") == other.get("checkpoint_sha256"):
            out.pop("pretrained")
    if "checkpoint_sha256" not in other:
        out.pop("checkpoint_sha256", None)
    return out


def resolve(model: str, pretrained: str | None = None, checkpoint: str | None = None, name: str | None = None) -> EncoderSpec:
    """Turn what a user typed into an :class:`EncoderSpec` (no weights are loaded).

    ``model``: ``offline``, ``tiny-random``, an open_clip architecture (``ViT-B-32``, alias ``vitb32``),
    optionally with ``:TAG``. ``checkpoint``: a local weights file for that architecture.
    ``name`` overrides the column prefix.
    """
    if not isinstance(model, str) or not model:  # (None was a TypeError traceback)
        raise EncoderError(f"invalid model {model!r}: expected a model name such as 'offline', 'tiny-random' or 'ViT-B-32'")
    if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", str(name)):  # it names columns in SQL
        raise EncoderError(f"{spell('--name')} {name!r}: a column prefix is letters, digits and '_', not starting with a digit "
                           "(e.g. clip_mine)")
    if name is not None and name != name.lower():  # SQL folds unquoted names: SELECT Bad_score found no column
        raise EncoderError(f"{spell('--name')} {name!r} has capitals, which SQL reads as {name.lower()!r} unless quoted; "
                           f"use {name.lower()!r}")
    if model == "offline":
        from lakecurate import offline

        passed = [spell(opt) for opt, value in (("--pretrained", pretrained), ("--checkpoint", checkpoint)) if value]
        if passed:  # its weights are the bundled ones: a checkpoint given was ignored without a word
            raise EncoderError(f"model 'offline' takes no {' or '.join(passed)} (it runs its bundled weights); "
                               f"drop the option, or name an open_clip architecture (e.g. {given('--model', 'ViT-B-32')})")

        return EncoderSpec("offline", offline.ARCH, offline.heads_path_str(), name or "offline", offline.spec_extra())
    import open_clip

    _register_configs()
    if ":" in model and pretrained is None:
        model, pretrained = model.split(":", 1)
    arch = ALIASES.get(model.lower(), ALIASES.get(model, model))
    known = open_clip.list_models()
    if arch not in known:
        if "/" in model:  # "ViT-B-32/openai" (open_clip's own listing style, or a path-like guess)
            arch_, _, tag = model.partition("/")
            raise EncoderError(f"unknown model '{model}': a model and its weights are one name with ':', not '/'; "
                               f"write ARCH:TAG (e.g. ViT-B-32:openai; here '{arch_}:{tag}')")
        close = [m for m in known if _slug(model) in _slug(m)][:8]
        raise EncoderError(
            f"unknown model '{model}'. Use 'offline' (pip install lakecurate[offline]), 'tiny-random' (tests), "
            f"or an open_clip architecture{': ' + ', '.join(close) if close else ' (open_clip.list_models())'}"
        )
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise EncoderError(f"checkpoint '{checkpoint}' does not exist")
        return EncoderSpec("open_clip", arch, os.path.abspath(checkpoint), name or f"clip_{_slug(arch)}_ckpt")
    if arch == TINY_RANDOM:
        if pretrained not in (None, "random"):  # (taken without a word: its weights are random by name)
            raise EncoderError(f"model 'tiny-random' takes no {spell('--pretrained')} {pretrained!r} (its weights are random: "
                               f"a test model); name an open_clip architecture (e.g. {given('--model', 'ViT-B-32:openai')})")
        return EncoderSpec("open_clip", arch, None, name or "clip_tinyrandom")
    if pretrained == "random":  # random weights of a real architecture: for timing, never for curation
        return EncoderSpec("open_clip", arch, None, name or f"clip_{_slug(arch)}_random")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained is None:
        pretrained = next((t for t in PREFERRED_TAGS if t in tags), tags[0] if tags else None)
    if pretrained is None or pretrained not in tags:
        raise EncoderError(
            f"no pretrained weights '{pretrained}' for {arch}; known tags: {', '.join(tags) or 'none'}; "
            f"or pass {given('--checkpoint', 'PATH')}"
        )
    return EncoderSpec("open_clip", arch, pretrained, name or f"clip_{_slug(arch)}_{pretrained.split('_')[0]}")


class _NumpyOut:
    """Wraps a torchvision transform (the rare modes ImageTransform does not cover) to give numpy."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __call__(self, im: Any) -> Any:
        return self.transform(im).numpy()


def resolve_device(device: str = "auto") -> str:
    """The torch device a model runs on here; one torch cannot use is refused (an EncoderError, not
    torch's traceback at the first batch): ``cuda`` / ``cuda:N`` without that GPU, ``mps`` off a Mac."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= count:
            seen = f"{count} CUDA device{'s' if count != 1 else ''} (cuda:0-cuda:{count - 1})" if count else "no CUDA device"
            raise EncoderError(f"{spell('--device')} {device} asked for, but torch sees {seen}; use {given('--device', 'cpu')} or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EncoderError(f"{spell('--device')} mps asked for, but torch has no Metal (MPS) device here; use {given('--device', 'cpu')} or auto")
    return device


# decode="device": at most this many pixels decoded at once (~200 MB as uint8 RGB), or this many
# images a call when their sizes are not known
DECODE_PIXELS = 1 << 26
DECODE_IMAGES = 64


class Encoder:
    """A loaded encoder: L2-normalised float32 embeddings for image tensors and caption tokens."""

    def __init__(self, spec: EncoderSpec, device: str = "auto", precision: str = "fp32"):
        import torch

        if precision not in ("fp32", "bf16", "fp16"):
            raise EncoderError(f"precision must be fp32, bf16 or fp16, not '{precision}'")
        self.spec = spec
        self.device = resolve_device(device)
        if precision == "fp16" and self.device == "cpu":
            raise EncoderError(f"fp16 needs a GPU; on the CPU use {given('--precision', 'bf16')} or fp32")
        self.precision = precision
        self._autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        torch.manual_seed(0)  # tiny-random and any head without weights are deterministic
        if spec.family == "offline":
            from lakecurate import offline

            # its towers run in ONNX Runtime on the CPU in fp32 (offline.BACKEND), else in PyTorch
            self.model = offline.load_model(spec, device=self.device, precision=precision)
        else:
            self.model, self.open_clip_preprocess = _load_open_clip(spec)
        self.model = self.model.to(self.device).eval()
        self.dim = int(self.encode_texts(["a"]).shape[1])

    def _to_device(self, t: Any) -> Any:
        if isinstance(t, np.ndarray):  # tokens from the readers (TokenizeCaptions): no copy
            import torch

            t = torch.from_numpy(t)
        if t.device.type != "cpu":  # made on the device already (decode="device")
            return t
        if self.device.startswith("cuda"):
            # from pinned memory the copy is queued behind the work in flight; from pageable memory
            # it would wait for that work first, and the device would idle while the next batch comes
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _launch(self, fn: Callable[[], Any]) -> "Pending":
        import torch

        with torch.inference_mode():
            if self._autocast_dtype is not None:
                with torch.autocast(self.device.split(":")[0], dtype=self._autocast_dtype):
                    out = fn()
            else:
                out = fn()
            out = torch.nn.functional.normalize(out.float(), dim=-1)
            if out.device.type != "cuda":
                return Pending(out.cpu(), None)
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return Pending(host, done)

    def launch_image_tensors(self, pixels: Any) -> "Pending":
        """Start embedding a batch of pixels: float32 CHW as the image transform gives them, or
        its uint8 pixels (:meth:`ImageTransform.as_uint8`, a quarter of the bytes to move), which
        are scaled and normalised here, on the device, with the same float32 operations. On a GPU
        this returns while the device works; ``result()`` waits for this batch alone."""
        import torch

        if not isinstance(pixels, torch.Tensor):
            pixels = torch.from_numpy(pixels)
        x = self._to_device(pixels)
        if x.dtype == torch.uint8:
            tf = self.transforms()[0]
            if not isinstance(tf, ImageTransform):
                raise EncoderError(f"uint8 pixels need an ImageTransform to normalise them; {self.spec.arch}'s is {tf!r}")
            mean, std = self._normaliser(tf, x.device)
            with torch.inference_mode():
                x = x.to(torch.float32)
                x /= 255.0
                x -= mean
                x /= std
        return self._launch(lambda: self.model.encode_image(x))

    def launch_images(self, item: dict[str, Any]) -> tuple["Pending | None", list[str | None]]:
        """Start embedding a batch as the readers prepared it (:class:`~lakecurate.images.Preprocess`,
        or :class:`~lakecurate.images.DevicePreprocess` for ``decode="device"``, whose JPEGs are
        decoded here: :meth:`decode_jpegs`); (the run or None, one error or None per row: a JPEG
        that neither the device nor Pillow decodes gets its reason and no embedding)."""
        import torch

        errors = list(item["image_errors"])
        jpegs = item.get("jpegs")
        if not jpegs:
            return (self.launch_image_tensors(item["pixels"]) if item["pixels"] is not None else None), errors
        tf = self.transforms()[0]
        if not isinstance(tf, ImageTransform):
            raise EncoderError(f"decode='device' needs an ImageTransform to resize and crop on the device; "
                               f"{self.spec.arch}'s is {tf!r}")
        decoded, failed = self.decode_jpegs(jpegs, tf, item.get("jpeg_pixels"))
        lost = {j: reason for j, reason in failed}
        # the rows in order, from two lists of views (no index tensor: on a GPU one made from host
        # memory is a pageable copy, which would wait for the batch in flight)
        read = iter(self._to_device(torch.from_numpy(item["pixels"])).unbind(0) if item["pixels"] is not None else ())
        rows, j = [], 0
        good = [r for r, e in enumerate(errors) if e is None]  # the rows the readers left pixels or a JPEG for
        for row, jpeg in zip(good, item["from_jpeg"]):
            if not jpeg:
                rows.append(next(read))
            elif j in lost:
                errors[row] = lost[j]
            else:
                rows.append(decoded[j])
            j += bool(jpeg)
        return (self.launch_image_tensors(torch.stack(rows)) if rows else None), errors

    def decode_jpegs(self, jpegs: list, tf: ImageTransform, pixels: list[int] | None = None,
                     by_size: bool | None = None) -> tuple[Any, list[tuple[int, str]]]:
        """JPEG bytes (or uint8 arrays of them) decoded, resized and cropped on this encoder's
        device as ``tf`` does it with Pillow (torchvision: nvJPEG on a GPU, libjpeg-turbo on the
        CPU; antialiased resize): uint8 (n, 3, size, size) pixels, within a few grey levels of
        Pillow's (docs/benchmarks.md), and (position, reason) for each that could not be decoded.
        An image the device refuses is decoded by Pillow here instead; one neither decodes keeps
        zero pixels and its reason. ``pixels``: each image's pixel count (from its header), so that
        at most DECODE_PIXELS are held decoded at once (256 photos of 12 megapixels would be 9 GB);
        else DECODE_IMAGES a call. ``by_size``: resize the photos of one size together (default:
        on a GPU, where a call a photo would be a kernel launch a photo; on the CPU one at a time,
        which stays in the caches: 94 photos of one size took 30 ms one at a time against 28 ms to
        stack them and 52-63 ms to resize them together, docs/benchmarks.md)."""
        import torch

        out: list = [None] * len(jpegs)
        failed: list[tuple[int, str]] = []
        lo = 0
        while lo < len(jpegs):
            hi, held = lo + 1, (pixels[lo] if pixels else 0)
            while hi < len(jpegs) and (held + pixels[hi] <= DECODE_PIXELS if pixels else hi - lo < DECODE_IMAGES):
                held += pixels[hi] if pixels else 0
                hi += 1
            for i, px in enumerate(self._decode_some(jpegs[lo:hi], tf, by_size), lo):
                if isinstance(px, str):
                    failed.append((i, px))
                    px = torch.zeros((3, tf.size, tf.size), dtype=torch.uint8, device=self.device)
                out[i] = px
            lo = hi
        return torch.stack(out), failed

    def _decode_some(self, jpegs: list, tf: ImageTransform, by_size: bool | None = None) -> list:
        """:meth:`decode_jpegs` on a few: each one's (3, size, size) pixels or the reason it has none."""
        import warnings

        import torch

        from lakecurate.images import Preprocess

        # torchvision 0.29 (pinned, with the CUDA build of torch) warns on every call that TorchCodec
        # will take its decoders over: one filter for that message alone.
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        import torchvision.io as tvio

        # the readers' arrays as they are (writable once unpickled); bytes are copied (read-only)
        data = [torch.from_numpy(b) if getattr(b, "flags", None) is not None and b.flags.writeable
                else torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
        try:
            ims: list = tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one bad image fails the whole list: each alone
            ims = []
            for d in data:
                try:
                    ims.append(tvio.decode_jpeg(d, mode=tvio.ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    ims.append(None)
        out: list = [None] * len(jpegs)
        if by_size is None:
            by_size = torch.device(self.device).type != "cpu"
        groups: dict[Any, list[int]] = {}
        for i, im in enumerate(ims):
            if im is not None:
                groups.setdefault(tuple(im.shape[1:]) if by_size else i, []).append(i)
        for at in groups.values():
            batch = torch.stack([ims[i] for i in at]) if len(at) > 1 else ims[at[0]][None]
            for i, px in zip(at, resize_crop(batch, tf).unbind(0)):
                out[i] = px
        pillow = Preprocess(tf.as_uint8())  # what a reader does: the pixels, or the reason there are none
        for i in (i for i, im in enumerate(ims) if im is None):
            px, err = pillow.pixels_of(bytes(jpegs[i]))
            out[i] = self._to_device(torch.from_numpy(px)) if err is None else err
        return out

    def _normaliser(self, tf: ImageTransform, device: Any) -> tuple[Any, Any]:
        """The transform's mean and std as (3, 1, 1) float32 tensors on the device, made once: a
        tensor made from a list on a GPU is a copy from pageable memory, which would wait for the
        batch in flight every time."""
        import torch

        held = getattr(self, "_norm", None)
        if held is None or held[0] is not tf:
            held = self._norm = (tf, *(torch.tensor(v, dtype=torch.float32, device=device)[:, None, None]
                                       for v in (tf.mean, tf.std)))
        return held[1], held[2]

    def launch_text_tokens(self, tokens: Any) -> "Pending":
        """Start embedding tokenized captions (see :meth:`launch_image_tensors`): the tokenizer's
        tensors, or numpy arrays of them (a dict of either for Hugging Face tokenizers)."""
        if isinstance(tokens, dict):
            tokens = {k: self._to_device(v) for k, v in tokens.items()}
        else:
            tokens = self._to_device(tokens)
        return self._launch(lambda: self.model.encode_text(tokens))

    def encode_image_tensors(self, pixels: Any) -> Any:
        return self.launch_image_tensors(pixels).result()

    def encode_text_tokens(self, tokens: Any) -> Any:
        return self.launch_text_tokens(tokens).result()

    # conveniences for queries and tests (the embed stage uses workers instead)
    def encode_texts(self, texts: list[str]) -> Any:
        _, tokenize = self.transforms()
        return self.encode_text_tokens(tokenize(texts))

    def encode_images(self, images: list[Any]) -> Any:
        preprocess, _ = self.transforms()
        return self.encode_image_tensors(np.stack([preprocess(exif_upright(im).convert("RGB")) for im in images]))

    def transforms(self) -> tuple[Callable[[Any], Any], Callable[[list[str]], Any]]:
        """(image transform, tokenizer): picklable, so decode workers get them without a model."""
        if not hasattr(self, "_tf"):
            self._tf = self.spec.build_transforms()
        return self._tf


class Pending:
    """Embeddings on their way back from the device (float32, L2-normalised, on the CPU once
    ``result()`` returns). ``result()`` waits for this batch's work only, not for any batch
    launched after it."""

    def __init__(self, out: Any, done: Any):
        self._out, self._done = out, done

    def result(self) -> Any:
        if self._done is not None:
            self._done.synchronize()
            self._done = None
        return self._out


@contextlib.contextmanager
def _quiet_logs() -> Any:
    """open_clip logs a warning whenever it initialises randomly; for tiny-random that is the point."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _load_open_clip(spec: EncoderSpec) -> tuple[Any, Any]:
    """(model, eval image transform) through open_clip's own factory."""
    import open_clip

    _register_configs()
    if spec.pretrained is None:
        with _quiet_logs():
            model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=None)
        return model, preprocess
    try:
        unreachable = _weights_unreachable(open_clip, spec.arch, spec.pretrained)
        if unreachable:
            raise OSError(unreachable)
        model, _, preprocess = open_clip.create_model_and_transforms(spec.arch, pretrained=spec.pretrained)
        return model, preprocess
    except Exception as exc:  # hub unreachable, cache empty, bad checkpoint: all end the same way
        why = " ".join(str(exc).split())  # one line
        if "Weights only load failed" in why:  # torch's advice on weights_only (and that it retries: it does not)
            why = "not a torch file of weights (torch.load refused it)"
        why = f"{type(exc).__name__}: {why[:200].rstrip('.,')}"
        if os.path.isfile(spec.pretrained):  # a local checkpoint that is not one, or not this architecture's
            raise EncoderError(f"cannot load checkpoint '{spec.pretrained}' for {spec.arch}: {why}. Pass a file "
                               f"of {spec.arch}'s weights (an open_clip state dict saved by torch.save), or "
                               f"the {spell('--model')} it was trained as") from None
        raise EncoderError(
            f"cannot load weights '{spec.pretrained}' for {spec.arch}: {why}. "
            f"Options: pass a local file with {given('--checkpoint', 'PATH')}; put the weights in open_clip's cache "
            f"(HF_HOME) on a machine with access; or use {given('--model', 'offline')} (pip install 'lakecurate[offline]'), "
            "a small offline encoder with weaker semantics"
        ) from None


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _weights_unreachable(open_clip: Any, arch: str, tag: str) -> str | None:
    """Why the weights of ``arch:tag`` cannot be had, or None: not in the local cache (open_clip's,
    HF_HOME's) and their host is unreachable (one connection attempt, 5 s at most). Without this,
    open_clip's download retried for ~46 s before the same error. None also where this cannot tell
    (a local file, no hub client, a proxy in the environment: the download decides)."""
    from urllib.parse import urlparse

    if os.path.isfile(tag) or any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return None
    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    try:
        import huggingface_hub
    except ImportError:
        huggingface_hub = None
    if hub and huggingface_hub is not None:  # open_clip prefers the hub where it has both
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        names += [n.replace(".bin", ".safetensors").replace("pytorch_model", "model") for n in names]
        if any(isinstance(huggingface_hub.try_to_load_from_cache(repo, n), str) for n in names):
            return None
        host, where = urlparse(huggingface_hub.constants.ENDPOINT).hostname, f"{repo} is not in the local cache (HF_HOME)"
    elif url:
        if os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(urlparse(url).path))):
            return None
        host, where = urlparse(url).hostname, f"{os.path.basename(urlparse(url).path)} is not in ~/.cache/clip"
    else:
        return None
    if not host:
        return None
    import socket

    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        return f"{where} and {host} cannot be reached ({exc})"
    return None


def resize_crop(x: Any, tf: ImageTransform) -> Any:
    """uint8 (b, 3, h, w) images of one size, resized and centre-cropped as ``tf`` does one image
    with Pillow (the same sizes and offsets; torchvision's antialiased resize on their device)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    mode = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}[tf.interpolation]
    h, w = x.shape[-2:]
    if tf.resize_mode == "squash":
        return TF.resize(x, [tf.size, tf.size], interpolation=mode, antialias=True)
    nw, nh = (tf.size, int(tf.size * h / w)) if w <= h else (int(tf.size * w / h), tf.size)
    if (nw, nh) != (w, h):
        x = TF.resize(x, [nh, nw], interpolation=mode, antialias=True)
    top, left = int(round((nh - tf.size) / 2.0)), int(round((nw - tf.size) / 2.0))
    return x[..., top : top + tf.size, left : left + tf.size]
