"""Interface-name validation and generation (nsm_sdk.protocol.ifname)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nsm_sdk.protocol.errors import ConfigError
from nsm_sdk.protocol.ifname import (
    GENERATED_NAME_ALPHABET,
    generate_interface_name,
    indexed_interface_name,
    interface_name_problem,
    validate_interface_name,
)


def fixed_bytes(*chunks: bytes) -> Callable[[int], bytes]:
    """A random source that returns the given chunks in order (each call gets the next chunk)."""
    pending = list(chunks)

    def source(size: int) -> bytes:
        return pending.pop(0) if pending else b""

    return source


@pytest.mark.parametrize(
    "name",
    ["eth0", "a", "nsm0", "eth0.100", "br-lan_1", "x" * 15, "e@1", "..a", "a..", "~!"],
)
def test_valid_interface_names_have_no_problem(name: str) -> None:
    assert interface_name_problem(name) is None
    assert validate_interface_name("VAR", name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "interface name is empty"),
        ("x" * 16, "is 16 bytes long, the Linux limit is 15"),
        ("é" * 8, "is 16 bytes long, the Linux limit is 15"),
        (".", "is not allowed"),
        ("..", "is not allowed"),
        ("eth/0", "forbidden character '/'"),
        ("eth:0", "forbidden character ':'"),
        ("eth 0", "forbidden character ' '"),
        ("eth\t0", "forbidden character '\\t'"),
        ("eth\n", "forbidden character '\\n'"),
        ("eth\u00a00", "forbidden character '\\xa0'"),
        ("eth\0", "forbidden character '\\x00'"),
        # the kernel would number a template name (eth%d) instead of using it
        ("eth%d", "forbidden character '%'"),
        # the kernel's isspace() takes bytes of some UTF-8 sequences for blanks: ASCII only, for every layer
        ("é" * 7, "forbidden character 'é'"),
        ("eth\u00e9", "forbidden character 'é'"),
        ("eth\x7f", "forbidden character '\\x7f'"),
    ],
)
def test_invalid_interface_names_report_the_problem(name: str, problem: str) -> None:
    found = interface_name_problem(name)
    assert found is not None
    assert problem in found


def test_validate_interface_name_raises_config_error_naming_variable_value_and_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_interface_name("NSC_IF", "way-too-long-name")
    error = caught.value
    assert (error.variable, error.value) == ("NSC_IF", "way-too-long-name")
    assert str(error) == "NSC_IF='way-too-long-name': " + error.problem
    assert "17 bytes long" in error.problem


def test_validate_interface_name_reports_the_whole_raw_value_when_given() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_interface_name("LIST", "a/b", value="svc/a/b")
    assert caught.value.value == "svc/a/b"
    assert str(caught.value).startswith("LIST='svc/a/b': interface name 'a/b'")


@pytest.mark.parametrize(("index", "name"), [(0, "nsm0"), (1, "nsm1"), (42, "nsm42")])
def test_indexed_interface_name_is_nsm_and_position(index: int, name: str) -> None:
    assert indexed_interface_name(index) == name


def test_indexed_interface_name_rejects_negative_index() -> None:
    with pytest.raises(ValueError, match="negative"):
        indexed_interface_name(-1)


def test_generated_name_is_service_prefix_dash_and_random_fill_to_15_chars() -> None:
    name = generate_interface_name("icmp-responder", fixed_bytes(bytes([0, 1, 2, 3])))
    assert name == "icmp-respo-0123"


def test_generated_name_keeps_a_short_service_whole() -> None:
    name = generate_interface_name("vpn", fixed_bytes(bytes(range(11))))
    assert name == "vpn-" + GENERATED_NAME_ALPHABET[:11]
    assert len(name) == 15


def test_generated_name_masks_bytes_to_six_bits_and_skips_values_past_the_alphabet() -> None:
    # 62 and 63 (after masking) are outside the 62-character alphabet and are dropped; 64 masks to 0.
    name = generate_interface_name("icmp-responder", fixed_bytes(bytes([62, 63, 64, 0x7F, 61, 10, 255, 36])))
    assert name == "icmp-respo-0zAa"


def test_generated_name_asks_the_source_again_when_a_chunk_is_used_up() -> None:
    name = generate_interface_name("icmp-responder", fixed_bytes(bytes([63, 63]), bytes([1, 2, 3, 4])))
    assert name == "icmp-respo-1234"


def test_generated_name_uses_nsm_prefix_for_an_empty_service() -> None:
    name = generate_interface_name("", fixed_bytes(bytes(range(11))))
    assert name == "nsm-" + GENERATED_NAME_ALPHABET[:11]


def test_generated_name_replaces_characters_the_kernel_forbids() -> None:
    name = generate_interface_name("a/b:c d", fixed_bytes(bytes(range(7))))
    assert name.startswith("a-b-c-d-")
    assert interface_name_problem(name) is None


def test_generated_name_fails_when_the_random_source_is_exhausted() -> None:
    with pytest.raises(ValueError, match="no bytes"):
        generate_interface_name("svc", fixed_bytes())


@given(
    service=st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
    seed=st.binary(min_size=64, max_size=64),
)
def test_generated_names_are_always_valid_and_exactly_15_bytes(service: str, seed: bytes) -> None:
    pool = bytearray(seed * 8)

    def source(size: int) -> bytes:
        chunk = bytes(pool[:size])
        del pool[:size]
        return chunk or bytes([0]) * size

    name = generate_interface_name(service, source)
    assert interface_name_problem(name) is None
    assert len(name.encode()) == 15
    prefix, _, random_part = name.rpartition("-")
    assert random_part and all(char in GENERATED_NAME_ALPHABET for char in random_part)
    assert len(prefix.encode()) <= 10
