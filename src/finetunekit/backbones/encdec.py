"""Text encoder-decoders for generation (translation): one wrapper over transformers' seq2seq models.

Two ways in:

* ``bundled:minilm_l6_encdec``: the bundled all-MiniLM-L6-v2 on both sides, warm-started the way
  Rothe et al. (2020, "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks") build
  BERT2BERT: the encoder is the pretrained BERT, the decoder is the same pretrained BERT made causal
  with new, randomly initialised cross-attention layers and a new LM-head transform, its output
  projection tied to its input embeddings (transformers' ``EncoderDecoderModel``). With
  ``model.pretrained: false`` it is the same architecture with random weights, the from-scratch
  baseline. The vocabulary is MiniLM's English, uncased WordPiece: a German source goes through it
  too (accents folded, words cut into more pieces), which works but costs length, and the model can
  only write lower case.
* ``hf:<seq2seq checkpoint or folder>``: any ``AutoModelForSeq2SeqLM`` (Marian, T5, BART, mBART) with
  its tokenizer; the ``hf:`` source picks this wrapper when the config says ``is_encoder_decoder``.

The wrapper gives the generation contract (:class:`finetunekit.backbones.seq2seq.Seq2SeqBackbone`,
whose ``forward_seq2seq`` and batched ``generate`` it uses as they are): source ids
(:meth:`tokenize`), the encoder's states (:meth:`encode`), target ids (:meth:`target_tokenize`,
ending in the end-of-sequence token, without the decoder start token), back to text
(:meth:`decode_text`), and what strategies need: layer groups with the encoder's first
(:meth:`encoder_groups`) and the attention projections (:meth:`attention_projections`, LoRA's default).

Example::

    from finetunekit.backbones import create_backbone
    bb = create_backbone("bundled:minilm_l6_encdec")
    batch = bb.collate_source(bb.tokenize(["Ein Hund rennt."], 64))
    bb.decode_text(bb.generate(batch, num_beams=4, max_new_tokens=32)[0])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import FinetuneError
from .hf_backbone import _load_quietly, load_hf_checkpoint
from .seq2seq import Seq2SeqBackbone

# Attention projections by the names each family gives them: LoRA's default targets here.
# BERT's self- and cross-attention output projections are named by their path, since "dense" alone
# also names the feed-forward layers.
ATTENTION_PROJECTIONS = ("query", "key", "value", "attention.output.dense", "crossattention.output.dense",
                         "q", "k", "v", "o", "q_proj", "k_proj", "v_proj", "out_proj")
# T5 has relative positions and no table of positions; its targets are limited here instead
UNBOUNDED_POSITIONS = 1024


class TextEncDecBackbone(Seq2SeqBackbone):
    """A transformers encoder-decoder (``AutoModelForSeq2SeqLM`` or ``EncoderDecoderModel``) and its
    tokenizer, as a text generation backbone."""

    modality = "text"
    kind = "encdec"
    saves_assets = True

    def __init__(self, model: nn.Module, tokenizer: Any, source: str = "") -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        config = model.config
        encoder, decoder = model.get_encoder(), model.get_decoder()
        if getattr(encoder, "pooler", None) is not None:
            # a BERT encoder built from its config has a pooler that generation never uses: every
            # parameter then trains, and a warm-started model and its rebuild have the same tensors
            encoder.pooler = None
        self.num_features = int(_width(encoder.config))
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        start = _first(config.decoder_start_token_id, model.generation_config.decoder_start_token_id)
        eos = _first(config.eos_token_id, model.generation_config.eos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id)
        pad = _first(config.pad_token_id, model.generation_config.pad_token_id, tokenizer.pad_token_id)
        if start is None or eos is None or pad is None:
            raise FinetuneError(f"{source or 'the model'}: an encoder-decoder needs decoder_start_token_id, eos_token_id and "
                                f"pad_token_id in its config (found {start}, {eos}, {pad})")
        self.decoder_start_token_id, self.eos_token_id, self._pad = int(start), int(eos), int(pad)
        self.max_source_positions = _positions(encoder.config)
        self.max_target_positions = _positions(decoder.config)

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def bert2bert(cls, path: str | Path, pretrained: bool = True, source: str = "") -> TextEncDecBackbone:
        """BERT2BERT from a BERT checkpoint folder: the pretrained encoder and a causal copy of it with
        new cross-attention as decoder (``pretrained``), or the same shapes with random weights."""
        from transformers import AutoTokenizer, BertConfig, BertModel

        try:
            tokenizer = _load_quietly(AutoTokenizer.from_pretrained, str(path))
            if pretrained:
                encoder = _load_quietly(BertModel.from_pretrained, str(path), add_pooling_layer=False)
            else:
                encoder = BertModel(BertConfig.from_pretrained(str(path)), add_pooling_layer=False)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise FinetuneError(f"could not load BERT checkpoint {str(path)!r} for an encoder-decoder: {first}") from None
        return cls.from_encoder(encoder, tokenizer, warm_decoder=pretrained, source=source)

    @classmethod
    def from_encoder(cls, encoder: nn.Module, tokenizer: Any, warm_decoder: bool = True, source: str = "") -> TextEncDecBackbone:
        """An encoder-decoder around a BERT-architecture ``encoder`` (a ``BertModel``): the decoder
        has the same shape, made causal, with new cross-attention and a new LM-head transform, its
        output projection tied to its input embeddings; ``warm_decoder`` starts its other weights as
        copies of the encoder's (BERT2BERT), else random (the from-scratch model)."""
        from transformers import BertLMHeadModel, EncoderDecoderModel

        if getattr(encoder.config, "model_type", None) != "bert":
            raise FinetuneError(
                f"a {getattr(encoder.config, 'model_type', type(encoder).__name__)} encoder cannot be warm-started into an "
                "encoder-decoder here (only BERT-architecture ones: bundled:minilm_l6, bert2bert:<folder>); give an "
                "encoder-decoder instead (hf:<Marian, T5, BART or mBART folder>, bundled:minilm_l6_encdec)"
            )
        config = encoder.config.__class__.from_dict({**encoder.config.to_dict(), "is_decoder": True, "add_cross_attention": True})
        decoder = _load_quietly(BertLMHeadModel, config)
        if warm_decoder:
            # the encoder's weights, copied (not shared) into the decoder's stack; the new
            # cross-attention keeps its random initialisation
            missing, unexpected = decoder.bert.load_state_dict(encoder.state_dict(), strict=False)
            if unexpected or any("crossattention" not in k for k in missing):
                raise FinetuneError(f"the decoder does not take the encoder's weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
        # BERT's [CLS] starts the target and [SEP] ends it, as it brackets every BERT input
        for target in (model.config, model.generation_config):
            target.decoder_start_token_id = tokenizer.cls_token_id
            target.eos_token_id = tokenizer.sep_token_id
            target.pad_token_id = tokenizer.pad_token_id
        model.config.vocab_size = model.config.decoder.vocab_size
        return cls(model, tokenizer, source)

    @classmethod
    def from_pretrained(cls, name_or_path: str, pretrained: bool = True) -> TextEncDecBackbone:
        """An ``AutoModelForSeq2SeqLM`` checkpoint (hub id or local folder) with its tokenizer."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        tokenizer, model = load_hf_checkpoint(AutoTokenizer, AutoModelForSeq2SeqLM, name_or_path, pretrained, "encoder-decoder")
        return cls(model, tokenizer, f"hf:{name_or_path}")

    # -- the backbone contract --------------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden (B, S, D), mask (B, S) bool)``: the encoder over the source tokens."""
        hidden = self.model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return hidden, batch["attention_mask"].bool()

    def tokenize(self, texts: list[Any], max_length: int) -> dict[str, list[list[int]]]:
        """Source token ids (``input_ids``, ``attention_mask``), truncated to ``max_length``."""
        if texts and not isinstance(texts[0], str):
            raise FinetuneError("an encoder-decoder translates single texts, not sentence pairs (leave data.text_columns unset)")
        encoded = self.tokenizer(list(texts), truncation=True, max_length=min(max_length, self.max_source_positions), padding=False)
        return {k: list(encoded[k]) for k in ("input_ids", "attention_mask")}

    def target_tokenize(self, texts: list[str]) -> list[list[int]]:
        """Target ids as the decoder must produce them: ending in the end-of-sequence token, without
        the decoder start token (BERT's [CLS], which its tokenizer puts first, is taken off), untruncated
        (the generation task refuses a target longer than ``max_target_positions``)."""
        ids = self.tokenizer(text_target=list(texts), truncation=False, padding=False)["input_ids"]
        out = []
        for row in ids:
            row = list(row)
            if row and row[0] == self.decoder_start_token_id:
                row = row[1:]
            if self.eos_token_id not in row:  # a tokenizer that adds none (mBART's adds it before the language code)
                row.append(self.eos_token_id)
            out.append(row)
        return out

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()

    @property
    def pad_token_id(self) -> int:
        return self._pad

    def collate_source(self, encoded: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
        """Pad :meth:`tokenize`'s ids into a batch (right padding)."""
        width = max(len(row) for row in encoded["input_ids"])
        ids = [row + [self.pad_token_id] * (width - len(row)) for row in encoded["input_ids"]]
        mask = [row + [0] * (width - len(row)) for row in encoded["attention_mask"]]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    # -- what strategies need ---------------------------------------------------------------------
    def layer_groups(self) -> list[list[str]]:
        """Encoder embeddings, each encoder layer, decoder embeddings, each decoder layer, then the
        output side (LM head), input end first: the order layer-wise learning rates decay along. A
        table the encoder shares with the decoder (Marian, T5, BART: one embedding table that is
        also the output projection) goes with the decoder, so freezing the encoder's groups
        (``encoder_groups``) never freezes the decoder's input or output."""
        return self._groups()[0]

    def encoder_groups(self) -> int:
        """How many of :meth:`layer_groups` (input side first) are the encoder's own."""
        return self._groups()[1]

    def _groups(self) -> tuple[list[list[str]], int]:
        names = {id(p): n for n, p in self.named_parameters()}
        encoder, decoder = self.model.get_encoder(), self.model.get_decoder()
        enc_layers, dec_layers = _layer_list(encoder), _layer_list(decoder)
        shared = {id(p) for p in decoder.parameters()} | {id(p) for p in self.model.get_output_embeddings().parameters()}
        groups: list[list[str]] = []
        taken: set[int] = set()

        def add(params: Any) -> None:
            group = []
            for p in params:  # a table shared by both sides is listed by both
                if id(p) in names and id(p) not in taken:
                    group.append(names[id(p)])
                    taken.add(id(p))
            if group:
                groups.append(group)

        layered = {id(p) for layers in (enc_layers, dec_layers) for p in layers.parameters()}
        add([p for p in encoder.parameters() if id(p) not in layered and id(p) not in shared])
        for layer in enc_layers:
            add([p for p in layer.parameters() if id(p) not in shared])
        encoder_count = len(groups)
        # the decoder's embeddings (a shared table among them); its final norms and LM-head
        # transform sit on the output side, after its layers
        embeddings = [p for n, p in decoder.named_parameters() if id(p) not in layered and "embed" in n]
        add(embeddings + [p for p in encoder.parameters() if id(p) in shared])
        for layer in dec_layers:
            add(list(layer.parameters()))
        add(list(self.parameters()))  # the output side: what neither stack's layers nor embeddings hold
        return groups, encoder_count

    def token_embedding_names(self) -> list[str]:
        """The encoder's input-token table when it is its own (MiniLM's): frozen by default, as for
        text classification. A table shared with the decoder or tied to the output projection is the
        output layer too, and keeps training."""
        source = self.model.get_encoder().get_input_embeddings().weight
        tied = {id(self.model.get_decoder().get_input_embeddings().weight), id(self.model.get_output_embeddings().weight)}
        return [n for n, p in self.named_parameters() if p is source and id(p) not in tied]

    def attention_projections(self) -> list[str]:
        """The attention projections (self- and cross-attention, both sides) by the names this
        model family uses, as ``strategy.lora_targets`` takes them: LoRA's default targets."""
        leaves = {name for name, module in self.model.named_modules() if isinstance(module, nn.Linear)}
        return [t for t in ATTENTION_PROJECTIONS if any(n == t or n.endswith("." + t) for n in leaves)]

    # -- the run directory ------------------------------------------------------------------------
    def preprocessing(self) -> dict[str, Any]:
        return {"modality": "text", "max_target_positions": self.max_target_positions}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source}

    def save_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(directory)
        self.model.generation_config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_description(cls, description: dict[str, Any], assets: Path) -> TextEncDecBackbone:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

        config = AutoConfig.from_pretrained(assets)
        model = _load_quietly(AutoModelForSeq2SeqLM.from_config, config)
        if (Path(assets) / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(assets)
        tokenizer = _load_quietly(AutoTokenizer.from_pretrained, assets)
        return cls(model, tokenizer, description.get("source", ""))

    # -- export to a transformers directory -------------------------------------------------------
    # transformers 5 has no text2text-generation or translation pipeline: the export is checked, and
    # its README shows it run, with AutoModelForSeq2SeqLM.generate, which reads generation_config.json
    pipeline_task = "text2text-generation"

    def save_transformers(self, directory: Path, num_beams: int, length_penalty: float, max_new_tokens: int) -> None:
        """The model, its tokenizer and a generation config that decodes as this run does:
        ``AutoModelForSeq2SeqLM.from_pretrained(directory).generate(**tokenizer(texts, padding=True))``
        then writes this backbone's translations."""
        import copy

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        # the model's own generation defaults (Marian's forced_eos_token_id) apply to generate here
        # too, so the export keeps them and sets the run's decoding on top
        config = copy.deepcopy(self.model.generation_config)
        config.update(decoder_start_token_id=self.decoder_start_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
                      max_new_tokens=int(max_new_tokens), num_beams=int(num_beams), length_penalty=float(length_penalty),
                      early_stopping=num_beams > 1, do_sample=False, **self.generation_options())
        config.save_pretrained(directory)

    def library_answers(self, directory: Any, inputs: list[Any]) -> list[str]:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        tokenizer = _load_quietly(AutoTokenizer.from_pretrained, str(directory))
        model = _load_quietly(AutoModelForSeq2SeqLM.from_pretrained, str(directory)).eval()
        answers: list[str] = []
        for start in range(0, len(inputs), 8):
            encoded = tokenizer([str(x) for x in inputs[start:start + 8]], return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_source_positions)
            with torch.no_grad():
                out = model.generate(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
            answers += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)]
        return answers

    def library_usage(self, directory: str) -> list[str]:
        return ["```python", "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
                f'tokenizer = AutoTokenizer.from_pretrained("{directory}")',
                f'model = AutoModelForSeq2SeqLM.from_pretrained("{directory}")  # decodes as the run did: generation_config.json',
                'out = model.generate(**tokenizer(["Ein Hund rennt über die Wiese."], return_tensors="pt", padding=True))',
                "print(tokenizer.batch_decode(out, skip_special_tokens=True))", "```"]


def is_encoder_decoder(name_or_path: str) -> bool:
    """Whether a Hugging Face checkpoint is an encoder-decoder (its config says so), read offline
    when the files are local; False when the config cannot be read (the text backbone reports it)."""
    from transformers import AutoConfig

    try:
        return bool(getattr(_load_quietly(AutoConfig.from_pretrained, name_or_path), "is_encoder_decoder", False))
    except (OSError, ValueError):
        return False


def _first(*values: Any) -> Any:
    for value in values:
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return value
    return None


def _width(config: Any) -> int:
    for key in ("hidden_size", "d_model"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise FinetuneError(f"cannot tell the width of a {type(config).__name__}")


def _positions(config: Any) -> int:
    return int(getattr(config, "max_position_embeddings", None) or UNBOUNDED_POSITIONS)


def _layer_list(module: nn.Module) -> nn.ModuleList:
    """The longest ModuleList of a stack (its transformer layers)."""
    best: nn.ModuleList | None = None
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList) and (best is None or len(sub) > len(best)):
            best = sub
    return best if best is not None else nn.ModuleList()
