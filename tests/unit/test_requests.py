"""The client's Requests: first, refresh and reselect (protocol doc §5.2-§5.4)."""

from __future__ import annotations

from nsm_sdk._proto.networkservice.connection_pb2 import Connection, Mechanism, State
from nsm_sdk.protocol.gotime import set_timestamp
from nsm_sdk.protocol.requests import (
    connection_id,
    first_request,
    kernel_preference,
    own_connection_in,
    refresh_request,
    reselect_request,
)

NETNS = "inode://4/4026531840"


def preference() -> Mechanism:
    return kernel_preference("eth1", NETNS)


def last_reply() -> Connection:
    """What nsmgr returns to the client (§5.2 "Reply"): full path, index 0, our id."""
    reply = Connection(id="nsc-0", network_service="p2p", network_service_endpoint_name="nse-a",
                       payload="ETHERNET", labels={"link": "net-0"}, state=State.UP)
    for i, (name, seg_id) in enumerate((("nsc", "nsc-0"), ("nsmgr", "m"), ("fwd", "f"), ("nse", "e"))):
        segment = reply.path.path_segments.add(name=name, id=seg_id, token=f"jwt-{i}")
        set_timestamp(segment.expires, 1_800_000_000.0 + i)
    reply.path.index = 0
    reply.mechanism.CopyFrom(Mechanism(cls="LOCAL", type="KERNEL",
                                       parameters={"name": "eth1", "inodeURL": "file:///proc/1/fd/9"}))
    reply.context.ip_context.src_ip_addrs.append("169.254.0.1/32")
    reply.context.ip_context.dst_ip_addrs.append("169.254.0.0/32")
    reply.context.ip_context.src_routes.add(prefix="169.254.0.0/32")
    return reply


def test_connection_id_is_name_dash_index_like_cmd_nsc() -> None:
    assert connection_id("nsc", 0) == "nsc-0"
    assert connection_id("device-1", 3) == "device-1-3"


def test_kernel_preference_names_interface_and_netns() -> None:
    mechanism = preference()
    assert (mechanism.cls, mechanism.type) == ("LOCAL", "KERNEL")
    assert dict(mechanism.parameters) == {"name": "eth1", "inodeURL": NETNS}


def test_first_request_has_the_exact_shape_of_section_5_2() -> None:
    request = first_request("nsc", "nsc-0", "p2p", {"link": "net-0"}, preference())
    conn = request.connection
    assert conn.id == "nsc-0"
    assert conn.network_service == "p2p"
    assert dict(conn.labels) == {"link": "net-0"}
    assert conn.path.index == 0
    assert [(s.name, s.id, s.token, s.HasField("expires")) for s in conn.path.path_segments] == [
        ("nsc", "nsc-0", "", False)
    ]
    assert conn.state == State.UP
    assert not conn.HasField("mechanism")
    assert conn.payload == "" and conn.network_service_endpoint_name == ""
    assert conn.context.HasField("ip_context") and conn.context.HasField("dns_context")
    assert list(conn.context.ip_context.src_ip_addrs) == []
    assert list(request.mechanism_preferences) == [preference()]


def test_first_request_copies_the_labels() -> None:
    labels = {"link": "net-0"}
    request = first_request("nsc", "nsc-0", "p2p", labels, preference())
    labels["link"] = "changed"
    assert request.connection.labels["link"] == "net-0"


def test_refresh_resends_the_whole_last_reply_at_index_zero() -> None:
    reply = last_reply()
    request = refresh_request(reply, preference())
    conn = request.connection
    assert conn.path == reply.path
    assert conn.context == reply.context
    assert conn.network_service_endpoint_name == "nse-a"
    assert (conn.payload, dict(conn.labels)) == ("ETHERNET", {"link": "net-0"})
    assert (conn.path.index, conn.id, conn.state) == (0, "nsc-0", State.UP)
    assert list(request.mechanism_preferences) == [preference()]


def test_refresh_forces_state_up_index_zero_and_our_own_id() -> None:
    reply = last_reply()
    reply.state = State.DOWN
    reply.path.index = 1
    reply.id = "m"
    conn = refresh_request(reply, preference()).connection
    assert (conn.state, conn.path.index, conn.id) == (State.UP, 0, "nsc-0")


def test_refresh_puts_our_netns_url_back_into_the_kernel_mechanism() -> None:
    conn = refresh_request(last_reply(), preference()).connection
    assert conn.mechanism.type == "KERNEL"
    assert conn.mechanism.parameters["inodeURL"] == NETNS
    assert conn.mechanism.parameters["name"] == "eth1"


def test_refresh_leaves_the_last_reply_untouched() -> None:
    reply = last_reply()
    refresh_request(reply, preference())
    assert reply == last_reply()


def test_reselect_clears_mechanism_and_endpoint_and_asks_for_reselection() -> None:
    request = reselect_request(last_reply(), preference())
    conn = request.connection
    assert not conn.HasField("mechanism")
    assert conn.network_service_endpoint_name == ""
    assert conn.state == State.RESELECT_REQUESTED
    assert (conn.id, conn.path.index) == ("nsc-0", 0)
    assert conn.path == last_reply().path
    assert list(request.mechanism_preferences) == [preference()]


def test_own_connection_is_found_by_the_first_segment_id_in_a_manager_event() -> None:
    mine = last_reply()
    mine.path.index, mine.id = 1, "m"
    other = Connection(id="m2")
    other.path.path_segments.add(name="nsc", id="nsc-1")
    bare = Connection(id="bare")
    found = own_connection_in({"bare": bare, "m2": other, "m": mine}, "nsc-0")
    assert found is mine
    assert own_connection_in({"m2": other, "bare": bare}, "nsc-0") is None
