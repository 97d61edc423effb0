"""The registry `path` metadata (protocol doc §1.4, §3.5): Go's JSON shape and nsmgr's update rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.protocol.registry_path import PATH_METADATA_KEY, RegistryPath, RegistrySegment

OWN = RegistrySegment(name="nsmgr-local", token="mgr-jwt", expires="2026-04-07T10:24:14Z")


def test_metadata_key_is_lowercase_path() -> None:
    assert PATH_METADATA_KEY == "path"


def test_empty_path_encodes_like_go_with_null_segments() -> None:
    assert RegistryPath().to_json() == '{"Index":0,"PathSegments":null}'


def test_path_encodes_capitalised_top_keys_and_lowercase_segment_keys() -> None:
    path = RegistryPath(index=1, segments=(RegistrySegment(token="a"), RegistrySegment(token="b")))
    assert json.loads(path.to_json()) == {"Index": 1, "PathSegments": [{"token": "a"}, {"token": "b"}]}


def test_segment_fields_beyond_token_are_written_only_when_set() -> None:
    raw = json.loads(RegistryPath(index=0, segments=(OWN,)).to_json())
    assert raw["PathSegments"] == [
        {"name": "nsmgr-local", "token": "mgr-jwt", "expires": "2026-04-07T10:24:14Z"}
    ]


def test_go_initial_path_of_a_registering_endpoint_parses_as_empty() -> None:
    """cmd-nse-icmp-responder's first Register sends exactly this (§8.1 step 4)."""
    assert RegistryPath.from_json('{"Index":0,"PathSegments":null}') == RegistryPath()


@pytest.mark.parametrize("text", ["", "  ", "{}"])
def test_missing_or_empty_metadata_is_an_empty_path(text: str) -> None:
    assert RegistryPath.from_json(text) == RegistryPath()


def test_keys_are_matched_case_insensitively_like_go() -> None:
    parsed = RegistryPath.from_json('{"index":1,"pathSegments":[{"Token":"a"},{"TOKEN":"b","Name":"x"}]}')
    expected = (RegistrySegment(token="a"), RegistrySegment(token="b", name="x"))
    assert parsed == RegistryPath(index=1, segments=expected)


def test_null_segment_fields_read_as_empty() -> None:
    parsed = RegistryPath.from_json('{"Index":0,"PathSegments":[{"token":null}]}')
    assert parsed.segments == (RegistrySegment(),)


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        '"path"',
        "{not json",
        '{"Index":"one"}',
        '{"Index":-1,"PathSegments":[{"token":"a"}]}',
        '{"Index":0,"PathSegments":[1]}',
        '{"Index":0,"PathSegments":{"token":"a"}}',
    ],
)
def test_malformed_metadata_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        RegistryPath.from_json(text)


text_values = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
segments = st.builds(
    RegistrySegment, name=text_values, id=text_values, token=text_values, expires=text_values)


@given(index=st.integers(min_value=0, max_value=2**32 - 1), items=st.lists(segments, max_size=4))
def test_json_round_trip_keeps_every_field(index: int, items: list[RegistrySegment]) -> None:
    path = RegistryPath(index=index, segments=tuple(items))
    assert RegistryPath.from_json(path.to_json()) == path


# --- server_update (§3.5) ----------------------------------------------------------------------------------


def test_first_register_builds_caller_and_own_segment_at_index_one() -> None:
    updated, caller_index = RegistryPath().server_update("nse-jwt", OWN)
    assert caller_index == 0
    assert updated == RegistryPath(index=1, segments=(RegistrySegment(token="nse-jwt"), OWN))


def test_reply_header_path_carries_the_callers_index() -> None:
    updated, caller_index = RegistryPath().server_update("nse-jwt", OWN)
    header = json.loads(updated.with_index(caller_index).to_json())
    assert header["Index"] == 0
    assert [s["token"] for s in header["PathSegments"]] == ["nse-jwt", "mgr-jwt"]


def test_refresh_replaces_the_callers_token_and_our_segment() -> None:
    """The NSE re-sends the path it got back (index 0, two segments) with a new metadata token."""
    previous = RegistryPath(
        index=0, segments=(RegistrySegment(token="old-nse"), RegistrySegment(token="old-mgr")))
    updated, caller_index = previous.server_update("new-nse", OWN)
    assert caller_index == 0
    assert updated == RegistryPath(index=1, segments=(RegistrySegment(token="new-nse"), OWN))


def test_caller_further_down_the_path_appends_our_segment_after_it() -> None:
    two_hops = RegistryPath(index=1, segments=(RegistrySegment(token="nse"), RegistrySegment(token="proxy")))
    updated, caller_index = two_hops.server_update("proxy-metadata", OWN)
    assert caller_index == 1
    assert updated.index == 2
    assert updated.segments == (RegistrySegment(token="nse"), RegistrySegment(token="proxy-metadata"), OWN)


def test_caller_segment_keeps_its_other_fields_when_the_token_is_replaced() -> None:
    path = RegistryPath(index=0, segments=(RegistrySegment(name="nse-a", id="i", token="old", expires="e"),))
    updated, _ = path.server_update("new", OWN)
    assert updated.segments[0] == RegistrySegment(name="nse-a", id="i", token="new", expires="e")


def test_index_past_the_last_segment_is_refused_with_gos_message() -> None:
    broken = RegistryPath(index=2, segments=(RegistrySegment(token="a"), RegistrySegment(token="b")))
    message = r"Path.Index\+1==3 should be less or equal len\(Path.PathSegments\)==2"
    with pytest.raises(ValueError, match=message):
        broken.server_update("t", OWN)


def test_update_does_not_change_the_original_path() -> None:
    original = RegistryPath(index=0, segments=(RegistrySegment(token="old"),))
    original.server_update("new", OWN)
    assert original.segments == (RegistrySegment(token="old"),)


@given(
    items=st.lists(segments, min_size=1, max_size=5),
    data=st.data(),
    token=text_values,
)
def test_update_always_puts_caller_token_then_our_segment_after_the_caller(
    items: list[RegistrySegment], data: st.DataObject, token: str
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(items) - 1))
    updated, caller_index = RegistryPath(index=index, segments=tuple(items)).server_update(token, OWN)
    assert caller_index == index
    assert updated.index == index + 1
    assert updated.segments[index].token == token
    assert updated.segments[index + 1] == OWN
    assert len(updated.segments) == max(len(items), index + 2)
    assert updated.segments[:index] == tuple(items[:index])
