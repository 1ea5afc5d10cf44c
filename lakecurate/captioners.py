"""Captioner registry: what writes a synthetic caption, resolved by name like the encoders.

| model | what it is |
| --- | --- |
| ``coca_ViT-B-32`` (any open_clip CoCa, ``--pretrained TAG`` or ``--checkpoint PATH``) | open_clip CoCa: the image through its encoder, the caption from its multimodal decoder |
| ``tiny-random-coca`` | a tiny randomly initialised CoCa config shipped in the package (``model_configs/``): meaningless but deterministic captions, for tests |
| a directory (``./blip-large``) | a local Hugging Face image-to-text checkpoint (BLIP, GIT, Florence-2, LLaVA-style...) loaded by ``transformers`` (``AutoProcessor`` + ``AutoModelForImageTextToText``); ``--prompt`` is its text prefix or task token |
| ``--endpoint URL --api-model M`` | an OpenAI-compatible chat server (:class:`EndpointSpec`) |

Decoding is greedy (the most likely token each step, up to ``max_tokens`` tokens, deterministic) or
sampled (``temperature`` > 0, top-k, seeded per batch). It is written here and not taken from
open_clip's ``CoCa.generate``: that needs ``transformers`` < 5 (it imports ``BeamSearchScorer``,
gone in 5.x) and asserts otherwise; the loop is CoCa's own forward pass, token by token.

A :class:`CaptionerSpec` is picklable and holds no weights: its ``config()`` is the provenance of
the caption column (model, weights, prompt, decoding parameters, seed).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from lakecurate.encoders import (EncoderError, EncoderSpec, _load_open_clip, _register_configs, _slug, file_digest,
                                 resolve_device, weights_file)
from lakecurate.errors import LakeError
from lakecurate.names import TINY_COCA
from lakecurate.options import clean_text, given, real, spell

DEFAULT_MAX_TOKENS = 30
MODES = ("caption",)
COCA_MAX_TOKENS, HF_MAX_TOKENS = 75, 512  # CoCa's context; a generous cap for other decoders


@dataclass(frozen=True)
class CaptionerSpec:
    """What a captioner is, for provenance and the column name, without loading weights."""

    family: str  # "open_clip" or "hf"
    arch: str  # the open_clip model, or the Hugging Face config's model_type
    pretrained: str | None = None  # open_clip tag, a checkpoint path, or a Hugging Face checkpoint directory
    name: str = ""  # the column is f"caption_{name}"
    mode: str = "caption"
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0  # 0: greedy
    top_k: int = 5
    seed: int = 0
    prompt: str = ""  # hf: the text the decoder starts from (a prefix, or a task token like <CAPTION>)
    image_side: int = 0  # hf: images reach the processor at most this many pixels on their long side

    def config(self) -> dict[str, Any]:
        """The caption column's provenance config. A checkpoint file by its name, size and digest
        (:func:`~lakecurate.encoders.weights_file`), a checkpoint directory by its name and
        fingerprint (:func:`_hf_fingerprint`), as an embedding's weights: not where they lie (a
        lake or its checkpoint moved to another machine was "made with another config"), which
        goes beside the config (:meth:`weights`)."""
        cfg = {**asdict(self), **weights_file(self.pretrained)}
        if self.family == "hf":
            cfg.update(_hf_fingerprint(self.pretrained))
        cfg["decoder"] = "greedy" if self.temperature == 0 else "top-k sampling"
        return cfg

    def weights(self) -> dict[str, str]:
        """Where this process found the checkpoint file or directory (``{"weights": path}``), for the
        provenance beside the config and the command that fills the column again; empty for
        weights by tag."""
        local = self.pretrained and (os.path.isfile(self.pretrained) or os.path.isdir(self.pretrained))
        return {"weights": os.path.abspath(self.pretrained)} if local else {}

    @property
    def meaningless(self) -> bool:
        return self.arch == TINY_COCA

    def encoder_spec(self) -> EncoderSpec:
        """The image side as an encoder spec: its transforms and loading are the encoders' own."""
        return EncoderSpec("open_clip", self.arch, self.pretrained, self.name)

    def column(self) -> str:
        return f"caption_{self.name}"


def check_name(name: str | None) -> None:
    """A ``--name`` is the column's name after ``caption_`` as given: never rewritten into another."""
    if name is not None and (not name or _slug(name) != name):
        hint = f" (e.g. {given('--name', _slug(name))})" if _slug(name) else ""
        raise EncoderError(f"{spell('--name')} {name!r}: use only lowercase letters and digits, a-z and 0-9, "
                           f"as the column is caption_NAME{hint}")


def resolve_captioner(model: str, pretrained: str | None = None, checkpoint: str | None = None,
                      name: str | None = None, *, max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = 0.0,
                      top_k: int = 5, seed: int = 0, prompt: str | None = None) -> CaptionerSpec:
    """A spec from a model name or a checkpoint directory (see the table above); errors list the choices."""
    import open_clip

    _register_configs()
    hf = isinstance(model, str) and os.path.isdir(model)
    cap = HF_MAX_TOKENS if hf else COCA_MAX_TOKENS
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= cap:
        raise EncoderError(f"{spell('--max-tokens')} must be a whole number from 1 to {cap}"
                           f"{'' if hf else ' (CoCa context)'}, not {max_tokens!r}")
    temperature = real("--temperature", temperature, 0, 5)  # (0: greedy)
    if not isinstance(top_k, int) or top_k < 1:
        raise EncoderError(f"{spell('--top-k')} must be a whole number >= 1, not {top_k!r}")
    check_name(name)
    if hf:
        return _resolve_hf(model, pretrained, checkpoint, name, prompt, max_tokens=max_tokens,
                           temperature=float(temperature), top_k=top_k, seed=seed)
    if prompt:
        raise EncoderError(f"{spell('--prompt')} is for an endpoint or a Hugging Face checkpoint directory; "
                           "an open_clip CoCa captions from the image alone")
    arch = TINY_COCA if model == "tiny-random-coca" else model
    cocas = [m for m in open_clip.list_models() if m.startswith("coca")] + [TINY_COCA]
    if arch not in cocas:
        raise EncoderError(f"unknown captioner {model!r}; choose tiny-random-coca (tests), a local Hugging Face "
                           f"checkpoint directory (BLIP, GIT, Florence-2...), {given('--endpoint', 'URL')}, or an open_clip CoCa: "
                           f"{', '.join(m for m in cocas if m != TINY_COCA)}")
    options = {"max_tokens": max_tokens, "temperature": float(temperature), "top_k": top_k, "seed": seed}
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise EncoderError(f"checkpoint '{checkpoint}' does not exist")
        return CaptionerSpec("open_clip", arch, os.path.abspath(checkpoint), _slug(name or f"{arch}_ckpt"), **options)
    if arch == TINY_COCA:
        return CaptionerSpec("open_clip", arch, None, _slug(name or "tinycoca"), **options)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    pretrained = pretrained or (tags[0] if tags else None)
    if pretrained is None or pretrained not in tags:
        raise EncoderError(f"no pretrained weights '{pretrained}' for {arch}; known tags: {', '.join(tags) or 'none'}; "
                           f"or pass {given('--checkpoint', 'PATH')}")
    return CaptionerSpec("open_clip", arch, pretrained, _slug(name or f"{arch}_{pretrained.split('_')[0]}"), **options)


class Captioner:
    """A loaded CoCa: captions for a batch of preprocessed images (float32 NCHW)."""

    SOT, EOT = 49406, 49407  # open_clip's tokenizer: start and end of text

    def __init__(self, spec: CaptionerSpec, device: str = "auto"):
        import torch

        self.spec, self.device = spec, resolve_device(device)
        torch.manual_seed(0)  # tiny-random-coca is the same model in every process
        self.model, _ = _load_open_clip(spec.encoder_spec())
        if spec.pretrained is None:  # open_clip leaves the decoder's output projection at zero: every
            # token would tie. Seeded random values give a random model captions that differ by image.
            proj = self.model.text_decoder.text_projection
            with torch.no_grad():
                proj.copy_(torch.randn(proj.shape, generator=torch.Generator().manual_seed(0)) * proj.shape[0] ** -0.5)
        self.model = self.model.to(self.device).eval()

    def caption(self, pixels: Any, batch_seed: int = 0) -> list[str]:
        """One caption per image: CoCa's decoder run token by token from the start token."""
        import open_clip
        import torch

        x = torch.as_tensor(pixels, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(self.spec.seed * 1_000_003 + batch_seed)
        with torch.inference_mode():
            latent, embs = self.model._encode_image(x)
            out = torch.full((len(x), 1), self.SOT, dtype=torch.long, device=self.device)
            done = torch.zeros(len(x), dtype=torch.bool, device=self.device)
            for _ in range(self.spec.max_tokens):
                logits = self.model(x, out, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]
                if self.spec.temperature == 0:
                    nxt = logits.argmax(-1)
                else:
                    top = torch.topk(logits / self.spec.temperature, self.spec.top_k, dim=-1)
                    pick = torch.multinomial(top.values.softmax(-1), 1, generator=gen).squeeze(1)
                    nxt = top.indices.gather(1, pick[:, None]).squeeze(1)
                nxt = torch.where(done, torch.full_like(nxt, self.EOT), nxt)
                out = torch.cat([out, nxt[:, None]], dim=1)
                done |= nxt == self.EOT
                if bool(done.all()):
                    break
        texts = []
        for row in out.tolist():
            toks = row[1:]
            toks = toks[: toks.index(self.EOT)] if self.EOT in toks else toks
            texts.append(open_clip.decode(torch.tensor(toks)).strip() if toks else "")
        return texts


# --------------------------------------------------------------------------- Hugging Face checkpoints
HF_DEFAULT_SIDE = 384
# Models whose processor closes a prompt with [SEP] that their generate() keeps (BLIP's drops it itself)
PREFIX_ENDS_TRIMMED = ("git",)


def _hf_sizes(obj: Any) -> list[tuple[str, int]]:
    """(key, pixels) of every image size an image processor's saved config names, nested or not."""
    out: list[tuple[str, int]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("size", "crop_size") and isinstance(value, dict):
                out += [(k, v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)]
            elif key in ("size", "crop_size") and isinstance(value, int) and not isinstance(value, bool):
                out.append((key, value))
            else:
                out += _hf_sizes(value)
    return out


def _hf_side(path: str) -> int:
    """How large images are decoded for this checkpoint's processor: its target size, twice that for
    a shortest-edge resize (a 2:1 image keeps its short side), capped at 1536."""
    import json

    sizes: list[tuple[str, int]] = []
    for fname in ("preprocessor_config.json", "processor_config.json"):
        full = os.path.join(path, fname)
        if os.path.isfile(full):
            try:
                with open(full, encoding="utf-8") as fh:
                    sizes += _hf_sizes(json.load(fh))
            except (OSError, ValueError):
                pass
    if not sizes:
        return HF_DEFAULT_SIDE
    target = max(v for _, v in sizes)
    edge = any(k in ("shortest_edge", "short_edge") for k, _ in sizes)
    return min(1536, 2 * target if edge else target)


_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".onnx")


def _hf_fingerprint(path: str | None) -> dict[str, Any]:
    """What identifies a checkpoint directory's weights in the provenance: its name (not its path:
    :func:`~lakecurate.encoders.same_config`), the config's hash, every file's size, and a digest of
    its weights files (their names and contents, each read once a process per size and modification
    time: a fine-tune saved over the model it was tuned from has the same config and the same sizes,
    and was "the same config" by the rest). A column recorded before the digest is compared without it."""
    if not path or not os.path.isdir(path):
        return {}
    import hashlib

    files = sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
    out: dict[str, Any] = {"pretrained": os.path.basename(os.path.abspath(path)),
                           "config_sha256": file_digest(os.path.join(path, "config.json")),
                           "checkpoint_bytes": sum(os.path.getsize(os.path.join(path, f)) for f in files)}
    weights = [f for f in files if f.lower().endswith(_WEIGHT_FILES)]
    if weights:
        h = hashlib.sha256()
        for f in weights:
            h.update(f"{f}\0{file_digest(os.path.join(path, f))}\0".encode())
        out["checkpoint_sha256"] = h.hexdigest()[:16]
    return out


def _resolve_hf(path: str, pretrained: str | None, checkpoint: str | None, name: str | None, prompt: str | None,
                **options: Any) -> CaptionerSpec:
    import json

    if pretrained or checkpoint:
        raise EncoderError(f"{spell('--pretrained')} and {spell('--checkpoint')} are for open_clip CoCa; a checkpoint directory is the weights")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise EncoderError(f"'{path}' is a directory without config.json: give a Hugging Face checkpoint directory "
                           "(save_pretrained or a downloaded snapshot: config.json, weights, processor files)")
    try:
        with open(config, encoding="utf-8") as fh:
            cfg = json.load(fh)
        model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    except ValueError as exc:
        raise EncoderError(f"'{config}' is not JSON ({exc}); the checkpoint directory looks damaged") from exc
    if not model_type:
        raise EncoderError(f"'{config}' names no model_type; is this a transformers checkpoint?")
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    positions = text_cfg.get("max_position_embeddings", cfg.get("max_position_embeddings"))
    if isinstance(positions, int) and options["max_tokens"] >= positions:  # generate() fails past them, mid-run
        raise EncoderError(f"{spell('--max-tokens')} {options['max_tokens']} does not fit {model_type}'s {positions} text "
                           f"positions (the prompt's tokens take some too); pass fewer than {positions}")
    if prompt is not None and not isinstance(prompt, str):
        raise EncoderError(f"{spell('--prompt')} must be text, not {prompt!r}")
    full = os.path.abspath(path)
    slug = _slug(name or os.path.basename(full.rstrip(os.sep)))
    if not slug:
        raise EncoderError(f"{spell('--name')}: the directory name gives no column name; pass {spell('--name')} (caption_NAME)")
    return CaptionerSpec("hf", model_type, full, slug, prompt=prompt or "", image_side=_hf_side(full), **options)


class HFCaptioner:
    """A loaded Hugging Face image-to-text model: captions for a batch of decoded images (uint8 HWC
    arrays) through its own processor and ``generate()``."""

    def __init__(self, spec: CaptionerSpec, device: str = "auto"):
        import inspect

        import torch

        try:
            from transformers import AutoModelForImageTextToText, AutoProcessor
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise EncoderError("a Hugging Face checkpoint needs transformers: pip install 'lakecurate[hf]'") from exc
        hf_logging.disable_progress_bar()
        self.spec, self.device = spec, resolve_device(device)
        try:
            self.processor = AutoProcessor.from_pretrained(spec.pretrained)
            self.model = AutoModelForImageTextToText.from_pretrained(spec.pretrained)
        except (OSError, ValueError, KeyError) as exc:
            raise EncoderError(f"cannot load '{spec.pretrained}' ({spec.arch}) as an image-to-text model: "
                               f"{str(exc).splitlines()[0][:300]}") from exc
        self.model = self.model.to(self.device).eval()
        self.torch = torch
        self.accepts = set(inspect.signature(self.model.forward).parameters)  # what the processor may pass on

    def caption(self, pixels: Any, batch_seed: int = 0) -> list[str]:
        from PIL import Image

        torch = self.torch
        images = [Image.fromarray(a) for a in pixels]
        args: dict[str, Any] = {"images": images, "return_tensors": "pt"}
        if self.spec.prompt:
            args["text"] = [self.spec.prompt] * len(images)
        inputs = self.processor(**args)
        for key in [k for k in inputs if k not in self.accepts]:  # e.g. a BERT tokenizer's token_type_ids
            inputs.pop(key)
        ids = inputs.get("input_ids")
        end = getattr(getattr(self.processor, "tokenizer", None), "sep_token_id", None)
        if ids is not None and end is not None and self.spec.arch in PREFIX_ENDS_TRIMMED and bool((ids[:, -1] == end).all()):
            for key in ("input_ids", "attention_mask"):  # a prefix to continue must not end the text already
                if key in inputs:
                    inputs[key] = inputs[key][:, :-1]
        inputs = inputs.to(self.device)
        gen: dict[str, Any] = {"max_new_tokens": self.spec.max_tokens, "do_sample": self.spec.temperature > 0}
        if self.spec.temperature > 0:
            gen.update(temperature=self.spec.temperature, top_k=self.spec.top_k)
            torch.manual_seed(self.spec.seed * 1_000_003 + batch_seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen)
        given = inputs.get("input_ids")
        if given is not None and not getattr(self.model.config, "is_encoder_decoder", False) \
                and out.shape[1] >= given.shape[1] and bool((out[:, : given.shape[1]] == given).all()):
            out = out[:, given.shape[1]:]  # a decoder-only model returns the prompt before its words
        texts = [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]
        lead = " ".join(self.spec.prompt.split())
        return [t[len(lead):].strip() if lead and t.startswith(lead) else t for t in texts]


def load_captioner(spec: CaptionerSpec, device: str = "auto") -> "Captioner | HFCaptioner":
    return HFCaptioner(spec, device) if spec.family == "hf" else Captioner(spec, device)


# --------------------------------------------------------------------------- OpenAI-compatible endpoints
ENDPOINT_MODES = ("caption", "rephrase")
CAPTION_PROMPT = "Describe this image in one sentence, as an image caption: what is shown, plainly, no preamble."
# LaCLIP-style rewriting: the same content in other words (Fan et al. 2023 asked an LLM to rewrite).
REPHRASE_PROMPT = ("Rewrite this image caption in different words, keeping every fact it states and adding none. "
                   "Answer with the rewritten caption only.\nCaption: {caption}")
RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)
# A reply is a caption: one longer than this many characters (or 8 a token of --max-tokens, if that is
# more) is the row's error, not stored. A server that ignores max_tokens (or a prompt injected into
# the caption it rephrases) would otherwise put a page, or a megabyte, into one cell of the column.
MAX_REPLY_CHARS = 2000
MAX_REPLY_BYTES = 4 * 2 ** 20  # a reply body past this is not read at all (32 requests in flight: 128 MiB)
# The most characters a prompt placeholder's format may ask for (its width or precision).
MAX_FORMAT_WIDTH = 1000
# The one request that checks an endpoint answers before a first run declares its columns.
PROBE_PROMPT = "Reply with the word OK."


# An endpoint captioner's settings of how requests are made, which change no caption.
TRANSPORT = ("concurrency", "timeout", "retries", "api_key_env")


@dataclass(frozen=True)
class EndpointSpec:
    """An OpenAI-compatible chat-completions endpoint as a captioner (vLLM, llama.cpp server,
    Ollama, hosted APIs). ``mode`` "caption": a vision-language model describes the image (sent as
    a data URL); "rephrase": a text model rewrites the original caption. The API key is read from
    the environment variable ``api_key_env`` when set and is never part of the config."""

    endpoint: str
    api_model: str
    name: str
    mode: str = "caption"
    prompt: str = ""
    max_tokens: int = 60
    temperature: float = 0.0
    seed: int = 0
    concurrency: int = 32
    timeout: float = 30.0
    retries: int = 4
    api_key_env: str = "OPENAI_API_KEY"
    image_side: int = 768

    family = "endpoint"
    arch = "endpoint"
    meaningless = False

    def config(self) -> dict[str, Any]:
        """What decides the captions: not how they are fetched (:data:`TRANSPORT`), so a run resumed
        with fewer requests at a time or a longer timeout continues the same column."""
        cfg = {k: v for k, v in asdict(self).items() if k not in TRANSPORT}
        cfg["endpoint"] = _without_credentials(self.endpoint)
        return cfg

    def transport(self) -> dict[str, Any]:
        """How the captions are fetched: recorded in the column's provenance beside its config (the
        key's variable name only, never its value)."""
        return {k: getattr(self, k) for k in TRANSPORT}

    def column(self) -> str:
        return f"caption_{self.name}"

    def fields(self) -> list[str]:
        """The columns the prompt names, in order of first use (``{caption}``, ``{img_text_lines}``...)."""
        return prompt_fields(self.prompt)

    def subject(self) -> str | None:
        """Rephrase mode: the caption column it rewrites (``caption``, else the first ``caption_*``)."""
        return _subject(self.fields())

    def render(self, values: dict[str, Any]) -> str:
        """The prompt with this row's values in its placeholders (a missing value is empty)."""
        return render_prompt(self.prompt, values)

    def url(self) -> str:
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"


def _prompt_parts(prompt: str) -> list[tuple[str, str | None, str]]:
    """(literal text, column or None, format spec) of a prompt: ``str.format`` syntax, ``{{``/``}}``
    for literal braces. Raises EncoderError on what is not a plain column placeholder."""
    import string

    try:
        parts = list(string.Formatter().parse(prompt))
    except ValueError as exc:
        raise EncoderError(f"{spell('--prompt')}: {exc}; placeholders are {{column}}, literal braces are {{{{ and }}}}") from exc
    out = []
    for literal, field, spec, conv in parts:
        if field is not None and (not field.isidentifier() or conv):
            raise EncoderError(f"{spell('--prompt')}: {{{field}}} is not a column placeholder; write {{column}} or "
                               "{column:.2f}, and literal braces as {{ and }}")
        # a width or precision is a run of digits (a digit as fill stands alone, before the align
        # character): {caption:>99999999} would make every row's prompt 100 MB
        if field is not None and any(int(d) > MAX_FORMAT_WIDTH for d in re.findall(r"\d+", spec or "")):
            raise EncoderError(f"{spell('--prompt')}: {{{field}:{spec}}} asks for more than {MAX_FORMAT_WIDTH} characters; "
                               f"a width or precision is at most {MAX_FORMAT_WIDTH}")
        out.append((literal, field, spec or ""))
    return out


def _subject(fields: list[str]) -> str | None:
    return "caption" if "caption" in fields else next((f for f in fields if f.startswith("caption_")), None)


def prompt_fields(prompt: str) -> list[str]:
    return list(dict.fromkeys(f for _, f, _ in _prompt_parts(prompt) if f))


def render_prompt(prompt: str, values: dict[str, Any]) -> str:
    text = []
    for literal, field, spec in _prompt_parts(prompt):
        text.append(literal)
        if field is not None and values.get(field) is not None:
            value = values[field]
            text.append(format(value, spec) if spec else (f"{value:.3g}" if isinstance(value, float) else str(value)))
    return "".join(text)


def check_prompt_columns(spec: "EndpointSpec", schema: Any, lake: str = "the lake") -> None:
    """Every placeholder names a one-value-per-row column of the table, and its format spec fits
    the column's values (before anything is written)."""
    import difflib

    import pyarrow as pa

    samples = {"string": "text", "large_string": "text", "bool": True}
    for field in spec.fields():
        if field not in schema.names:
            near = difflib.get_close_matches(field, schema.names, n=3)
            raise EncoderError(f"{spell('--prompt')} names {{{field}}}, which is not a column of {lake}"
                               + (f" (did you mean {', '.join(near)}?)" if near else "")
                               + "; literal braces are written {{ and }}")
        typ = schema.field(field).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_integer(typ)
                or pa.types.is_floating(typ) or pa.types.is_boolean(typ)):
            raise EncoderError(f"{spell('--prompt')} names {{{field}}}, a {typ} column; a placeholder needs one text, number "
                               "or boolean per row")
        sample = samples.get(str(typ), 1 if pa.types.is_integer(typ) else 0.5)
        try:
            render_prompt(spec.prompt, {f: sample if f == field else None for f in spec.fields()})
        except (ValueError, TypeError) as exc:
            raise EncoderError(f"{spell('--prompt')}: the format of {{{field}}} does not fit its {typ} values ({exc})") from exc


def _without_credentials(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # host and port as given (an IPv6 host keeps its brackets)
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_endpoint(endpoint: str, api_model: str, *, mode: str = "caption", prompt: str | None = None,
                     name: str | None = None, max_tokens: int = 60, temperature: float = 0.0, seed: int = 0,
                     concurrency: int = 32, timeout: float = 30.0, retries: int = 4,
                     api_key_env: str = "OPENAI_API_KEY") -> EndpointSpec:
    """An endpoint spec, every option checked (before anything is written)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint or "")
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except (ValueError, TypeError, AttributeError):  # "http://[::1/v1", a port of 99999, not text
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise EncoderError(f"{spell('--endpoint')} {endpoint!r}: give the server's base URL, e.g. http://127.0.0.1:8000/v1")
    if parts.username or parts.password or parts.query:
        raise EncoderError(f"{spell('--endpoint')} must not carry credentials or a query string; put the key in an environment "
                           f"variable named by {spell('--api-key-env')} (now {api_key_env})")
    if not api_model or not isinstance(api_model, str):
        raise EncoderError(f"{spell('--api-model')}: name the model the endpoint serves, e.g. {given('--api-model', 'llava-1.6')}")
    if mode not in ENDPOINT_MODES:
        raise EncoderError(f"{spell('--mode')} must be one of {', '.join(ENDPOINT_MODES)}, not {mode!r}")
    prompt = prompt or (REPHRASE_PROMPT if mode == "rephrase" else CAPTION_PROMPT)
    if mode == "rephrase" and not _subject(prompt_fields(prompt)):
        raise EncoderError(f"{spell('--prompt')} for {given('--mode', 'rephrase')} must name the caption to rewrite: {{caption}}, or another "
                           "caption column such as {caption_cocavitb32mscoco}")
    for opt, value, lo in (("--max-tokens", max_tokens, 1), ("--concurrency", concurrency, 1), ("--retries", retries, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise EncoderError(f"{spell(opt)} must be a whole number >= {lo}, not {value!r}")
    if not 0 < float(timeout) <= 3600:
        raise EncoderError(f"{spell('--timeout')} must be seconds in (0, 3600], not {timeout!r}")
    temperature = real("--temperature", temperature, 0, 5)  # (0: greedy)
    check_name(name)
    slug = name or _slug(f"{api_model}_{mode}")  # never empty: the mode is in it
    api_key(api_key_env)  # a key the request header cannot carry: refused here, never shown
    return EndpointSpec(endpoint, api_model, slug, mode, prompt, max_tokens, float(temperature), seed, concurrency,
                        float(timeout), retries, api_key_env)


def api_key(env: str | None) -> str | None:
    """The key in the environment variable ``env`` without surrounding white space (a key file
    saved with a line end), or None; one the Authorization header cannot carry is refused without
    showing it (http.client's message quotes the header)."""
    key = os.environ.get(env) if env else None
    if key is None:
        return None
    key = key.strip()
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key) or not key.isascii():
        raise EncoderError(f"the API key in ${env} holds a control character or a character outside ASCII; "
                           f"set {env} to the key alone")
    return key or None


class EndpointClient:
    """Chat-completions requests for a batch, ``concurrency`` at a time: each row's text, or its
    error after ``retries`` retries (429 honours Retry-After; 5xx, timeouts, refused connections and
    malformed replies back off exponentially), and the attempts it took."""

    def __init__(self, spec: EndpointSpec, sleep: Any = None):
        import time

        self.spec = spec
        self.key = api_key(spec.api_key_env)
        self.sleep = sleep or time.sleep

    def messages(self, image_url: str | None, text: str) -> list[dict[str, Any]]:
        if self.spec.mode == "rephrase":
            return [{"role": "user", "content": text}]
        return [{"role": "user", "content": [{"type": "text", "text": text},
                                             {"type": "image_url", "image_url": {"url": image_url}}]}]

    def one(self, image_url: str | None, text: str) -> tuple[str | None, str | None, int]:
        """(text, error, attempts) of one row; ``text`` is its rendered prompt."""
        return self.ask(self.messages(image_url, text), self.spec.max_tokens)

    def check(self) -> None:
        """One short text request (:data:`PROBE_PROMPT`, retried like a row's) before a first run
        declares its columns: an endpoint it does not reach (refused, 401/403/404) is a LakeError
        then, and nothing is written. Other failures (a 500, a timeout) pass: they are rows' errors,
        for ``--retry-errors`` to compute again."""
        _, error, _ = self.ask([{"role": "user", "content": PROBE_PROMPT}], 1)
        if error and any(e in error for e in _NO_ENDPOINT):
            raise LakeError(f"endpoint {self.spec.url()}: a first request failed ({error}); nothing was written. "
                            f"Check that the server runs at that URL and accepts the key in ${self.spec.api_key_env}, "
                            "then run the same command again")

    def ask(self, messages: list[dict[str, Any]], max_tokens: int) -> tuple[str | None, str | None, int]:
        """(text, error, attempts) of one chat request: the reply's text without control characters,
        its white space collapsed; one longer than :func:`reply_cap` is an error (not retried)."""
        import http.client
        import json
        import random
        import socket
        import urllib.error
        import urllib.request

        body = json.dumps({"model": self.spec.api_model, "messages": messages, "max_tokens": max_tokens,
                           "temperature": self.spec.temperature, "seed": self.spec.seed}).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        cap = reply_cap(self.spec.max_tokens)
        error = "no attempt"
        for attempt in range(1, self.spec.retries + 2):
            wait = min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random())
            try:
                req = urllib.request.Request(self.spec.url(), data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.spec.timeout) as resp:
                    raw = resp.read(MAX_REPLY_BYTES + 1)
                if len(raw) > MAX_REPLY_BYTES:
                    return None, f"endpoint: reply too long: over {MAX_REPLY_BYTES} bytes (not stored)", attempt
                try:
                    text = json.loads(raw)["choices"][0]["message"]["content"]
                    if not isinstance(text, str):
                        raise TypeError("content is not text")
                    text = clean_text(text)
                    text.encode("utf-8")  # a lone surrogate ("\\ud800" in the JSON) is no text: UnicodeEncodeError
                    if len(text) > cap:
                        return None, f"endpoint: reply too long: {len(text)} characters (at most {cap}; not stored)", \
                            attempt
                    if text:
                        return text, None, attempt
                    error = "malformed reply (no text)"
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    error = f"malformed reply ({type(exc).__name__})"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code not in RETRY_STATUS:
                    return None, f"endpoint: {error} (not retried)", attempt
                after = exc.headers.get("Retry-After") if exc.headers else None
                if after and after.strip().replace(".", "", 1).isdigit():
                    wait = min(60.0, float(after))
            except (TimeoutError, socket.timeout):
                error = f"timed out after {self.spec.timeout:g} s"
            except http.client.HTTPException as exc:  # not HTTP, cut short (BadStatusLine, IncompleteRead)
                error = f"malformed reply ({type(exc).__name__})"
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                error = f"connection failed ({type(getattr(exc, 'reason', exc)).__name__})"
            if attempt <= self.spec.retries:
                self.sleep(wait)
        return None, f"endpoint: {error} after {self.spec.retries + 1} attempts", self.spec.retries + 1

    def batch(self, image_urls: list[str | None], prompts: list[str]) -> list[tuple[str | None, str | None, int]]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.spec.concurrency) as pool:
            out = list(pool.map(self.one, image_urls, prompts))
        # An endpoint no request reaches (down, a wrong URL or key) would write every row's error and
        # leave a re-run nothing to do: the run stops instead, this batch unwritten, to resume later.
        if out and all(text is None and error and any(e in error for e in _NO_ENDPOINT) for text, error, _ in out):
            raise LakeError(f"endpoint {self.spec.url()}: every request of a batch of {len(out)} failed ({out[0][1]}); "
                            f"this batch was not written. Check that the server runs at that URL and accepts the key "
                            f"in ${self.spec.api_key_env}, then run the same command again: it goes on from here")
        return out


_NO_ENDPOINT = ("connection failed", "HTTP 401 ", "HTTP 403 ", "HTTP 404 ")  # never about one row


def reply_cap(max_tokens: int) -> int:
    """The most characters a reply may have: :data:`MAX_REPLY_CHARS`, or 8 a token if that is more."""
    return max(MAX_REPLY_CHARS, 8 * max_tokens)


def image_data_url(data: bytes | None, side: int) -> tuple[str | None, str | None]:
    """(a JPEG data URL of the upright image at most ``side`` pixels, error) for caption mode."""
    import base64
    import io

    from lakecurate.images import decode_small

    small = decode_small(data, side)
    if small is None:
        return None, "image_undecodable: no decodable image to send"
    buf = io.BytesIO()
    small[0].save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), None
