"""nsm-local's registry: register/replace/unregister, Find patterns, expiry, watches, persisted services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nsm_local import registry as registry_module
from nsm_local.registry import EndpointEntry, Registry, endpoint_view, service_view
from nsm_sdk._proto.registry.registry_pb2 import (
    Match,
    NetworkService,
    NetworkServiceEndpoint,
    NetworkServiceEndpointResponse,
    NetworkServiceLabels,
    NetworkServiceResponse,
)
from nsm_sdk.protocol.errors import ExhaustedError
from nsm_sdk.protocol.gotime import epoch_to_timestamp

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(10):  # a hang is a failure, not a stuck test run
            return await main()

    return asyncio.run(bounded())


def nse(
    name: str,
    services: tuple[str, ...] = ("p2p",),
    url: str = "",
    expires: float | None = None,
    labels: dict[str, str] | None = None,
) -> NetworkServiceEndpoint:
    record = NetworkServiceEndpoint(name=name, url=url or f"unix:///tmp/{name}.sock")
    record.network_service_names.extend(services)
    for service in services:
        record.network_service_labels[service].CopyFrom(NetworkServiceLabels(labels=labels or {}))
    if expires is not None:
        record.expiration_time.CopyFrom(epoch_to_timestamp(expires))
    return record


def entry(name: str, **kwargs: Any) -> EndpointEntry:
    record = nse(name, **kwargs)
    return EndpointEntry(record=record, dial_url=record.url)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def pipe_fds() -> Iterator[Callable[[], int]]:
    """Hands out read ends of pipes (the registry owns and closes them); cleans up whatever is left."""
    made: list[tuple[int, int]] = []

    def make() -> int:
        made.append(os.pipe())
        return made[-1][0]

    yield make
    for read_end, write_end in made:
        for fd in (read_end, write_end):
            with contextlib.suppress(OSError):
                os.close(fd)


async def take(stream: AsyncIterator[T], count: int) -> list[T]:
    return [await anext(stream) for _ in range(count)]


# --- NetworkServices ----------------------------------------------------------------------------------------


def test_registered_service_is_stored_as_a_copy() -> None:
    registry = Registry()
    service = NetworkService(name="p2p", payload="IP")
    registry.register_service(service)
    service.payload = "ETHERNET"
    assert registry.services["p2p"].payload == "IP"


def test_registering_a_service_again_replaces_it() -> None:
    registry = Registry()
    registry.register_service(NetworkService(name="p2p", payload="IP"))
    registry.register_service(NetworkService(name="p2p", payload="ETHERNET", matches=[Match()]))
    assert list(registry.services) == ["p2p"]
    assert registry.services["p2p"].payload == "ETHERNET"
    assert len(registry.services["p2p"].matches) == 1


def test_unregistering_a_service_removes_it_and_unknown_names_are_ignored() -> None:
    registry = Registry()
    registry.register_service(NetworkService(name="p2p"))
    registry.unregister_service("nope")
    registry.unregister_service("p2p")
    assert registry.services == {}


def test_find_services_by_name_and_payload_with_empty_fields_as_wildcards() -> None:
    registry = Registry()
    for name, payload in (("a", "IP"), ("b", "ETHERNET"), ("c", "IP")):
        registry.register_service(NetworkService(name=name, payload=payload))
    assert [s.name for s in registry.find_services(NetworkService())] == ["a", "b", "c"]
    assert [s.name for s in registry.find_services(NetworkService(name="b"))] == ["b"]
    assert [s.name for s in registry.find_services(NetworkService(payload="IP"))] == ["a", "c"]
    assert registry.find_services(NetworkService(name="a", payload="ETHERNET")) == []


def test_services_are_persisted_and_reloaded_from_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nsm-local-services.json"
    first = Registry(state)
    service = NetworkService(name="p2p", payload="IP")
    service.matches.add(source_selector={"link": "net-0"}).routes.add(destination_selector={"device": "d2"})
    first.register_service(service)
    first.register_service(NetworkService(name="gone"))
    first.unregister_service("gone")
    assert isinstance(json.loads(state.read_text()), list)

    reloaded = Registry(state)
    assert list(reloaded.services) == ["p2p"]
    assert reloaded.services["p2p"] == service


def test_endpoints_are_not_persisted(tmp_path: Path) -> None:
    state = tmp_path / "services.json"
    first = Registry(state)
    first.register_service(NetworkService(name="p2p"))
    first.register_endpoint(entry("nse-a"))
    assert Registry(state).endpoints == {}


def test_missing_state_file_starts_empty(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "none.json")
    assert (registry.services, registry.endpoints) == ({}, {})


# --- endpoints ----------------------------------------------------------------------------------------------


def test_register_then_replace_an_endpoint_by_name(pipe_fds: Callable[[], int]) -> None:
    registry = Registry()
    old_fd, new_fd = pipe_fds(), pipe_fds()
    registry.register_endpoint(EndpointEntry(nse("nse-a", url="unix:///a"), "unix:///a", socket_fd=old_fd))
    registry.register_endpoint(EndpointEntry(nse("nse-a", url="unix:///b"), "unix:///b", socket_fd=new_fd))
    assert list(registry.endpoints) == ["nse-a"]
    assert registry.endpoints["nse-a"].record.url == "unix:///b"
    assert not is_open(old_fd)
    assert is_open(new_fd)


def test_re_registering_with_the_same_fd_keeps_it_open(pipe_fds: Callable[[], int]) -> None:
    registry = Registry()
    fd = pipe_fds()
    registry.register_endpoint(EndpointEntry(nse("nse-a"), "unix:///a", socket_fd=fd))
    registry.register_endpoint(EndpointEntry(nse("nse-a"), "unix:///a", socket_fd=fd))
    assert is_open(fd)


def test_unregister_returns_the_entry_and_closes_its_fd(pipe_fds: Callable[[], int]) -> None:
    registry = Registry()
    fd = pipe_fds()
    registry.register_endpoint(EndpointEntry(nse("nse-a"), "unix:///a", socket_fd=fd))
    removed = registry.unregister_endpoint("nse-a")
    assert removed is not None and removed.record.name == "nse-a"
    assert not is_open(fd)
    assert registry.unregister_endpoint("nse-a") is None


def test_find_endpoints_patterns() -> None:
    registry = Registry()
    registry.register_endpoint(entry("a", services=("p2p",)))
    registry.register_endpoint(entry("b", services=("p2p", "vpn")))
    registry.register_endpoint(entry("c", services=("vpn",), url="unix:///sock/c"))

    def names(pattern: NetworkServiceEndpoint) -> list[str]:
        return [e.record.name for e in registry.find_endpoints(pattern)]

    assert names(NetworkServiceEndpoint()) == ["a", "b", "c"]
    assert names(NetworkServiceEndpoint(name="b")) == ["b"]
    assert names(NetworkServiceEndpoint(network_service_names=["vpn"])) == ["b", "c"]
    assert names(NetworkServiceEndpoint(network_service_names=["p2p", "vpn"])) == ["b"]
    assert names(NetworkServiceEndpoint(url="unix:///sock/c")) == ["c"]
    assert names(NetworkServiceEndpoint(name="a", network_service_names=["vpn"])) == []


def test_expire_drops_only_registrations_that_ran_out(pipe_fds: Callable[[], int]) -> None:
    registry = Registry()
    fd = pipe_fds()
    registry.register_endpoint(EndpointEntry(nse("old", expires=100.0), "unix:///old", socket_fd=fd))
    registry.register_endpoint(entry("later", expires=200.0))
    registry.register_endpoint(entry("forever"))
    assert registry.expire(99.9) == []
    assert registry.expire(100.0) == ["old"]
    assert sorted(registry.endpoints) == ["forever", "later"]
    assert not is_open(fd)
    assert registry.expire(10_000.0) == ["later"]
    assert list(registry.endpoints) == ["forever"]


def test_close_closes_every_endpoint_fd(pipe_fds: Callable[[], int]) -> None:
    registry = Registry()
    fds = [pipe_fds(), pipe_fds()]
    for i, fd in enumerate(fds):
        registry.register_endpoint(EndpointEntry(nse(f"nse-{i}"), "unix:///x", socket_fd=fd))
    registry.close()
    assert registry.endpoints == {}
    assert not any(is_open(fd) for fd in fds)


def test_views_for_matching_use_the_labels_of_the_service() -> None:
    item = entry("nse-a", services=("p2p", "vpn"), labels={"device": "d2"}, expires=300.0)
    view = endpoint_view(item, "p2p")
    assert (view.name, dict(view.labels_for_service), view.expires) == ("nse-a", {"device": "d2"}, 300.0)
    assert endpoint_view(item, "other").labels_for_service == {}
    service = NetworkService(name="p2p")
    service.matches.add(source_selector={"link": "net-0"}, fallthrough=True).routes.add(
        destination_selector={"device": "d2"}
    )
    service.matches.add().metadata.SetInParent()
    matches = service_view(service).matches
    assert (dict(matches[0].source_selector), [dict(r) for r in matches[0].routes]) == (
        {"link": "net-0"},
        [{"device": "d2"}],
    )
    assert matches[0].fallthrough and matches[0].metadata_labels is None
    assert matches[1].metadata_labels == {}


# --- watches ------------------------------------------------------------------------------------------------


def test_find_without_watch_lists_current_endpoints_and_ends() -> None:
    async def main() -> list[str]:
        registry = Registry()
        registry.register_endpoint(entry("a"))
        registry.register_endpoint(entry("b", services=("vpn",)))
        pattern = NetworkServiceEndpoint(network_service_names=["p2p"])
        return [r.network_service_endpoint.name async for r in registry.watch_endpoints(pattern, False)]

    assert run(main) == ["a"]


def test_watch_streams_later_registrations_and_unregistrations_that_match() -> None:
    async def main() -> list[tuple[str, bool]]:
        registry = Registry()
        registry.register_endpoint(entry("a"))
        stream = registry.watch_endpoints(NetworkServiceEndpoint(network_service_names=["p2p"]), True)
        seen = await take(stream, 1)
        later = asyncio.create_task(take(stream, 3))
        await asyncio.sleep(0)
        registry.register_endpoint(entry("other", services=("vpn",)))  # does not match: not streamed
        registry.register_endpoint(entry("b"))
        registry.register_endpoint(entry("a", url="unix:///new"))
        registry.unregister_endpoint("a")
        seen += await later
        await stream.aclose()
        return [(r.network_service_endpoint.name, r.deleted) for r in seen]

    assert run(main) == [("a", False), ("b", False), ("a", False), ("a", True)]


def test_watch_sees_expiry_as_deletion() -> None:
    async def main() -> list[tuple[str, bool]]:
        registry = Registry()
        stream = registry.watch_endpoints(NetworkServiceEndpoint(name="a"), True)
        pending = asyncio.create_task(take(stream, 2))
        await asyncio.sleep(0)
        registry.register_endpoint(entry("a", expires=5.0))
        registry.expire(6.0)
        seen = await pending
        await stream.aclose()
        return [(r.network_service_endpoint.name, r.deleted) for r in seen]

    assert run(main) == [("a", False), ("a", True)]


def test_change_made_while_the_current_entries_are_streamed_is_not_lost() -> None:
    """A watcher that got `a` and `b` listed, with `b` unregistered in between, must learn about it."""

    async def main() -> list[tuple[str, bool]]:
        registry = Registry()
        registry.register_endpoint(entry("a"))
        registry.register_endpoint(entry("b"))
        stream = registry.watch_endpoints(NetworkServiceEndpoint(), True)
        seen = await take(stream, 1)
        registry.unregister_endpoint("b")
        seen += await take(stream, 1)
        if seen[-1].network_service_endpoint.name == "b" and not seen[-1].deleted:
            seen += await take(stream, 1)  # listed as current: the deletion must follow
        await stream.aclose()
        return [(r.network_service_endpoint.name, r.deleted) for r in seen]

    events = run(main)
    assert events[0] == ("a", False)
    assert events[-1] == ("b", True)


def test_service_watch_streams_registrations_and_unregistrations() -> None:
    async def main() -> list[tuple[str, str, bool]]:
        registry = Registry()
        registry.register_service(NetworkService(name="p2p", payload="IP"))
        stream = registry.watch_services(NetworkService(name="p2p"), True)
        seen = await take(stream, 1)
        later = asyncio.create_task(take(stream, 2))
        await asyncio.sleep(0)
        registry.register_service(NetworkService(name="vpn"))
        registry.register_service(NetworkService(name="p2p", payload="ETHERNET"))
        registry.unregister_service("p2p")
        seen += await later
        await stream.aclose()
        return [(r.network_service.name, r.network_service.payload, r.deleted) for r in seen]

    assert run(main) == [("p2p", "IP", False), ("p2p", "ETHERNET", False), ("p2p", "ETHERNET", True)]


def test_closing_the_registry_ends_every_watch() -> None:
    async def main() -> tuple[list[NetworkServiceEndpointResponse], list[NetworkServiceResponse]]:
        registry = Registry()
        endpoints = asyncio.create_task(_collect(registry.watch_endpoints(NetworkServiceEndpoint(), True)))
        services = asyncio.create_task(_collect(registry.watch_services(NetworkService(), True)))
        await asyncio.sleep(0)
        registry.close()
        return await endpoints, await services

    assert run(main) == ([], [])


def test_a_closed_watch_is_no_longer_fed() -> None:
    async def main() -> int:
        registry = Registry()
        stream = registry.watch_endpoints(NetworkServiceEndpoint(), True)
        pending = asyncio.create_task(take(stream, 1))
        await asyncio.sleep(0)
        registry.register_endpoint(entry("a"))
        await pending
        await stream.aclose()
        registry.register_endpoint(entry("b"))  # must not fail nor queue anywhere
        return len(registry._endpoint_watches)  # internal bookkeeping: nothing left subscribed

    assert run(main) == 0


async def _collect(stream: AsyncIterator[T]) -> list[T]:
    return [item async for item in stream]


def test_damaged_state_file_is_moved_aside_and_the_registry_starts_empty(tmp_path: Path) -> None:
    state = tmp_path / "nsm-local-services.json"
    state.write_text("{not json")
    registry = Registry(state)
    assert registry.services == {}
    assert registry.load_problem is not None and "moved to" in registry.load_problem
    assert (tmp_path / "nsm-local-services.json.damaged").read_text() == "{not json"
    assert not state.exists()


def test_an_endpoint_socket_no_longer_registered_is_reported_gone_once() -> None:
    registry = Registry()
    gone: list[str] = []
    registry.on_endpoint_gone = lambda entry, why: gone.append(f"{entry.record.url} {why}")
    registry.register_endpoint(entry("a", url="inode://1/10"))
    registry.register_endpoint(entry("a", url="inode://1/10"))  # a refresh: the same socket
    assert gone == []
    registry.register_endpoint(entry("a", url="inode://1/11"))  # restarted: a new socket, same name
    assert gone == ["inode://1/10 replaced"]
    registry.unregister_endpoint("a")
    registry.unregister_endpoint("a")
    assert gone == ["inode://1/10 replaced", "inode://1/11 unregistered"]
    registry.register_endpoint(entry("b", url="inode://1/12", expires=100.0))
    assert registry.expire(now=101.0) == ["b"]
    assert gone == ["inode://1/10 replaced", "inode://1/11 unregistered", "inode://1/12 expired"]


def test_registries_over_their_caps_refuse_new_names_as_exhausted_and_keep_what_they_have(
    monkeypatch: pytest.MonkeyPatch, pipe_fds: Callable[[], int]
) -> None:
    monkeypatch.setattr(registry_module, "MAX_SERVICES", 2)
    monkeypatch.setattr(registry_module, "MAX_ENDPOINTS", 1)
    registry = Registry()
    registry.register_service(NetworkService(name="a"))
    registry.register_service(NetworkService(name="b"))
    with pytest.raises(ExhaustedError, match="at most 2 network services"):
        registry.register_service(NetworkService(name="c"))
    registry.register_service(NetworkService(name="a", payload="IP"))  # replacing one is fine
    assert sorted(registry.services) == ["a", "b"]
    registry.register_endpoint(entry("x"))
    refused_fd = pipe_fds()
    refused = entry("y")
    refused.socket_fd = refused_fd
    with pytest.raises(ExhaustedError) as caught:
        registry.register_endpoint(refused)
    assert caught.value.grpc_status == "RESOURCE_EXHAUSTED"
    assert not is_open(refused_fd), "the refused endpoint's socket fd is closed, not leaked"
    registry.register_endpoint(entry("x", url="unix:///tmp/x2.sock"))  # re-registering a name is fine
    assert list(registry.endpoints) == ["x"]


def test_a_watcher_that_falls_too_far_behind_is_cut_off_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "MAX_WATCH_BACKLOG", 3)

    async def main() -> None:
        registry = Registry()
        registry.register_service(NetworkService(name="first"))
        slow = registry.watch_services(NetworkService(), watch=True)
        fast = registry.watch_services(NetworkService(), watch=True)
        for watcher in (slow, fast):  # the listing; from here on each is subscribed
            assert (await anext(watcher)).network_service.name == "first"
        seen_by_fast = []
        for number in range(5):
            registry.register_service(NetworkService(name=f"s{number}"))
            seen_by_fast.append((await anext(fast)).network_service.name)
        assert seen_by_fast == [f"s{n}" for n in range(5)]
        names = [(await anext(slow)).network_service.name for _ in range(3)]
        assert names == ["s0", "s1", "s2"]
        with pytest.raises(ExhaustedError, match="fell 3 changes behind"):
            await anext(slow)
        await slow.aclose()
        await fast.aclose()

    run(main)


def test_an_endpoint_registering_another_socket_under_the_same_url_replaces_the_old_one(
    pipe_fds: Callable[[], int],
) -> None:
    """A restarted endpoint's new socket file can get the inode number (so the URL) of the deleted one."""
    registry = Registry()
    gone: list[str] = []
    registry.on_endpoint_gone = lambda entry, why: gone.append(why)
    first, second = entry("a", url="inode://1/10"), entry("a", url="inode://1/10")
    old_fd, new_fd = pipe_fds(), pipe_fds()
    first.socket_fd, second.socket_fd = old_fd, new_fd
    registry.register_endpoint(first)
    registry.register_endpoint(second)
    assert gone == ["replaced"]
    assert not is_open(old_fd) and is_open(new_fd)


# --- indexes for big labs -----------------------------------------------------------------------------------


def test_endpoints_of_a_service_keep_registry_order_through_refreshes_and_changes() -> None:
    registry = Registry()
    for name in ("a", "b", "c"):
        registry.register_endpoint(entry(name, url=f"unix:///{name}"))
    registry.register_endpoint(entry("b", url="unix:///b"))  # a refresh keeps b's place
    assert [e.record.name for e in registry.endpoints_of("p2p")] == ["a", "b", "c"]
    registry.register_endpoint(entry("a", services=("other",), url="unix:///a"))  # a moves to another service
    assert [e.record.name for e in registry.endpoints_of("p2p")] == ["b", "c"]
    assert [e.record.name for e in registry.endpoints_of("other")] == ["a"]
    registry.unregister_endpoint("c")
    assert [e.record.name for e in registry.endpoints_of("p2p")] == ["b"]
    assert registry.has_url("unix:///b") and not registry.has_url("unix:///c")
    before = registry.endpoints_version
    registry.register_endpoint(entry("b", url="unix:///b"))
    assert registry.endpoints_version != before, "a refresh changes what selection sees (its expiry)"


def test_a_change_reaches_the_watches_of_its_name_and_the_unnamed_ones_only() -> None:
    async def main() -> list[list[str]]:
        registry = Registry()
        patterns = (
            NetworkServiceEndpoint(name="a"),
            NetworkServiceEndpoint(name="b"),
            NetworkServiceEndpoint(),
        )
        streams = [registry.watch_endpoints(pattern, True) for pattern in patterns]
        pending = [asyncio.create_task(take(stream, n)) for stream, n in zip(streams, (2, 1, 3), strict=True)]
        await asyncio.sleep(0)  # every watch subscribed, nothing registered yet
        registry.register_endpoint(entry("a"))
        registry.register_endpoint(entry("b"))
        registry.unregister_endpoint("a")
        seen = [[r.network_service_endpoint.name for r in await task] for task in pending]
        for stream in streams:
            await stream.aclose()
        return seen

    assert run(main) == [["a", "a"], ["b"], ["a", "b", "a"]]
