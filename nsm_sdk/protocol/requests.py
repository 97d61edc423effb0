"""The client's Requests: first, refresh and reselect (protocol doc §5.2-§5.4). Pure message building."""

from __future__ import annotations

from collections.abc import Mapping

from nsm_sdk._proto.networkservice.connection_pb2 import Connection, Mechanism, State
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest

KERNEL = "KERNEL"
LOCAL = "LOCAL"


def connection_id(client_name: str, index: int) -> str:
    """cmd-nsc's id for the i-th requested service: `<NSM_NAME>-<i>` (§4.2)."""
    return f"{client_name}-{index}"


def kernel_preference(interface_name: str, netns_url: str) -> Mechanism:
    return Mechanism(cls=LOCAL, type=KERNEL, parameters={"name": interface_name, "inodeURL": netns_url})


def first_request(
    client_name: str, conn_id: str, network_service: str, labels: Mapping[str, str], preference: Mechanism
) -> NetworkServiceRequest:
    conn = Connection(id=conn_id, network_service=network_service, labels=dict(labels), state=State.UP)
    conn.path.index = 0
    conn.path.path_segments.add(name=client_name, id=conn_id)
    conn.context.ip_context.SetInParent()
    conn.context.dns_context.SetInParent()
    request = NetworkServiceRequest(connection=conn)
    request.mechanism_preferences.append(preference)
    return request


def refresh_request(last_reply: Connection, preference: Mechanism) -> NetworkServiceRequest:
    """Re-send the last reply whole (path with old tokens, mechanism, context, chosen endpoint), state UP,
    index 0, plus the original preferences (§5.3). Keeping the endpoint name pins the same NSE."""
    conn = Connection()
    conn.CopyFrom(last_reply)
    conn.state = State.UP
    conn.path.index = 0
    conn.id = conn.path.path_segments[0].id
    if conn.HasField("mechanism") and conn.mechanism.type == KERNEL:
        conn.mechanism.parameters["inodeURL"] = preference.parameters["inodeURL"]
    request = NetworkServiceRequest(connection=conn)
    request.mechanism_preferences.append(preference)
    return request


def reselect_request(last_reply: Connection, preference: Mechanism) -> NetworkServiceRequest:
    """Ask for a new endpoint: mechanism and endpoint name cleared, state RESELECT_REQUESTED (§5.4)."""
    request = refresh_request(last_reply, preference)
    request.connection.ClearField("mechanism")
    request.connection.network_service_endpoint_name = ""
    request.connection.state = State.RESELECT_REQUESTED
    return request


def own_connection_in(event_connections: Mapping[str, Connection], conn_id: str) -> Connection | None:
    """Our connection in a monitor event from the manager, whose view has its own index and id (§5.4):
    match by the first path segment's id."""
    for conn in event_connections.values():
        segments = conn.path.path_segments
        if len(segments) > 0 and segments[0].id == conn_id:
            return conn
    return None
