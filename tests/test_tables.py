"""A table is read as written, or refused: repeated column names, unclosed quotes, ragged rows,
cells past the field limit, a label column mixing lists and single labels, and image names that
climb out of their folder each give one line naming the file, the row and the column (exit status
2 from the command line); well-formed tables, quoted commas, doubled quotes and multi-line cells
that are not rows still read as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetunekit.cli import main
from finetunekit.core.errors import DataError
from finetunekit.modalities import read_examples
from finetunekit.tasks.detection_data import read_detection


def table(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    return table(tmp_path, name, "".join(json.dumps(r) + "\n" for r in rows))


REFUSED = {
    "repeated_column_csv": ("t.csv", "label,sentence,label\npos,good film,neg\n",
                            r"t\.csv:1: column 'label' appears twice in the header \(columns 1 and 3\)"),
    "repeated_column_tsv": ("t.tsv", "sentence\tlabel\tlabel\ngood\tpos\tneg\n",
                            r"t\.tsv:1: column 'label' appears twice in the header \(columns 2 and 3\)"),
    "repeated_key_jsonl": ("t.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg", "label": "pos"}\n',
                           r"t\.jsonl:2: key 'label' appears twice in the object"),
    "quote_never_closed": ("t.csv", 'sentence,label\ngood film,pos\n"bad film,neg\ngreat plot,pos\n',
                           r"t\.csv:3: column 'sentence': a quote opened here is never closed"),
    "quote_closed_mid_cell": ("t.csv", 'sentence,label\n"good film,pos\n"bad film",neg\n',
                              r"t\.csv:2: column 'sentence': a quoted cell is closed in the middle of a cell"),
    "quote_swallowing_a_row": ("t.csv", 'sentence,label\n"good film,pos\nbad film",neg\ngreat plot,pos\n',
                               r"t\.csv:2: column 'sentence': a quoted cell runs over several lines and its line 1 "
                               r"\('good film,pos'\) reads as a whole row"),
    "row_short_of_a_field": ("t.csv", "sentence,label\ngood film,pos\nbad film\n",
                             r"t\.csv:3: 1 field\(s\) where the header has 2: column 'label' is missing"),
    "row_with_an_extra_field": ("t.csv", "sentence,label\ngood film,pos,extra\n", r"t\.csv:2: more fields than the header's 2"),
    "cell_past_the_field_limit": ("t.csv", "sentence,label\ngood,pos\nbad," + "x" * 200_000 + "\n",
                                  r"t\.csv:3: column 'label': a cell longer than 131072 characters"),
    "one_list_label_among_single_labels": (
        "t.jsonl", "".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(63))
        + json.dumps({"text": "odd", "label": [1]}) + "\n",
        r"t\.jsonl:64: column 'label': \['1'\] is a list, but 63 other rows hold single labels \(1 row\(s\) like this one\)"),
    "one_single_label_among_lists": (
        "t.jsonl", "".join(json.dumps({"text": f"t{i}", "label": ["a", "b"][: 1 + i % 2]}) + "\n" for i in range(9))
        + json.dumps({"text": "odd", "label": "a"}) + "\n",
        r"t\.jsonl:10: column 'label': 'a' is a single label, but 9 other rows hold lists of labels"),
    "object_as_a_label": ("t.jsonl", '{"text": "good", "label": {"a": 1}}\n', r"t\.jsonl:1: column 'label': .* is an object"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_table_that_cannot_be_read_as_written_is_refused_naming_row_and_column(name, tmp_path):
    file, text, pattern = REFUSED[name]
    with pytest.raises(DataError, match=pattern) as info:
        read_examples(table(tmp_path, file, text), "text")
    assert "\n" not in str(info.value)


def test_parquet_with_a_repeated_column_is_refused(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table([["good", "bad"], ["pos", "neg"], ["neg", "pos"]], names=["text", "label", "label"]), path)
    with pytest.raises(DataError, match=r"t\.parquet: the schema: column 'label' appears twice"):
        read_examples(path, "text")


def test_well_formed_tables_read_as_before(tmp_path):
    quoted = table(tmp_path, "q.csv", 'sentence,label\n"good, film",pos\n"bad ""film""",neg\n"two\nlines",pos\n\n')
    assert read_examples(quoted, "text").inputs == ["good, film", 'bad "film"', "two\nlines"]
    glue = table(tmp_path, "g.tsv", 'sentence\tlabel\nit\'s "good"\tpos\n"bad\tneg\n')  # bare quotes: TSV does not quote
    assert read_examples(glue, "text").inputs == ['it\'s "good"', '"bad']
    lists = jsonl(tmp_path, "m.jsonl", [{"text": "a", "label": ["x"]}, {"text": "b", "label": []}, {"text": "c", "label": ["x", "y"]}])
    assert read_examples(lists, "text").labels == [["x"], [], ["x", "y"]]
    long_json = jsonl(tmp_path, "long.jsonl", [{"text": "x" * 300_000, "label": "pos"}, {"text": "y", "label": "neg"}])
    assert len(read_examples(long_json, "text").inputs[0]) == 300_000  # JSONL has no quoting to go wrong


def test_the_command_line_says_it_in_one_line_with_exit_2(tmp_path, capsys):
    data = table(tmp_path, "t.csv", "label,sentence,label\n" + "".join(f"{y},{t},{y}\n" for t, y in [("good", "pos"), ("bad", "neg")] * 4))
    recipe = table(tmp_path, "r.yaml", f"data:\n  train: {data}\n")
    assert main(["train", str(recipe), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"finetunekit train: error: {data}:1: column 'label' appears twice in the header (columns 1 and 3): " \
        "which one to read would be a guess; rename or remove one\n"
    assert not (tmp_path / "run").exists()


def _image(path: Path, size=(32, 24)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 20, 20)).save(path)
    return path


def test_a_box_row_climbing_out_of_the_image_folder_is_refused_naming_that_row(tmp_path):
    # the table sits in labels/, its images in ../images (raccoon's layout), found by looking there;
    # a row naming a file outside must not change where the others are looked for, nor be read
    for i in range(3):
        _image(tmp_path / "images" / f"img_{i}.png")
    rows = [f"img_{i}.png,2,2,20,20,cat\n" for i in range(3)]
    rows.insert(1, "../../../../etc/hostname,2,2,20,20,cat\n")
    (tmp_path / "labels").mkdir()
    path = tmp_path / "labels" / "boxes.csv"
    path.write_text("file,x1,y1,x2,y2,label\n" + "".join(rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"labels/boxes\.csv:3: field 'file': '\.\./\.\./\.\./\.\./etc/hostname' leaves the image folder"):
        read_detection(path)
    path.write_text("file,x1,y1,x2,y2,label\n" + "".join(rows[:1] + rows[2:]), encoding="utf-8")
    assert [Path(p).parent.name for p in read_detection(path).inputs] == ["images"] * 3  # the good rows alone read fine
    path.write_text("file,x1,y1,x2,y2,label\n/etc/hostname,2,2,20,20,cat\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"boxes\.csv:2: field 'file': '/etc/hostname' is an absolute path"):
        read_detection(path)


def test_coco_file_names_stay_inside_the_image_folder(tmp_path):
    _image(tmp_path / "img.png")
    coco = {"images": [{"id": 1, "file_name": "../outside.png"}], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"train\.json: images\[0\] \(file_name\): '\.\./outside\.png' leaves the image folder"):
        read_detection(tmp_path / "train.json")
