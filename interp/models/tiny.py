"""Seeded random models of a few layers, for tests and quick demos, with a byte-level tokenizer.

They are written once as ordinary Hugging Face folders, so they load through the same path as any
local model and never touch the hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SPECS = ("tiny-llama", "tiny-gpt2")
_SEED = 0


def byte_tokenizer():
    """A byte-level tokenizer: 256 byte tokens plus <|endoftext|>; no downloads, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def _config(spec: str):
    from transformers import GPT2Config, LlamaConfig

    vocab = 257
    if spec == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=256, eos_token_id=256,
            pad_token_id=256,
        )
    return GPT2Config(
        vocab_size=vocab, n_embd=64, n_layer=3, n_head=4, n_positions=512, n_ctx=512,
        bos_token_id=256, eos_token_id=256, pad_token_id=256,
    )


def cache_key(spec: str) -> str:
    """What the weights of `spec` depend on, hashed: its config, the seed, and the torch and transformers
    versions whose initialisers draw them. The cache folder is named by it, so a new version builds anew."""
    import hashlib

    import transformers

    content = f"{_config(spec).to_json_string()}|{_SEED}|{torch.__version__}|{transformers.__version__}"
    return hashlib.sha256(content.encode()).hexdigest()[:12]


def write_tiny_model(spec: str, folder: Path) -> Path:
    """Build the seeded model `spec` and save it (weights + tokenizer) as a Hugging Face folder."""
    return write_random_model(_config(spec), folder)


def write_random_model(config, folder: Path) -> Path:
    """Save a seeded random causal LM of the transformers `config` (vocab >= 257) with the byte tokenizer
    as a Hugging Face folder: any architecture, for tests of the loader."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(_SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


# Model families with a tiny random config below: the architectures whose loading the tests check.
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gpt_neox", "gpt2", "gemma2", "gemma3", "olmo2")


def family_config(family: str):
    """A transformers config of `family` (one of FAMILIES) with 2 layers, width 32, 4 query and 2 key/value
    heads and the byte vocabulary: small enough to build and load in a fraction of a second."""
    import transformers as T

    common = dict(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=256, eos_token_id=256,
                  pad_token_id=256)
    configs = {
        "llama": lambda: T.LlamaConfig(**common),
        "qwen2": lambda: T.Qwen2Config(**common),
        "qwen3": lambda: T.Qwen3Config(**common, head_dim=8),
        "mistral": lambda: T.MistralConfig(**common),
        "phi3": lambda: T.Phi3Config(**common),
        "gpt_neox": lambda: T.GPTNeoXConfig(**common),
        "gpt2": lambda: T.GPT2Config(vocab_size=257, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                     bos_token_id=256, eos_token_id=256, pad_token_id=256),
        # a final soft-cap that bends these small logits, so that an analysis forgetting it shows
        "gemma2": lambda: T.Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.5),
        "gemma3": lambda: T.Gemma3TextConfig(**common, head_dim=8),
        "olmo2": lambda: T.Olmo2Config(**common),
    }
    return configs[family]()


def write_family_model(family: str, folder: Path) -> Path:
    """`write_random_model` of `family_config(family)`, then seeded noise on every norm weight and bias (1 and 0
    at initialisation, which would hide a forgotten norm weight, bias or Gemma's (1 + w) offset)."""
    from transformers import AutoModelForCausalLM

    write_random_model(family_config(family), folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    return folder
