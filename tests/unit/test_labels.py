"""Label grammars and the immutable label mapping (nsm_sdk.protocol.labels)."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.labels import (
    FrozenLabels,
    client_info_labels,
    format_labels,
    parse_colon_labels,
    parse_equals_labels,
    with_missing_labels,
)


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("", {}),
        ("   ", {}),
        ("device=qrtr-4", {"device": "qrtr-4"}),
        ("a=1,b=2", {"a": "1", "b": "2"}),
        (" a = 1 , b=2 ", {"a": "1", "b": "2"}),
        ("empty=", {"empty": ""}),
        ("url=http:x", {"url": "http:x"}),
    ],
)
def test_equals_labels_parse(text: str, labels: dict[str, str]) -> None:
    assert parse_equals_labels("ENDPOINT_LABELS", text) == labels


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("", {}),
        ("device:r1", {"device": "r1"}),
        ("a:1, b : 2", {"a": "1", "b": "2"}),
        ("k:a=b", {"k": "a=b"}),
    ],
)
def test_colon_labels_parse(text: str, labels: dict[str, str]) -> None:
    assert parse_colon_labels("NSM_LABELS", text) == labels


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("device", "label 'device' has no '='; expected key=value"),
        ("a:1", "label 'a:1' has no '='; expected key=value"),
        ("a=1=2", "label 'a=1=2' has more than one '='; expected key=value"),
        ("=1", "label '=1' has an empty key"),
        (" =1", "label '=1' has an empty key"),
        ("a=1,,b=2", "empty label at position 1 (stray ',')"),
        ("a=1,", "empty label at position 1 (stray ',')"),
        ("a=1,a=2", "label key 'a' is given twice"),
        ("a=1, a =2", "label key 'a' is given twice"),
    ],
)
def test_malformed_equals_labels_are_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_equals_labels("ENDPOINT_LABELS", text)
    error = caught.value
    assert (error.variable, error.value, error.problem) == ("ENDPOINT_LABELS", text, problem)
    assert str(error) == f"ENDPOINT_LABELS={text!r}: {problem}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("device=r1", "label 'device=r1' has no ':'; expected key:value"),
        ("a:1:2", "label 'a:1:2' has more than one ':'; expected key:value"),
        (":1", "label ':1' has an empty key"),
        (",a:1", "empty label at position 0 (stray ',')"),
        ("a:1,a:1", "label key 'a' is given twice"),
    ],
)
def test_malformed_colon_labels_are_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_colon_labels("NSM_LABELS", text)
    assert (caught.value.variable, caught.value.value, caught.value.problem) == ("NSM_LABELS", text, problem)


def test_frozen_labels_compare_like_a_dict_regardless_of_order() -> None:
    labels = FrozenLabels({"a": "1", "b": "2"})
    assert labels == {"b": "2", "a": "1"}
    assert labels == FrozenLabels([("b", "2"), ("a", "1")])
    assert labels != {"a": "1"}
    assert hash(labels) == hash(FrozenLabels({"b": "2", "a": "1"}))


def test_frozen_labels_keep_insertion_order() -> None:
    assert list(FrozenLabels([("z", "1"), ("a", "2")])) == ["z", "a"]


def test_frozen_labels_cannot_be_changed() -> None:
    labels = FrozenLabels({"a": "1"})
    with pytest.raises(AttributeError):
        labels._items = {}
    with pytest.raises(TypeError):
        labels["a"] = "2"  # type: ignore[index]


def test_frozen_labels_do_not_alias_the_source_dict() -> None:
    source = {"a": "1"}
    labels = FrozenLabels(source)
    source["a"] = "changed"
    assert labels["a"] == "1"


def test_frozen_labels_survive_copy_and_pickle() -> None:
    labels = FrozenLabels({"a": "1"})
    assert copy.deepcopy(labels) == labels
    assert pickle.loads(pickle.dumps(labels)) == labels
    assert repr(labels) == "FrozenLabels({'a': '1'})"


def test_client_info_labels_use_nsm_names_and_skip_missing_values() -> None:
    assert client_info_labels(pod_name="r1", node_name="n1", cluster_name="c1") == {
        "podName": "r1",
        "nodeName": "n1",
        "clusterName": "c1",
    }
    assert client_info_labels(pod_name="r1", node_name="") == {"podName": "r1"}
    assert client_info_labels() == {}


def test_with_missing_labels_keeps_present_keys() -> None:
    merged = with_missing_labels({"podName": "mine", "a": "1"}, {"podName": "env", "nodeName": "n1"})
    assert merged == {"podName": "mine", "a": "1", "nodeName": "n1"}
    assert isinstance(merged, FrozenLabels)


@pytest.mark.parametrize(
    ("labels", "separator"),
    [({"a": "1,2"}, "="), ({"a=b": "1"}, "="), ({"a": "x:y"}, ":"), ({"a": " 1"}, "="), ({"": "1"}, "=")],
)
def test_format_labels_refuses_what_the_grammar_cannot_carry(labels: dict[str, str], separator: str) -> None:
    with pytest.raises(ValueError):
        format_labels(labels, separator)


_PART = st.text(st.characters(exclude_categories=["Cs"], exclude_characters=",=:\0"), max_size=12).map(
    str.strip
)


@given(labels=st.dictionaries(_PART.filter(bool), _PART, max_size=6), separator=st.sampled_from(["=", ":"]))
def test_formatted_labels_parse_back_equal(labels: dict[str, str], separator: str) -> None:
    text = format_labels(labels, separator)
    parse = parse_equals_labels if separator == "=" else parse_colon_labels
    assert parse("LABELS", text) == labels
