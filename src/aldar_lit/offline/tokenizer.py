"""The real CLIP BPE tokenizer, built offline from the vocabulary that open_clip_torch ships.

SDXL's two tokenizers share OpenAI CLIP's 49,408-token BPE vocabulary; they differ only in the
padding token (`<|endoftext|>` for the first, `!` for the second).
"""

from __future__ import annotations

import gzip
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_NUM_MERGES = 49152 - 256 - 2  # the merges CLIP uses; the file holds more


def build_clip_tokenizer(pad_token: str = EOS, model_max_length: int = 77) -> CLIPTokenizer:
    """A transformers `CLIPTokenizer` with CLIP's vocabulary, token for token the same ids as open_clip's."""
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=merges,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
        model_max_length=model_max_length,
    )
