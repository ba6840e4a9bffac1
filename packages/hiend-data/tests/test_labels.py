"""Label names from dataset.json (nnU-Net v1 and v2) and their stored JSON form."""

from __future__ import annotations

import json

import pytest

from hiend_data.errors import InputError
from hiend_data.labels import label_names_from_json, label_names_to_json, read_label_names

NAMES = {1: "liver", 2: "spleen", 10: "kidney"}


def _write(tmp_path, content, name="dataset.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_v1_and_v2_give_the_same_names(tmp_path):
    v2 = _write(tmp_path, {"labels": {"background": 0, "kidney": 10, "liver": 1, "spleen": 2}}, "v2.json")
    v1 = _write(
        tmp_path, {"labels": {"0": "background", "10": "kidney", "2": "spleen", "1": "liver"}}, "v1.json"
    )
    assert read_label_names(v2) == NAMES
    assert read_label_names(v1) == NAMES
    assert list(read_label_names(v1)) == [1, 2, 10]  # sorted by value, background left out


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ({"name": "x"}, "no 'labels' map"),
        ({"labels": {}}, "no 'labels' map"),
        ({"labels": ["liver"]}, "no 'labels' map"),
        ([1, 2], "no 'labels' map"),
        ({"labels": {"background": 0, "tumour": [1, 2]}}, "label 'tumour' is a region [1, 2]"),
        ({"labels": {"background": 0, "liver": -1}}, "label 'liver' has negative value -1"),
        ({"labels": {"background": 0, "liver": 1, "also_liver": 1}}, "label value 1 given twice"),
        ({"labels": {"0": "background", "1": "liver", "01": "again"}}, "label value 1 given twice"),
        ({"labels": {"background": 0}}, "only background"),
        ({"labels": {"liver": 1.5}}, "label 'liver' has value 1.5"),
        ({"labels": {"liver": True}}, "label 'liver' has value True"),
        ("{not json", "not valid JSON"),
    ],
)
def test_refusals_name_the_file(tmp_path, content, what):
    path = _write(tmp_path, content)
    with pytest.raises(InputError) as err:
        read_label_names(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and what in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_label_names(tmp_path / "nope.json")


def test_json_form_round_trip():
    stored = label_names_to_json({10: "kidney", 1: "liver", 2: "spleen"})
    assert stored == {"1": "liver", "2": "spleen", "10": "kidney"}
    assert list(stored) == ["1", "2", "10"]
    assert json.loads(json.dumps(stored)) == stored
    assert label_names_from_json(stored, "x") == NAMES
    assert label_names_from_json({}, "x") == {}


@pytest.mark.parametrize(
    ("obj", "what"),
    [
        (["liver"], "must be an object"),
        (None, "must be an object"),
        ({"0": "background"}, "label key '0' is not a label value >= 1"),
        ({"-1": "x"}, "label key '-1'"),
        ({"one": "liver"}, "label key 'one'"),
        ({"1": ""}, "label 1 has name ''"),
        ({"1": "  "}, "label 1 has name"),
        ({"1": 5}, "label 1 has name 5"),
        ({"1": "a", "01": "b"}, "label value 1 given twice"),
    ],
)
def test_from_json_refusals_name_where(obj, what):
    with pytest.raises(InputError) as err:
        label_names_from_json(obj, "ckpt.safetensors: metadata extra.labels")
    msg = str(err.value)
    assert msg.startswith("ckpt.safetensors: metadata extra.labels: ") and what in msg


@pytest.mark.parametrize(
    ("labels", "what"),
    [
        ({"background": 0, "": 1}, "label 1 has name '', which is empty"),
        ({"background": 0, "   ": 2}, "label 2 has name ' ' (3 blank characters), which is only blanks"),
        ({"0": "background", "3": "\u3000"}, "label 3 has name '\\u3000' (1 blank characters)"),
        ({"background": 0, "a\x1b[31mb": 1}, "label 1 has name 'a\\x1b[31mb', which holds a control"),
        ({"0": "background", "1": "x\u202ey"}, "which holds a control or format character"),
        ({"0": "background", "1": "two\nlines"}, "label 1 has name 'two\\nlines'"),
    ],
)
def test_blank_or_control_names_are_refused_naming_file_and_value(tmp_path, labels, what):
    from hiend_data.labels import LabelNameError

    path = _write(tmp_path, {"labels": labels})
    with pytest.raises(LabelNameError) as err:
        read_label_names(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and what in msg and "\n" not in msg
    with pytest.raises(LabelNameError, match="label 1 has name"):  # the stored form: the same rule
        label_names_from_json({"1": "a\x07b"}, "labels.json")


def test_names_with_spaces_accents_cjk_and_brackets_pass(tmp_path):
    names = {1: "kidney left", 2: "Leber é", 3: "肝臓", 4: "[/bold]"}
    path = _write(tmp_path, {"labels": {"background": 0, **{n: v for v, n in names.items()}}})
    assert read_label_names(path) == names
