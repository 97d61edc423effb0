"""Metrics derived from events (nsm_sdk/agent/metrics.py), fed with log records as the agents make them."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from nsm_sdk.agent.metrics import EventMetrics, ListenAddress, parse_listen_address
from nsm_sdk.protocol.errors import ConfigError


class Feed:
    """An EventMetrics with a clock: `event(name, at, **fields)` logs one record at time `at`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.handler = EventMetrics(self.registry)

    def event(self, name: str, at: float, **fields: object) -> None:
        record = logging.LogRecord("nsc_sidecar.link", logging.INFO, __file__, 1, name, None, None)
        record.fields = fields
        record.created = at
        self.handler.emit(record)

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


def test_links_by_state_follow_the_transitions_from_the_agents_start() -> None:
    feed = Feed()
    feed.event("agent.start", 100.0, links=2)
    assert feed.value("nsm_links", state="requesting") == 2
    feed.event("link.established", 100.4, conn="c-0", previous="requesting")
    assert feed.value("nsm_links", state="requesting") == 1
    assert feed.value("nsm_links", state="established") == 1
    feed.event("link.refreshing", 110.0, conn="c-0", previous="established")
    feed.event("link.established", 110.1, conn="c-0", previous="refreshing")
    feed.event("link.healing", 120.0, conn="c-0", previous="established")
    assert feed.value("nsm_links", state="healing") == 1
    assert feed.value("nsm_links", state="established") == 0
    feed.event("link.closed", 130.0, conn="c-0", previous="healing")
    feed.event("link.removed", 130.1, conn="c-0")
    assert [feed.value("nsm_links", state=s) for s in ("requesting", "established", "healing", "closed")] == [
        1,
        0,
        0,
        0,
    ]


def test_request_durations_run_from_asking_to_established_by_kind() -> None:
    feed = Feed()
    feed.event("agent.start", 100.0, links=1)
    feed.event("link.established", 100.5, conn="c-0")
    feed.event("link.refreshing", 110.0, conn="c-0")
    feed.event("link.established", 110.02, conn="c-0")
    assert feed.value("nsm_link_request_duration_seconds_count", kind="request") == 1
    assert feed.value("nsm_link_request_duration_seconds_sum", kind="request") == pytest.approx(0.5)
    assert feed.value("nsm_link_request_duration_seconds_sum", kind="refresh") == pytest.approx(0.02)
    assert feed.value("nsm_link_request_duration_seconds_count", kind="heal") == 0


def test_failures_count_by_code_and_every_event_by_name() -> None:
    feed = Feed()
    feed.event("request.failed", 1.0, conn="c-0", code="UNAVAILABLE", reason="x")
    feed.event("request.failed", 2.0, conn="c-0", code="UNAVAILABLE", reason="y")
    feed.event("request.failed", 3.0, conn="c-0", code="NOT_FOUND", reason="z")
    assert feed.value("nsm_request_failures_total", code="UNAVAILABLE") == 2
    assert feed.value("nsm_request_failures_total", code="NOT_FOUND") == 1
    assert feed.value("nsm_events_total", event="request.failed") == 3


def test_connections_held_go_up_once_per_connection_and_down_when_it_goes() -> None:
    feed = Feed()
    feed.event("connection.up", 1.0, conn="m-1")
    feed.event("connection.up", 1.0, conn="m-2")
    feed.event("connection.refreshed", 2.0, conn="m-1")
    feed.event("connection.up", 2.5, conn="m-1")  # logged again: still one connection
    assert feed.value("nsm_connections") == 2
    feed.event("connection.closed", 3.0, conn="m-1")
    feed.event("connection.expired", 3.0, conn="m-2")
    feed.event("connection.closed", 3.0, conn="m-2")
    assert feed.value("nsm_connections") == 0


def test_records_without_fields_are_not_events() -> None:
    feed = Feed()
    record = logging.LogRecord("grpc", logging.INFO, __file__, 1, "some library line", None, None)
    feed.handler.emit(record)
    assert feed.value("nsm_events_total", event="some library line") == 0


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (":9090", ListenAddress("0.0.0.0", 9090)),
        ("127.0.0.1:0", ListenAddress("127.0.0.1", 0)),
        ("[::1]:8081", ListenAddress("::1", 8081)),
        ("localhost:8081", ListenAddress("localhost", 8081)),
    ],
)
def test_listen_addresses_people_write(text: str, address: ListenAddress) -> None:
    assert parse_listen_address("NSM_PROMETHEUS_LISTEN_ON", text) == address


@given(st.text(max_size=30))
def test_any_listen_address_parses_or_names_the_variable_and_value(text: str) -> None:
    try:
        address = parse_listen_address("NSM_PROMETHEUS_LISTEN_ON", text)
    except ConfigError as exc:
        assert str(exc).startswith("NSM_PROMETHEUS_LISTEN_ON=") and "\n" not in str(exc).replace("\\n", "")
    else:
        assert 0 <= address.port <= 65535 and address.host
