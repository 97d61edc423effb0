"""The registry path carried in gRPC metadata key `path` (protocol doc §1.4, §3.5).

Go encodes it as JSON `{"Index":N,"PathSegments":[{"name":..,"id":..,"token":..,"expires":..}]}`:
capitalised top-level keys, lower-case segment keys; Go decodes case-insensitively. A registry server
(nsm-local plays nsmgr here) updates it like a connection path: the caller's segment gets the caller's
metadata token, its own segment is appended or replaced, and the reply header carries it back with the
index reset to the caller's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

PATH_METADATA_KEY = "path"


@dataclass(frozen=True, slots=True)
class RegistrySegment:
    name: str = ""
    id: str = ""
    token: str = ""
    expires: str = ""  # RFC3339Nano text, as Go's JSON encoding of a Timestamp would give


@dataclass(frozen=True, slots=True)
class RegistryPath:
    index: int = 0
    segments: tuple[RegistrySegment, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        segments: list[dict[str, str]] | None = None
        if self.segments:
            segments = [
                {k: v for k, v in (("name", s.name), ("id", s.id), ("token", s.token), ("expires", s.expires))
                 if v}
                for s in self.segments
            ]
        return json.dumps({"Index": self.index, "PathSegments": segments}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RegistryPath:
        """Parse like Go's encoding/json: keys are matched case-insensitively, null reads as empty.

        Raises ValueError for anything Go could not decode into its Path (not an object, an index that
        is not an unsigned integer, segments that are not a list of objects).
        """
        raw = json.loads(text) if text.strip() else {}
        if not isinstance(raw, dict):
            raise ValueError("registry path metadata is not a JSON object")
        top = {str(k).lower(): v for k, v in raw.items()}
        index = top.get("index") or 0
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 2**32:
            raise ValueError(f"registry path Index {index!r} is not an unsigned 32-bit integer")
        items = top.get("pathsegments") or []
        if not isinstance(items, list):
            raise ValueError("registry path PathSegments is not a list")
        segments = []
        for item in items:
            if item is None:
                item = {}
            if not isinstance(item, dict):
                raise ValueError(f"registry path segment {item!r} is not a JSON object")
            seg: dict[str, Any] = {str(k).lower(): v for k, v in item.items()}
            segments.append(RegistrySegment(
                name=str(seg.get("name") or ""), id=str(seg.get("id") or ""),
                token=str(seg.get("token") or ""), expires=str(seg.get("expires") or ""),
            ))
        return cls(index=index, segments=tuple(segments))

    def server_update(self, caller_token: str, own: RegistrySegment) -> tuple[RegistryPath, int]:
        """What a registry server does on Register/Unregister (§3.5); returns (new path, caller index).

        Empty path: `[caller, own]` at index 1. Otherwise the caller's segment gets the metadata token and
        our segment at index+1 is appended or replaced. An index past the last segment is Go's error
        (ValueError).
        """
        if not self.segments:
            return RegistryPath(index=1, segments=(RegistrySegment(token=caller_token), own)), 0
        caller_index = self.index
        if caller_index + 1 > len(self.segments):
            raise ValueError(f"Path.Index+1=={caller_index + 1} should be less or equal "
                             f"len(Path.PathSegments)=={len(self.segments)}")
        segments = list(self.segments)
        segments[caller_index] = replace(segments[caller_index], token=caller_token)
        if caller_index + 1 < len(segments):
            segments[caller_index + 1] = own
        else:
            segments.append(own)
        return RegistryPath(index=caller_index + 1, segments=tuple(segments)), caller_index

    def with_index(self, index: int) -> RegistryPath:
        return replace(self, index=index)
