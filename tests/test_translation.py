"""Translation: the seq2seq task on text encoder-decoders, through the registries and the public
surface, on tiny models built from configs (a Marian and a BERT2BERT over a word tokenizer built
here): training, exact resume, evaluate with BLEU, predict, the service, strategies, bad tables;
and a slow end-to-end run on a few Multi30k rows with the bundled MiniLM warm-started on both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA
from finetunekit import Recipe, load, train
from finetunekit.core.errors import DataError
from tiny_seq2seq import PAIRS, save_tiny_bert, save_tiny_seq2seq, write_pairs

pytest.importorskip("sacrebleu")
MULTI30K = SHARED_DATA / "text_seq2seq" / "multi30k"


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return write_pairs(root / "train.tsv", repeat=2), write_pairs(root / "val.tsv", PAIRS[:4])


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory) -> Path:
    return save_tiny_seq2seq("marian", tmp_path_factory.mktemp("marian"))


def mt_recipe(backbone: str, tables: tuple[Path, Path], strategy: dict | None = None, **train_fields) -> Recipe:
    return Recipe.from_dict({
        "model": {"backbone": backbone},
        "data": {"train": str(tables[0]), "val": str(tables[1]), "text_column": "de", "label_column": "en", "max_length": 32},
        "task": {"type": "seq2seq", "num_beams": 2},
        "strategy": strategy or {"name": "full"},
        "train": {"epochs": 2, "batch_size": 4, "lr": 3e-3, "seed": 0, **train_fields},
    })


@pytest.fixture(scope="module")
def mt_run(tiny_marian, tables, tmp_path_factory):
    return train(mt_recipe(f"hf:{tiny_marian}", tables), output=tmp_path_factory.mktemp("mt") / "run", quiet=True)


def test_training_reports_bleu_and_chrf_with_signatures(mt_run):
    m = mt_run.metrics
    assert {"bleu", "bleu_cased", "chrf", "loss", "bleu_ci"} <= set(m)
    assert "case:lc" in m["signature"]["bleu"] and "case:mixed" in m["signature"]["bleu_cased"]
    assert m["decoding"]["num_beams"] == 2


def test_the_run_reloads_predicts_evaluates_and_serves(mt_run, tables, capsys):
    from finetunekit.cli import main

    run_dir = mt_run.run_dir
    saved = [json.loads(line) for line in (run_dir / "val_predictions.jsonl").read_text().splitlines()]
    assert [r["label"] for r in saved] == [en for _, en in PAIRS[:4]]
    model = load(run_dir)
    assert model.predict([r["input"] for r in saved]) == [r["predicted"] for r in saved]
    again = model.evaluate(str(tables[1]))
    assert again["bleu"] == pytest.approx(mt_run.metrics["bleu"]) and again["chrf"] == pytest.approx(mt_run.metrics["chrf"])
    capsys.readouterr()
    assert main(["predict", str(run_dir), saved[0]["input"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[0])["text"] == saved[0]["predicted"]
    # the service: type a sentence, get its translation
    from finetunekit.use.serving.app import ServeOptions
    from service_client import post_json, running

    with running(model, ServeOptions(max_batch_size=4)) as (url, _app):
        status, answer = post_json(url, {"texts": [saved[1]["input"]], "explain": True})  # as the page asks
    assert status == 200 and answer["predictions"][0]["text"] == saved[1]["predicted"]
    assert answer["predictions"][0]["explanation"]["method"] is None


def test_export_to_a_transformers_directory_answers_the_same(mt_run, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from finetunekit.use.export import export

    result = export(mt_run.run_dir, "hf", tmp_path / "hf")
    assert result.details["texts_equal"] == result.details["examples"] > 0
    saved = [json.loads(line) for line in (mt_run.run_dir / "val_predictions.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    out = model.generate(**tokenizer([r["input"] for r in saved], return_tensors="pt", padding=True))
    texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)]
    assert texts == [r["predicted"] for r in saved]
    assert "AutoModelForSeq2SeqLM" in (tmp_path / "hf" / "README.md").read_text()


def test_a_stopped_run_resumes_to_the_same_weights(tiny_marian, tables, tmp_path, monkeypatch):
    from finetunekit.run.artifacts import read_weights
    from test_resume import interrupted

    recipe = mt_recipe(f"hf:{tiny_marian}", tables, checkpoint_every_steps=1)
    reference = train(recipe, output=tmp_path / "reference", quiet=True)
    interrupted(monkeypatch, recipe, tmp_path / "run", 3)
    resumed = train(recipe, output=tmp_path / "run", quiet=True, resume=True)
    assert resumed.metrics["bleu"] == pytest.approx(reference.metrics["bleu"])
    got = read_weights(resumed.run_dir)
    for name, value in read_weights(reference.run_dir).items():
        torch.testing.assert_close(got[name], value)


@pytest.mark.parametrize("strategy", [{"name": "frozen_encoder"}, {"name": "lora", "lora_rank": 4}])
def test_strategies_on_a_bert2bert(strategy, tables, tmp_path):
    """frozen_encoder keeps the encoder as it was and trains the decoder; lora adapts only the
    attention projections (self- and cross-attention)."""
    from finetunekit.backbones import create_backbone
    from finetunekit.run.artifacts import read_weights

    bert = save_tiny_bert(tmp_path / "bert")
    before = create_backbone(f"bert2bert:{bert}").state_dict()
    result = train(mt_recipe(f"bert2bert:{bert}", tables, strategy, epochs=1, lr=1e-2), output=tmp_path / "run", quiet=True)
    got = {k.removeprefix("backbone."): v for k, v in read_weights(result.run_dir).items()}
    # the new cross-attention and LM-head transform are random at build time: compare only the warm-started tensors
    warm = {k for k in before if "crossattention" not in k and "cls.predictions.transform" not in k}
    changed = {k for k in warm if k in got and not torch.equal(got[k], before[k].float())}
    assert changed, "nothing trained"
    if strategy["name"] == "frozen_encoder":
        assert not {k for k in changed if k.startswith("model.encoder.")} and any(k.startswith("model.decoder.") for k in changed)
    else:
        assert {k.rsplit(".", 2)[-2] for k in changed} <= {"query", "key", "value", "dense"}
        assert not {k for k in changed if "intermediate" in k or (k.endswith("output.dense.weight") and "attention" not in k)}
        assert any(".encoder." in k for k in changed) and any(".decoder." in k for k in changed)


def test_layer_wise_rates_decay_from_the_output_to_the_encoder_embeddings(tmp_path):
    from finetunekit.backbones import create_backbone
    from finetunekit.run.model import FineTuneModel
    from finetunekit.run.recipe import StrategySpec
    from finetunekit.strategies import STRATEGIES

    backbone = create_backbone(f"bert2bert:{save_tiny_bert(tmp_path / 'bert')}")
    model = FineTuneModel(backbone, torch.nn.Identity())
    groups = STRATEGIES.get("full")(StrategySpec(name="full", layer_decay=0.5)).setup(model, lr=1.0, head_lr=1.0)
    rates = [g["lr"] for g in groups if g["name"].startswith("backbone.")]
    # encoder embeddings, 2 encoder layers, decoder embeddings, 2 decoder layers, LM head
    assert len(rates) == 7 and rates == sorted(rates) and rates[-1] == 1.0 and rates[0] == 0.5 ** 6


def test_bad_translation_tables(tiny_marian, tables, tmp_path):
    missing = tmp_path / "missing.tsv"
    missing.write_text("de\tfr\nein hund\tun chien\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"missing.tsv: no label column 'en'.*set data.label_column"):
        train(mt_recipe(f"hf:{tiny_marian}", (missing, tables[1])), output=tmp_path / "a", quiet=True)
    empty = tmp_path / "empty.tsv"
    empty.write_text("de\ten\nein hund\ta dog\nder mann\t \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty.tsv:3: empty target text"):
        train(mt_recipe(f"hf:{tiny_marian}", (empty, tables[1])), output=tmp_path / "b", quiet=True)
    long = tmp_path / "long.tsv"
    long.write_text("de\ten\nein hund\ta dog\nder mann\t" + " ".join(["the man runs ."] * 20) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"long.tsv:3: the target text is 81 tokens long; the decoder writes at most 63"):
        train(mt_recipe(f"hf:{tiny_marian}", (long, tables[1])), output=tmp_path / "d", quiet=True)
    no_source = tmp_path / "no_source.tsv"
    no_source.write_text("de\ten\n\ta dog\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no_source.tsv:2: empty text in column 'de'"):
        train(mt_recipe(f"hf:{tiny_marian}", (no_source, tables[1])), output=tmp_path / "c", quiet=True)


@pytest.mark.slow
@pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"Multi30k not found at {MULTI30K}")
def test_multi30k_rows_with_the_warm_started_minilm(tmp_path):
    """A few Multi30k pairs, one epoch on bundled:minilm_l6_encdec: the run trains, decodes and scores."""
    import csv

    with (MULTI30K / "train.tsv").open(encoding="utf-8", newline="") as f:
        rows = [r for _, r in zip(range(48), csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE), strict=False)]
    train_path = tmp_path / "train.tsv"
    val_path = tmp_path / "val.tsv"
    for path, part in ((train_path, rows[:40]), (val_path, rows[40:])):
        path.write_text("de\ten\n" + "".join(f"{r['de']}\t{r['en']}\n" for r in part), encoding="utf-8")
    recipe = mt_recipe("bundled:minilm_l6_encdec", (train_path, val_path), epochs=1, batch_size=8, lr=1e-4)
    result = train(recipe, output=tmp_path / "run", quiet=True)
    assert 0.0 <= result.metrics["bleu"] <= 100.0 and result.metrics["loss"] > 0
    predicted = [json.loads(line)["predicted"] for line in (result.run_dir / "val_predictions.jsonl").read_text().splitlines()]
    assert len(predicted) == 8 and all(p == p.lower() for p in predicted)  # the uncased vocabulary writes no capitals


def test_an_encoder_backbone_is_warm_started_into_an_encoder_decoder(tables, tmp_path):
    """A BERT-architecture hf: encoder given to a seq2seq task becomes a BERT2BERT of itself
    (Backbone.as_seq2seq), so bundled:minilm_l6 translates as bundled:minilm_l6_encdec does."""
    bert = save_tiny_bert(tmp_path / "bert")
    result = train(mt_recipe(f"hf:{bert}", tables, epochs=1), output=tmp_path / "run", quiet=True)
    info = json.loads((result.run_dir / "finetunekit.json").read_text())
    assert info["backbone"]["kind"] == "encdec" and "bleu" in result.metrics
    assert load(result.run_dir).predict(["ein hund rennt ."])[0] == load(result.run_dir).predict(["ein hund rennt ."])[0]


def test_zero_config_reads_two_text_columns_as_a_translation_or_asks(tmp_path):
    from finetunekit.choose.autoconfig import infer_recipe

    table = write_pairs(tmp_path / "train.tsv")
    write_pairs(tmp_path / "val.tsv", PAIRS[:4])  # found beside it
    with pytest.raises(DataError, match=r"no label column found among de, en .*--set data.text_column=de --set data.label_column=en"):
        infer_recipe(table)
    inferred = infer_recipe(table, ["data.label_column=en"])
    assert inferred.recipe.task.type == "seq2seq" and inferred.recipe.data.label_column == "en"
    assert any("the labels are sentences" in line for line in inferred.reasons)
    assert inferred.recipe.strategy.name == "full"


def test_compare_pairs_two_translation_runs_on_sentence_bleu(mt_run, tiny_marian, tables, tmp_path, capsys):
    """``finetunekit compare`` on two translation runs: a paired bootstrap on each validation
    sentence's BLEU (sacrebleu, lower-cased, effective order), both runs on the same sentences."""
    from sacrebleu.metrics import BLEU

    from finetunekit.cli import main
    from finetunekit.report import load_run, significance

    other = train(mt_recipe(f"hf:{tiny_marian}", tables, epochs=1), output=tmp_path / "one-epoch", quiet=True)
    capsys.readouterr()
    assert main(["compare", str(mt_run.run_dir), str(other.run_dir), "--output", str(tmp_path / "compare.html")]) == 0
    out = capsys.readouterr().out
    assert "sentence_bleu:" in out and "paired bootstrap" in out and "(n = 4)" in out, out
    assert (tmp_path / "compare.html").is_file()
    bleu = BLEU(lowercase=True, effective_order=True)

    def sentence_means(run_dir: Path) -> float:
        rows = [json.loads(line) for line in (run_dir / "val_predictions.jsonl").read_text().splitlines()]
        return sum(bleu.sentence_score(r["predicted"], [r["label"]]).score for r in rows) / len(rows)

    [(_, comparison)] = significance([load_run(mt_run.run_dir), load_run(other.run_dir)])
    assert comparison.metric == "sentence_bleu" and comparison.n == 4 and comparison.higher_is_better
    assert comparison.value_a == pytest.approx(sentence_means(other.run_dir))
    assert comparison.value_b == pytest.approx(sentence_means(mt_run.run_dir))
    assert comparison.ci[0] <= comparison.difference <= comparison.ci[1]


def test_batch_predict_writes_translations_to_csv(mt_run, tables, tmp_path):
    import csv

    from finetunekit.cli import main

    table = tmp_path / "sources.tsv"
    table.write_text("de\n" + "\n".join(de for de, _ in PAIRS) + "\n", encoding="utf-8")
    out = tmp_path / "translations.csv"
    assert main(["predict", str(mt_run.run_dir), "--input", str(table), "--output", str(out), "--column", "de", "--quiet"]) == 0
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert len(rows) == len(PAIRS) and all(r["error"] == "" for r in rows)
    assert [r["text"] for r in rows] == load(mt_run.run_dir).predict([de for de, _ in PAIRS])

