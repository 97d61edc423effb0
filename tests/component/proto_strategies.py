"""Hypothesis strategies for protobuf messages, built from their descriptors (any message of nsm_sdk._proto).

Strings mix NSM-shaped pieces (ids, inode URLs, mechanism types) with arbitrary text; numbers cover their
whole range; maps and repeated fields stay small (sizes are the business of the hand-built cases); nesting
stops at `depth`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

M = TypeVar("M", bound=Message)

NSM_TEXT = [
    "",
    "KERNEL",
    "MEMIF",
    "LOCAL",
    "REMOTE",
    "inode://1/2",
    "inode://[x/1",
    "file:///proc/self/ns/net",
    "unix:///x",
    "p2p",
    "nsc",
    "nsc-0",
    "nsmgr-local",
    "forwarder-local",
    "name",
    "inodeURL",
    "peerif",
    "eth1",
    "link",
    "net-0",
    "a" * 300,
    "\x00",
    "\u0663",
    "10.0.0.1/32",
    "::/0",
]

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

text = st.one_of(st.sampled_from(NSM_TEXT), st.text(max_size=12))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=False, width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: unknown numbers too
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    low, high = _INT_RANGES[kind]
    return st.integers(low, high)


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


@st.composite
def message_of(draw: st.DrawFn, descriptor: Descriptor, depth: int = 3) -> dict[str, Any]:
    """A dict of field values for `descriptor` (see `build`); fields are set or left out at random."""
    values: dict[str, Any] = {}
    for field in descriptor.fields:
        if depth <= 0 and field.message_type is not None:
            continue
        if not draw(st.booleans()):
            continue
        if _is_map(field):
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            value = (
                message_of(value_field.message_type, depth - 1)
                if value_field.message_type is not None
                else _scalar(value_field)
            )
            values[field.name] = draw(st.dictionaries(_scalar(key_field), value, max_size=3))
        elif field.is_repeated:
            item = message_of(field.message_type, depth - 1) if field.message_type else _scalar(field)
            values[field.name] = draw(st.lists(item, max_size=4))
        elif field.message_type is not None:
            values[field.name] = draw(message_of(field.message_type, depth - 1))
        else:
            values[field.name] = draw(_scalar(field))
    return values


def fill(message: Message, values: dict[str, Any]) -> None:
    """Write `values` (from `message_of`) into `message`."""
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if _is_map(field):
            for key, item in value.items():
                if isinstance(item, dict):
                    fill(target[key], item)
                else:
                    target[key] = item
        elif field.is_repeated:
            for item in value:
                if isinstance(item, dict):
                    fill(target.add(), item)
                else:
                    target.append(item)
        elif field.message_type is not None:
            target.SetInParent()
            fill(target, value)
        else:
            setattr(message, name, value)


def messages(cls: type[M], base: M | None = None) -> st.SearchStrategy[M]:
    """Messages of `cls` from its schema; with `base`, also `base` with generated fields merged in (what
    reaches deeper than a random message, which the first check refuses)."""

    def build(values: dict[str, Any], merge: bool) -> M:
        message = cls()
        if merge and base is not None:
            message.CopyFrom(base)
        generated = cls()
        fill(generated, values)
        message.MergeFrom(generated)
        return message

    return st.builds(build, message_of(cls.DESCRIPTOR), st.booleans())
