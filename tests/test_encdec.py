"""Text encoder-decoders (finetunekit.backbones.encdec) on tiny models built from configs: the
generation contract, decoding against transformers' own ``generate`` one sentence at a time, the
strategies' hooks, rebuilding from a run directory's assets and the transformers export."""

from __future__ import annotations

import pytest
import torch

from finetunekit.backbones import check_layer_groups, create_backbone, rebuild_backbone
from finetunekit.core.errors import FinetuneError
from tiny_seq2seq import KINDS, PAIRS, save_tiny_bert, save_tiny_seq2seq


@pytest.fixture(scope="module", params=[*KINDS, "bert2bert"])
def encdec(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "bert2bert":
        return create_backbone(f"bert2bert:{save_tiny_bert(root)}").eval()
    return create_backbone(f"hf:{save_tiny_seq2seq(request.param, root)}").eval()


def _source(bb, texts):
    return bb.collate_source(bb.tokenize(list(texts), 32))


def test_contract(encdec, tmp_path):
    bb = encdec
    assert bb.is_seq2seq and bb.modality == "text"
    check_layer_groups(bb)
    assert len(bb.layer_groups()) >= 5  # embeddings, 2 encoder layers, 2 decoder layers at least
    targets = bb.target_tokenize([en for _, en in PAIRS])
    for ids, (_, en) in zip(targets, PAIRS, strict=True):
        assert ids[-1] == bb.eos_token_id and ids[0] != bb.decoder_start_token_id
        assert bb.decode_text(ids) == en.replace(" .", ".")  # the word tokenizer's clean-up joins the full stop
    batch = _source(bb, [de for de, _ in PAIRS[:3]])
    width = max(len(t) for t in targets[:3])
    decoder_ids = torch.tensor([[bb.decoder_start_token_id] + t[:-1] + [bb.pad_token_id] * (width - len(t)) for t in targets[:3]])
    logits = bb.forward_seq2seq(batch, decoder_ids, (torch.arange(width) < torch.tensor([len(t) for t in targets[:3]])[:, None]).long())
    assert logits.shape == (3, width, bb.vocab_size) and torch.isfinite(logits).all()
    assert bb.forward_features(batch).shape == (3, bb.num_features)
    # the run directory's description and assets rebuild the same model
    bb.save_assets(tmp_path)
    rebuilt = rebuild_backbone(bb.describe(), tmp_path)
    rebuilt.load_state_dict(bb.state_dict())
    rebuilt.eval()
    assert rebuilt.generate(batch, num_beams=2, max_new_tokens=6) == bb.generate(batch, num_beams=2, max_new_tokens=6)


def test_batched_beam_search_matches_transformers_one_at_a_time(encdec):
    bb = encdec
    texts = [de for de, _ in PAIRS]
    batched = bb.generate(_source(bb, texts), num_beams=3, max_new_tokens=8, length_penalty=0.8)
    for text, ids in zip(texts, batched, strict=True):
        single = _source(bb, [text])
        out = bb.model.generate(**single, num_beams=3, max_new_tokens=8, length_penalty=0.8, do_sample=False, early_stopping=True,
                                decoder_start_token_id=bb.decoder_start_token_id, eos_token_id=bb.eos_token_id,
                                pad_token_id=bb.pad_token_id)[0].tolist()
        assert out[0] == bb.decoder_start_token_id
        expected = out[1:out.index(bb.eos_token_id, 1)] if bb.eos_token_id in out[1:] else out[1:]
        assert ids == expected


def test_strategy_hooks(encdec):
    from finetunekit.strategies.lora import adapted_root, resolve_targets

    bb = encdec
    names = bb.attention_projections()
    found = resolve_targets(adapted_root(bb), names, 4)
    assert found and all(n.rsplit(".", 1)[-1] in {"query", "key", "value", "dense", "q", "k", "v", "o", "q_proj", "k_proj", "v_proj", "out_proj"}
                         for n in found)
    assert any("cross" in n or "EncDecAttention" in n or "encoder_attn" in n for n in found)  # cross-attention adapted too
    encoder = {n for group in bb.layer_groups()[: bb.encoder_groups()] for n in group}
    assert encoder and all(".encoder." in n for n in encoder)
    # the output projection (tied to a shared table in Marian, T5, BART) is never in the encoder's groups
    # (which frozen_encoder freezes), nor listed among the frozen-by-default input tables
    output = bb.model.get_output_embeddings().weight
    assert all(dict(bb.named_parameters())[n] is not output for n in encoder)
    assert all(dict(bb.named_parameters())[n] is not output for n in bb.token_embedding_names())


def test_export_loads_in_transformers_and_answers_the_same(encdec, tmp_path):
    """save_transformers writes a directory that transformers alone runs (its generation config
    decoding as the backbone does); the answers match the backbone's batched beam search."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    bb = encdec
    bb.save_transformers(tmp_path, num_beams=2, length_penalty=1.0, max_new_tokens=6)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    texts = [de for de, _ in PAIRS[:4]]
    out = model.generate(**tokenizer(texts, return_tensors="pt", padding=True))
    theirs = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)]
    ours = [bb.decode_text(ids) for ids in bb.generate(_source(bb, texts), num_beams=2, max_new_tokens=6)]
    assert theirs == ours == bb.library_answers(tmp_path, texts)


def test_pairs_and_unreadable_checkpoints_are_refused(encdec, tmp_path):
    with pytest.raises(FinetuneError, match="single texts, not sentence pairs"):
        encdec.tokenize([("a", "b")], 8)
    with pytest.raises(FinetuneError, match="could not load BERT checkpoint"):
        create_backbone(f"bert2bert:{tmp_path / 'missing'}")
