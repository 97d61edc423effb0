"""The generated NSM v1 / SPIFFE wire API matches the contract in nsm-v1-protocol.md §1 and §3.1.

The expected tables below are plain data transcribed from that document (and, where the document does not
list a message or method, from upstream networkservicemesh/api at ad7e9c4 and spiffe/go-spiffe at e9973f6),
so a drifting proto file makes these tests fail. The NSM protos are ours (proto/); the SPIFFE Workload API
messages are py-spiffe's (`spiffe._proto`, pinned), which we use as client and, in nsm-local, as server: the
same check holds it to the wire contract. Type notation: a scalar name, a full message/enum name
("enum X" for enums), "repeated T" or "map<K, V>".
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, cast

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import Default as default_pool
from spiffe._proto import workload_pb2, workload_pb2_grpc  # type: ignore[attr-defined]

from nsm_sdk._proto.networkservice import (
    connection_pb2,
    connection_pb2_grpc,
    connectioncontext_pb2,
    networkservice_pb2,
    networkservice_pb2_grpc,
)
from nsm_sdk._proto.registry import registry_pb2, registry_pb2_grpc

UNARY = "unary"
SERVER_STREAM = "server stream"

# full method name -> (request type, response type, streaming kind); nsm-v1-protocol.md §1.2, §3.1
EXPECTED_METHODS: dict[str, tuple[str, str, str]] = {
    "/networkservice.NetworkService/Request": (
        "networkservice.NetworkServiceRequest",
        "connection.Connection",
        UNARY,
    ),
    "/networkservice.NetworkService/Close": ("connection.Connection", "google.protobuf.Empty", UNARY),
    "/connection.MonitorConnection/MonitorConnections": (
        "connection.MonitorScopeSelector",
        "connection.ConnectionEvent",
        SERVER_STREAM,
    ),
    "/registry.NetworkServiceEndpointRegistry/Register": (
        "registry.NetworkServiceEndpoint",
        "registry.NetworkServiceEndpoint",
        UNARY,
    ),
    "/registry.NetworkServiceEndpointRegistry/Find": (
        "registry.NetworkServiceEndpointQuery",
        "registry.NetworkServiceEndpointResponse",
        SERVER_STREAM,
    ),
    "/registry.NetworkServiceEndpointRegistry/Unregister": (
        "registry.NetworkServiceEndpoint",
        "google.protobuf.Empty",
        UNARY,
    ),
    "/registry.NetworkServiceRegistry/Register": (
        "registry.NetworkService",
        "registry.NetworkService",
        UNARY,
    ),
    "/registry.NetworkServiceRegistry/Find": (
        "registry.NetworkServiceQuery",
        "registry.NetworkServiceResponse",
        SERVER_STREAM,
    ),
    "/registry.NetworkServiceRegistry/Unregister": (
        "registry.NetworkService",
        "google.protobuf.Empty",
        UNARY,
    ),
    # SPIFFE Workload API: no proto package, so no "package." prefix
    "/SpiffeWorkloadAPI/FetchX509SVID": ("X509SVIDRequest", "X509SVIDResponse", SERVER_STREAM),
    "/SpiffeWorkloadAPI/FetchX509Bundles": ("X509BundlesRequest", "X509BundlesResponse", SERVER_STREAM),
    "/SpiffeWorkloadAPI/FetchJWTSVID": ("JWTSVIDRequest", "JWTSVIDResponse", UNARY),
    "/SpiffeWorkloadAPI/FetchJWTBundles": ("JWTBundlesRequest", "JWTBundlesResponse", SERVER_STREAM),
    "/SpiffeWorkloadAPI/ValidateJWTSVID": ("ValidateJWTSVIDRequest", "ValidateJWTSVIDResponse", UNARY),
}

Fields = dict[str, tuple[int, str]]

# nsm-v1-protocol.md §1.3
NETWORKSERVICE_FIELDS: dict[str, Fields] = {
    "networkservice.NetworkServiceRequest": {
        "connection": (1, "connection.Connection"),
        "mechanism_preferences": (2, "repeated connection.Mechanism"),
    },
}

CONNECTION_FIELDS: dict[str, Fields] = {
    "connection.Connection": {
        "id": (1, "string"),
        "network_service": (2, "string"),
        "mechanism": (3, "connection.Mechanism"),
        "context": (4, "connectioncontext.ConnectionContext"),
        "labels": (5, "map<string, string>"),
        "path": (6, "connection.Path"),
        "network_service_endpoint_name": (7, "string"),
        "payload": (8, "string"),
        "state": (9, "enum connection.State"),
    },
    "connection.Mechanism": {
        "cls": (1, "string"),
        "type": (2, "string"),
        "parameters": (3, "map<string, string>"),
    },
    "connection.Path": {
        "index": (1, "uint32"),
        "path_segments": (2, "repeated connection.PathSegment"),
    },
    "connection.PathSegment": {
        "name": (1, "string"),
        "id": (2, "string"),
        "token": (3, "string"),
        "expires": (4, "google.protobuf.Timestamp"),
        "metrics": (5, "map<string, string>"),
    },
    "connection.ConnectionEvent": {
        "type": (1, "enum connection.ConnectionEventType"),
        "connections": (2, "map<string, connection.Connection>"),
    },
    "connection.MonitorScopeSelector": {
        "path_segments": (1, "repeated connection.PathSegment"),
        "network_services": (2, "repeated string"),
    },
}

CONNECTIONCONTEXT_FIELDS: dict[str, Fields] = {
    "connectioncontext.ConnectionContext": {
        "ip_context": (1, "connectioncontext.IPContext"),
        "dns_context": (2, "connectioncontext.DNSContext"),
        "ethernet_context": (3, "connectioncontext.EthernetContext"),
        "extra_context": (4, "map<string, string>"),
        "MTU": (5, "uint32"),
    },
    "connectioncontext.IPContext": {
        "src_ip_addrs": (1, "repeated string"),
        "dst_ip_addrs": (2, "repeated string"),
        "src_ip_required": (3, "bool"),
        "dst_ip_required": (4, "bool"),
        "src_routes": (5, "repeated connectioncontext.Route"),
        "dst_routes": (6, "repeated connectioncontext.Route"),
        "excluded_prefixes": (7, "repeated string"),
        "ip_neighbors": (8, "repeated connectioncontext.IpNeighbor"),
        "extra_prefix_request": (9, "repeated connectioncontext.ExtraPrefixRequest"),
        "extra_prefixes": (10, "repeated string"),
        "policies": (11, "repeated connectioncontext.PolicyRoute"),
    },
    "connectioncontext.Route": {
        "prefix": (1, "string"),
        "nextHop": (2, "string"),
    },
    "connectioncontext.DNSContext": {
        "configs": (1, "repeated connectioncontext.DNSConfig"),
    },
    "connectioncontext.DNSConfig": {
        "dns_server_ips": (1, "repeated string"),
        "search_domains": (2, "repeated string"),
    },
    "connectioncontext.EthernetContext": {
        "src_mac": (1, "string"),
        "dst_mac": (2, "string"),
        "vlan_tag": (3, "int32"),
    },
    # not tabulated in the doc; from upstream connectioncontext.proto
    "connectioncontext.IpNeighbor": {
        "ip": (1, "string"),
        "hardware_address": (2, "string"),
    },
    "connectioncontext.IpFamily": {
        "family": (1, "enum connectioncontext.IpFamily.Family"),
    },
    "connectioncontext.ExtraPrefixRequest": {
        "addr_family": (1, "connectioncontext.IpFamily"),
        "prefix_len": (2, "uint32"),
        "required_number": (3, "uint32"),
        "requested_number": (4, "uint32"),
    },
    "connectioncontext.PolicyRoute": {
        "from": (1, "string"),
        "proto": (2, "string"),
        "dst_port": (3, "string"),
        "src_port": (4, "string"),
        "routes": (5, "repeated connectioncontext.Route"),
    },
}

REGISTRY_FIELDS: dict[str, Fields] = {
    "registry.NetworkServiceEndpoint": {
        "name": (1, "string"),
        "network_service_names": (2, "repeated string"),
        "network_service_labels": (3, "map<string, registry.NetworkServiceLabels>"),
        "url": (4, "string"),
        "expiration_time": (5, "google.protobuf.Timestamp"),
        "initial_registration_time": (6, "google.protobuf.Timestamp"),
        "path_ids": (7, "repeated string"),
    },
    "registry.NetworkServiceLabels": {
        "labels": (1, "map<string, string>"),
    },
    "registry.NetworkService": {
        "name": (1, "string"),
        "payload": (2, "string"),
        "matches": (3, "repeated registry.Match"),
        "path_ids": (4, "repeated string"),
    },
    "registry.Match": {
        "source_selector": (1, "map<string, string>"),
        "routes": (2, "repeated registry.Destination"),
        "fallthrough": (3, "bool"),
        "metadata": (4, "registry.Metadata"),
    },
    "registry.Metadata": {
        "labels": (1, "map<string, string>"),
    },
    "registry.Destination": {
        "destination_selector": (1, "map<string, string>"),
        "weight": (2, "uint32"),
    },
    "registry.NetworkServiceEndpointQuery": {
        "network_service_endpoint": (1, "registry.NetworkServiceEndpoint"),
        "watch": (2, "bool"),
    },
    "registry.NetworkServiceQuery": {
        "network_service": (1, "registry.NetworkService"),
        "watch": (2, "bool"),
    },
    "registry.NetworkServiceEndpointResponse": {
        "network_service_endpoint": (1, "registry.NetworkServiceEndpoint"),
        "deleted": (2, "bool"),
    },
    "registry.NetworkServiceResponse": {
        "network_service": (1, "registry.NetworkService"),
        "deleted": (2, "bool"),
    },
}

# nsm-v1-protocol.md §3.1
SPIFFE_FIELDS: dict[str, Fields] = {
    "X509SVIDRequest": {},
    "X509SVIDResponse": {
        "svids": (1, "repeated X509SVID"),
        "crl": (2, "repeated bytes"),
        "federated_bundles": (3, "map<string, bytes>"),
    },
    "X509SVID": {
        "spiffe_id": (1, "string"),
        "x509_svid": (2, "bytes"),
        "x509_svid_key": (3, "bytes"),
        "bundle": (4, "bytes"),
        "hint": (5, "string"),
    },
}

EXPECTED_ENUMS: dict[str, dict[str, int]] = {
    "connection.State": {"UP": 0, "DOWN": 1, "REFRESH_REQUESTED": 2, "RESELECT_REQUESTED": 3},
    "connection.ConnectionEventType": {"INITIAL_STATE_TRANSFER": 0, "UPDATE": 1, "DELETE": 2},
    "connectioncontext.IpFamily.Family": {"IPV4": 0, "IPV6": 1},
}

_SCALAR_NAMES = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
}


def _type_of(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message = field.message_type
        assert message is not None
        if message.GetOptions().map_entry:
            key, value = message.fields_by_name["key"], message.fields_by_name["value"]
            return f"map<{_type_of(key)}, {_type_of(value)}>"
        name = message.full_name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        name = f"enum {field.enum_type.full_name}"
    else:
        name = _SCALAR_NAMES[field.type]
    return f"repeated {name}" if field.is_repeated else name


def _fields_of(full_name: str) -> Fields:
    message = default_pool().FindMessageTypeByName(full_name)
    return {field.name: (field.number, _type_of(field)) for field in message.fields}


def _methods_of(service: ServiceDescriptor) -> dict[str, tuple[str, str, str]]:
    prefix = f"{service.file.package}." if service.file.package else ""
    methods = {}
    for method in service.methods:
        assert not method.client_streaming, "no NSM or SPIFFE method streams requests"
        kind = SERVER_STREAM if method.server_streaming else UNARY
        path = f"/{prefix}{service.name}/{method.name}"
        methods[path] = (method.input_type.full_name, method.output_type.full_name, kind)
    return methods


GENERATED_FILES: list[ModuleType] = [
    connectioncontext_pb2,
    connection_pb2,
    networkservice_pb2,
    registry_pb2,
    workload_pb2,
]


def test_generated_services_expose_exactly_the_nsm_and_spiffe_methods() -> None:
    actual: dict[str, tuple[str, str, str]] = {}
    for module in GENERATED_FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            actual.update(_methods_of(service))
    assert actual == EXPECTED_METHODS


FIELD_TABLES: dict[str, dict[str, Fields]] = {
    "networkservice": NETWORKSERVICE_FIELDS,
    "connection": CONNECTION_FIELDS,
    "connectioncontext": CONNECTIONCONTEXT_FIELDS,
    "registry": REGISTRY_FIELDS,
    "spiffe": SPIFFE_FIELDS,
}


@pytest.mark.parametrize("proto_file", sorted(FIELD_TABLES))
def test_message_fields_match_nsm_v1_wire_numbers_and_types(proto_file: str) -> None:
    for full_name, expected in FIELD_TABLES[proto_file].items():
        assert _fields_of(full_name) == expected, full_name


def test_connection_fields_match_nsm_v1_wire_numbers() -> None:
    # the most used message, kept explicit so a failure names it directly
    assert _fields_of("connection.Connection") == CONNECTION_FIELDS["connection.Connection"]


def test_every_nsm_message_has_an_expected_field_table() -> None:
    tabled = {*NETWORKSERVICE_FIELDS, *CONNECTION_FIELDS, *CONNECTIONCONTEXT_FIELDS, *REGISTRY_FIELDS}
    generated = {
        message.full_name
        for module in (connectioncontext_pb2, connection_pb2, networkservice_pb2, registry_pb2)
        for message in module.DESCRIPTOR.message_types_by_name.values()
    }
    assert generated == tabled


@pytest.mark.parametrize("full_name", sorted(EXPECTED_ENUMS))
def test_enum_values_match_nsm_v1_numbers(full_name: str) -> None:
    enum = default_pool().FindEnumTypeByName(full_name)
    assert {value.name: value.number for value in enum.values} == EXPECTED_ENUMS[full_name]


def test_proto_packages_and_descriptor_file_names_are_unique_in_the_pool() -> None:
    # §1.1 packages; §12 item 10: directory-qualified file names avoid clashes with other connection.proto
    files: dict[str, FileDescriptor] = {module.__name__: module.DESCRIPTOR for module in GENERATED_FILES}
    assert {name: (fd.name, fd.package) for name, fd in files.items()} == {
        connectioncontext_pb2.__name__: ("networkservice/connectioncontext.proto", "connectioncontext"),
        connection_pb2.__name__: ("networkservice/connection.proto", "connection"),
        networkservice_pb2.__name__: ("networkservice/networkservice.proto", "networkservice"),
        registry_pb2.__name__: ("registry/registry.proto", "registry"),
        workload_pb2.__name__: ("spiffe/_proto/workload.proto", ""),
    }


def test_request_encodes_to_the_bytes_a_go_peer_expects() -> None:
    # hand-assembled wire bytes: field 1 (connection, LEN) {field 1 (id, LEN) "a"; field 9 (state, VARINT) 1},
    # then field 2 (mechanism_preferences, LEN) {field 2 (type, LEN) "KERNEL"}
    request = networkservice_pb2.NetworkServiceRequest(
        connection=connection_pb2.Connection(id="a", state=connection_pb2.DOWN),
        mechanism_preferences=[connection_pb2.Mechanism(type="KERNEL")],
    )
    expected = b"\x0a\x05" + b"\x0a\x01a" + b"\x48\x01" + b"\x12\x08" + b"\x12\x06KERNEL"
    assert request.SerializeToString(deterministic=True) == expected
    assert networkservice_pb2.NetworkServiceRequest.FromString(expected) == request


class _RecordingChannel:
    """Stands in for grpc.Channel and records which multicallable each stub attribute asks for."""

    def __init__(self) -> None:
        self.calls: dict[str, str] = {}

    def _record(self, kind: str, path: str) -> object:
        self.calls[path] = kind
        return object()

    def unary_unary(self, path: str, **_: Any) -> object:
        return self._record(UNARY, path)

    def unary_stream(self, path: str, **_: Any) -> object:
        return self._record(SERVER_STREAM, path)

    def stream_unary(self, path: str, **_: Any) -> object:
        return self._record("client stream", path)

    def stream_stream(self, path: str, **_: Any) -> object:
        return self._record("bidi stream", path)


def test_generated_client_stubs_call_the_nsm_and_spiffe_method_paths() -> None:
    recorder = _RecordingChannel()
    channel = cast(grpc.Channel, recorder)
    networkservice_pb2_grpc.NetworkServiceStub(channel)
    connection_pb2_grpc.MonitorConnectionStub(channel)
    registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
    registry_pb2_grpc.NetworkServiceRegistryStub(channel)
    workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    assert recorder.calls == {path: kind for path, (_, _, kind) in EXPECTED_METHODS.items()}
