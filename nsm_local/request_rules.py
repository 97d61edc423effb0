"""What nsm-local checks and derives from a Request before it does anything: the KERNEL mechanism, the
client's interface name, the netns URLs, the label map. Pure rules, no I/O."""

from __future__ import annotations

from collections.abc import Callable

from nsm_sdk._proto.networkservice.connection_pb2 import Connection, Mechanism
from nsm_sdk._proto.networkservice.networkservice_pb2 import NetworkServiceRequest
from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.ifname import generate_interface_name, interface_name_problem
from nsm_sdk.protocol.labels import label_map_problem
from nsm_sdk.transport.urls import is_inode_url, parse_inode_url

KERNEL = "KERNEL"


def kernel_mechanism(request: NetworkServiceRequest) -> Mechanism:
    """The mechanism to use: a refresh's own (with the original netns URL), else the first KERNEL one
    offered; ProtocolError when none is."""
    conn = request.connection
    if conn.HasField("mechanism") and conn.mechanism.type == KERNEL:
        chosen = Mechanism()
        chosen.CopyFrom(conn.mechanism)
        for preference in request.mechanism_preferences:  # a refresh re-sends the original preference
            if preference.type == KERNEL and preference.parameters.get("inodeURL"):
                chosen.parameters["inodeURL"] = preference.parameters["inodeURL"]
        return chosen
    for preference in request.mechanism_preferences:
        if preference.type == KERNEL:
            chosen = Mechanism()
            chosen.CopyFrom(preference)
            chosen.cls = chosen.cls or "LOCAL"
            return chosen
    offered = ", ".join(p.type for p in request.mechanism_preferences) or "none"
    raise ProtocolError(
        f"cannot support any of the requested mechanisms ({offered}): nsm-local forwards KERNEL"
    )


def client_interface_name(
    conn: Connection, mechanism: Mechanism, random_bytes: Callable[[int], bytes]
) -> str:
    """The `name` the client asked for (one the kernel takes), else one made up like NSM's."""
    name = mechanism.parameters.get("name") or generate_interface_name(conn.network_service, random_bytes)
    problem = interface_name_problem(name)
    if problem is not None:
        raise ProtocolError(f"mechanism parameter name={name!r}: {problem}")
    return name


def inode_of(url: str, who: str) -> tuple[int, int]:
    """(dev, ino) of a netns `inode://` URL; ProtocolError for anything else."""
    try:
        if is_inode_url(url):
            return parse_inode_url(url)
    except ValueError as exc:  # urlsplit's own complaint ("Invalid IPv6 URL")
        raise ProtocolError(f"{who} netns URL {url!r}: {exc}") from None
    raise ProtocolError(
        f"{who} netns URL {url!r}: must be inode://<dev>/<ino> with the netns fd passed on the same "
        "connection (grpcfd); nsm-local never resolves another process's file:// path"
    )


def check_request(request: NetworkServiceRequest) -> None:
    """Malformed before anything looks at it: an absurd label map (`label_map_problem`)."""
    problem = label_map_problem(request.connection.labels)
    if problem is not None:
        raise ProtocolError(f"connection labels: {problem}")
