"""Connection path rules: updatepath, token slots, trimming and expiry (protocol doc §4.1-§4.4).

All functions mutate the given `Connection` in place, like the Go chain elements they mirror. Connection ids
for new segments come from an injected `new_id` (uuid4 in production, a counter in tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from nsm_sdk._proto.networkservice.connection_pb2 import Connection, PathSegment
from nsm_sdk.protocol.errors import ProtocolError
from nsm_sdk.protocol.gotime import set_timestamp, timestamp_to_epoch


def new_uuid() -> str:
    """Default id source: a random UUIDv4 string, as Go's `uuid.New().String()`."""
    return str(uuid.uuid4())


def update_path(conn: Connection, name: str, new_id: Callable[[], str] = new_uuid) -> int:
    """Step onto the path as `name` (Go updatePath, §4.1). Returns the index to restore afterwards.

    * empty path: index 0, id kept (or generated when empty), one segment `{name, id}`; returns 0;
    * current segment already ours (a refresh): id := its id; returns the current index;
    * otherwise a new hop: the current segment must carry `conn.id`; the next segment is reused when it
      has our name, renamed with a fresh id when it has another name, appended when missing; returns
      the caller's (old) index.

    Raises ProtocolError with Go's messages when the index is out of range or the id does not match;
    nothing is changed in that case.
    """
    path = conn.path
    segments = path.path_segments
    if len(segments) == 0:
        path.index = 0
        if not conn.id:
            conn.id = new_id()
        segments.add(name=name, id=conn.id)
        return 0

    index = path.index
    if index < len(segments) and segments[index].name == name:
        conn.id = segments[index].id
        return index

    next_index = index + 1
    if next_index > len(segments):
        raise ProtocolError(
            f"Path.Index+1=={next_index} should be less or equal len(Path.PathSegments)=={len(segments)}"
        )
    if segments[index].id != conn.id:
        raise ProtocolError(
            f"Current PathSegment.Id=={segments[index].id} should be equal Connection.Id=={conn.id}"
        )

    if next_index < len(segments):
        following = segments[next_index]
        if following.name != name:
            following.name = name
            following.id = new_id()
    else:
        segments.add(name=name, id=new_id())
    path.index = next_index
    conn.id = segments[next_index].id
    return index


def restore_index(conn: Connection, index: int) -> None:
    """Finish a Request/Close: the reply carries the caller's index and the caller's id (§4.1)."""
    segments = conn.path.path_segments
    if not 0 <= index < len(segments):
        raise ProtocolError(f"path index {index} out of range for {len(segments)} path segments")
    conn.path.index = index
    conn.id = segments[index].id


def prev_segment(conn: Connection) -> PathSegment | None:
    """The caller's segment (index - 1), or None at index 0 (Go `GetPrevPathSegment`)."""
    index = conn.path.index
    segments = conn.path.path_segments
    if index == 0 or index - 1 >= len(segments):
        return None
    return segments[index - 1]


def copy_caller_token(conn: Connection, token: str | None, expires: float | None) -> bool:
    """Server side of §4.3 step 1: put the caller's metadata token into the caller's segment.

    Does nothing (returns False) at index 0 or when the metadata is missing; Go only logs then and keeps
    what the caller wrote into the path.
    """
    previous = prev_segment(conn)
    if previous is None or token is None or expires is None:
        return False
    previous.token = token
    set_timestamp(previous.expires, expires)
    return True


def set_own_token(conn: Connection, token: str, expires: float) -> None:
    """Server side of §4.3 step 2: write our freshly signed token and its expiry into our segment."""
    path = conn.path
    if path.index >= len(path.path_segments):
        raise ProtocolError(
            f"NetworkServiceRequest.Connection.Path.Index({path.index}) >= "
            f"len(NetworkServiceRequest.Connection.Path.PathSegments)({len(path.path_segments)})"
        )
    own = path.path_segments[path.index]
    own.token = token
    set_timestamp(own.expires, expires)


def trim_path(conn: Connection) -> None:
    """Leaf server (an NSE): drop every segment after our own (§4.4 trimpath)."""
    del conn.path.path_segments[conn.path.index + 1 :]


def segment_expiry(segment: PathSegment) -> float:
    """Expiry in epoch seconds; a segment without `expires` counts as expired at epoch 0 (Go `AsTime()`)."""
    if not segment.HasField("expires"):
        return 0.0
    return timestamp_to_epoch(segment.expires)


def min_expiry(conn: Connection) -> float | None:
    """Earliest expiry over all segments (§5.3), None for an empty path. Missing `expires` counts as 0.0."""
    segments = conn.path.path_segments
    if len(segments) == 0:
        return None
    return min(segment_expiry(segment) for segment in segments)


def prev_expires(conn: Connection) -> float | None:
    """Expiry of the caller's segment, the input of the server auto-close (§4.4); None when unset."""
    previous = prev_segment(conn)
    if previous is None or not previous.HasField("expires"):
        return None
    return timestamp_to_epoch(previous.expires)
