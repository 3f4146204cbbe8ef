"""A tiny random Llama for tests: real architecture, real (small) tokenizer, random weights.

The tokenizer is a byte-level BPE trained here on Python's own reference prose (`pydoc_data`), so
every byte sequence is encodable and no download is needed.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import require

TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True,
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_bpe(vocab_size: int = 1024):
    """Train a byte-level BPE on pydoc's topic texts (about 465k characters, ~1 s)."""
    tokenizers = require("tokenizers", "compress")
    import pydoc_data.topics

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tiny_llama(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 1024, **overrides) -> Path:
    """Write a random LlamaForCausalLM + tokenizer as a standard HF directory (safetensors)."""
    torch = require("torch", "compress")
    transformers = require("transformers", "compress")
    out = Path(out_dir)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(vocab_size), bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token=None, pad_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **{**TINY_CONFIG, **overrides},
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
