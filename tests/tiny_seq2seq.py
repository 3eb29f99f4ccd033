"""Tiny text encoder-decoders built from configs (random weights) with a word-level tokenizer
built locally, saved as Hugging Face folders: Marian, T5, BART, mBART and a BERT2BERT. Nothing is
downloaded.

Example::

    folder = save_tiny_seq2seq("marian", tmp_path)
    create_backbone(f"hf:{folder}")
"""

from __future__ import annotations

from pathlib import Path

import torch

# German sources and English targets of the tiny translation tables
PAIRS = [
    ("ein hund rennt im park .", "a dog runs in the park ."),
    ("eine katze sitzt auf der strasse .", "a cat sits on the street ."),
    ("der mann rennt .", "the man runs ."),
    ("die frau sitzt im park .", "the woman sits in the park ."),
    ("ein roter hund sitzt .", "a red dog sits ."),
    ("eine blaue katze rennt .", "a blue cat runs ."),
    ("der hund und die katze .", "the dog and the cat ."),
    ("ein mann und eine frau .", "a man and a woman ."),
]
SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]
KINDS = ("marian", "t5", "bart", "mbart")


def vocabulary() -> list[str]:
    words = sorted({w for pair in PAIRS for text in pair for w in text.split()})
    return SPECIALS + words


def word_tokenizer(bos: bool = False):
    """Whitespace words, ``</s>`` appended (and ``<s>`` first with ``bos``, as BART's tokenizer does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>" if bos else "$A </s>",
                                                       special_tokens=[("</s>", 1), ("<s>", 3)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>")


def save_tiny_seq2seq(kind: str, root: Path) -> Path:
    """A 2+2-layer, 16-wide model of ``kind`` (marian, t5, bart, mbart) and its tokenizer in ``root``."""
    import transformers as T

    n = len(vocabulary())
    bart_like = dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, vocab_size=n, pad_token_id=0, eos_token_id=1)
    if kind == "t5":
        config = T.T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=2, vocab_size=n, pad_token_id=0,
                            eos_token_id=1, decoder_start_token_id=0)
    elif kind == "marian":
        config = T.MarianConfig(**bart_like, decoder_start_token_id=0)
    elif kind == "bart":
        config = T.BartConfig(**bart_like, bos_token_id=3, decoder_start_token_id=1, forced_bos_token_id=None)
    elif kind == "mbart":
        config = T.MBartConfig(**bart_like, bos_token_id=3, decoder_start_token_id=1)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    T.AutoModelForSeq2SeqLM.from_config(config).save_pretrained(root)
    word_tokenizer(bos=kind in ("bart", "mbart")).save_pretrained(root)
    return root


def save_tiny_bert(root: Path) -> Path:
    """A 2-layer, 32-wide BERT over the tiny pairs' words, for BERT2BERT."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for pair in PAIRS for text in pair for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    root.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(root)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root)
    return root


def write_pairs(path: Path, pairs=PAIRS, header=("de", "en"), repeat: int = 1) -> Path:
    rows = ["\t".join(header)] + ["\t".join(p) for p in list(pairs) * repeat]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
