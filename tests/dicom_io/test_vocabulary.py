"""Vocabulary model and loader: codes, aliases, SEG mapping, errors that name the entry."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_io.vocabulary import LOCAL_SCHEME, Vocabulary, VocabularyError, load_vocabulary

TOML = """
[seg]
absent_class = "normal"

[[classes]]
name = "normal"
code = { scheme = "SCT", value = "17621005", meaning = "Normal" }

[[classes]]
name = "pneumonia"
code = { scheme = "SCT", value = "233604007", meaning = "Pneumonia" }
aliases = [{ scheme = "DCM", value = "X-PNEU", meaning = "Lung infection" }]
segment_property_types = [{ scheme = "SCT", value = "39607008", meaning = "Lung" }]
"""


def test_vocabulary_toml_resolves_codes_aliases_and_segment_types(tmp_path):
    p = tmp_path / "v.toml"
    p.write_text(TOML)
    v = load_vocabulary(p)
    assert v.class_names == ["normal", "pneumonia"]
    assert v.lookup("SCT", "233604007") == "pneumonia"
    assert v.lookup("sct", "233604007") == "pneumonia"  # designators compare case-insensitively
    assert v.lookup("DCM", "X-PNEU") == "pneumonia"
    assert v.lookup("SCT", "39607008") == "pneumonia"
    assert v.lookup("SCT", "00000") is None
    assert v.code_for("normal").value == "17621005"
    assert v.seg.absent_class == "normal"
    with pytest.raises(KeyError):
        v.code_for("nope")


def test_legacy_srt_codes_match_sct_classes():
    v = Vocabulary.from_data(
        {"classes": [{"name": "liver", "code": {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}}]}
    )
    assert v.lookup("SRT", "T-62000") == "liver"  # dcmqi and older tools write SNOMED-RT
    w = Vocabulary.from_data(
        {"classes": [{"name": "cord", "code": {"scheme": "SRT", "value": "T-A7010", "meaning": "Spinal cord"}}]}
    )
    assert w.lookup("SCT", "2748008") == "cord"
    assert w.lookup("SCT", "10200004") is None


def test_vocabulary_json_and_toml_round_trip(tmp_path):
    v = load_vocabulary(_write(tmp_path / "v.toml", TOML))
    v.to_json(tmp_path / "v.json")
    assert load_vocabulary(tmp_path / "v.json") == v
    v.to_toml(tmp_path / "w.toml")
    assert load_vocabulary(tmp_path / "w.toml") == v


def test_from_class_names_uses_local_scheme_and_round_trips(tmp_path):
    v = Vocabulary.from_class_names(["NORMAL", "PNEUMONIA"])
    c = v.code_for("PNEUMONIA")
    assert c.scheme == LOCAL_SCHEME and c.value.startswith("LBL-") and len(c.value) <= 16
    assert v.lookup(c.scheme, c.value) == "PNEUMONIA"
    v.to_toml(tmp_path / "v.toml")
    assert load_vocabulary(tmp_path / "v.toml") == v


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"classes": [{"name": "a", "code": {"scheme": "SCT", "value": "1"}}]}, "classes[0] ('a').code.meaning"),
        (
            {
                "classes": [
                    {"name": "a", "code": {"scheme": "SCT", "value": "1", "meaning": "A"}},
                    {"name": "b", "code": {"scheme": "SCT", "value": "1", "meaning": "B"}},
                ]
            },
            "classes[1] ('b'): code SCT 1 already belongs to class 'a'",
        ),
        (
            {
                "classes": [
                    {"name": "a", "code": {"scheme": "SCT", "value": "1", "meaning": "A"}},
                    {"name": "A", "code": {"scheme": "SCT", "value": "2", "meaning": "B"}},
                ]
            },
            "classes[1] ('A'): duplicate class name",
        ),
        (
            {
                "seg": {"absent_class": "zz"},
                "classes": [{"name": "a", "code": {"scheme": "S", "value": "1", "meaning": "A"}}],
            },
            "seg.absent_class 'zz'",
        ),
        ({"classes": []}, "classes"),
        ({"classes": [{"name": "a", "code": {"scheme": "S", "value": "1", "meaning": "A"}, "colour": 1}]}, "colour"),
    ],
)
def test_validation_errors_name_the_offending_entry(tmp_path, doc, fragment):
    p = tmp_path / "v.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(VocabularyError) as e:
        load_vocabulary(p)
    assert fragment in str(e.value)


def test_unparsable_and_missing_files_give_vocabulary_errors(tmp_path):
    with pytest.raises(VocabularyError, match="not valid TOML"):
        load_vocabulary(_write(tmp_path / "v.toml", "[[classes]\nname="))
    with pytest.raises(VocabularyError, match="cannot read"):
        load_vocabulary(tmp_path / "absent.toml")


def _write(p, text):
    p.write_text(text)
    return p


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_concept = st.fixed_dictionaries(
    {"scheme": st.text(max_size=18), "value": st.text(max_size=20), "meaning": st.text(max_size=20)}
)
_doc = st.fixed_dictionaries(
    {
        "classes": st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=10), "code": _concept | _json_values},
                optional={"aliases": st.lists(_concept, max_size=2), "extra": _json_values},
            ),
            max_size=4,
        )
    },
    optional={"seg": st.dictionaries(st.sampled_from(["absent_class", "match_segment_label", "x"]), _json_values)},
)


@settings(
    max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=_doc | _json_values)
def test_loader_accepts_or_raises_vocabulary_error_only(tmp_path, doc):
    p = tmp_path / "v.json"
    p.write_text(json.dumps(doc))
    try:
        v = load_vocabulary(p)
    except VocabularyError as e:
        assert str(e)
        return
    # Whatever loads is consistent: each class code resolves to its class, and survives a round trip.
    for c in v.classes:
        assert v.lookup(c.code.scheme, c.code.value) == c.name
    v.to_toml(tmp_path / "rt.toml")
    assert load_vocabulary(tmp_path / "rt.toml") == v


def test_from_class_names_refuses_unusable_names_naming_them():
    with pytest.raises(VocabularyError, match=r"class name 'a\\\\b'"):
        Vocabulary.from_class_names(["ok", "a\\b"])
    with pytest.raises(VocabularyError, match="duplicate class name"):
        Vocabulary.from_class_names(["Cat", "cat"])
