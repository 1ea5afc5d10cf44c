"""A tiny randomly initialised Hugging Face GIT checkpoint directory, built in a test's tmp_path:
the same files ``save_pretrained`` writes for a real BLIP/GIT (config, weights, tokenizer, image
processor), so the captioner loads it through ``AutoProcessor`` + ``AutoModelForImageTextToText``
like any downloaded snapshot. Its captions are words from a 20-word vocabulary, meaningless."""

from __future__ import annotations

from pathlib import Path

WORDS = "a the cat dog on in red blue photo of man woman sitting table grass sky car street with".split()


def tiny_git(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertTokenizerFast, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, initializer_range=0.2)
    # initializer_range 0.2 (not 0.02): a random model whose words depend on the image
    config = GitConfig(vision_config=vision, vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, bos_token_id=2,
                       eos_token_id=3, pad_token_id=0, initializer_range=0.2)
    torch.manual_seed(seed)
    GitForCausalLM(config).save_pretrained(path)
    GitProcessor(images, tokenizer).save_pretrained(path)
    (path / "vocab.txt").unlink()  # the tokenizer's files now hold it
    return path
