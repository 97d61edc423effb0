"""Just enough HTTP/2 framing for the relay to retire a connection gracefully.

The relay carries grpcio's HTTP/2 as opaque bytes. To retire a connection without failing the calls on
it, the relay plays the server's part of a graceful shutdown (RFC 9113 §6.8): it slips a GOAWAY frame
into the server-to-client direction, between two frames, with the last stream id at its maximum and
NO_ERROR. The client then opens no new streams on the connection, lets the ones it has finish, and
closes it; new calls go out on a new connection (gRPC core and grpc-go both behave this way). A PING
follows the GOAWAY: its ACK, which the relay takes out of the other direction, says the client has
processed the GOAWAY, so a call made after that cannot go out on the old connection. Nothing else is
changed; parsing is only where frames begin and end: the server-to-client direction starts straight
with frames, the other with the client's preface, and each frame is a 9-byte header whose first 3 bytes
give the payload length (§3.4, §4.1).
"""

from __future__ import annotations

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
PING = 0x6
GOAWAY = 0x7
ACK = 0x1
NO_ERROR = 0x0
MAX_STREAM_ID = 2**31 - 1


def goaway_frame(debug: str = "") -> bytes:
    """A GOAWAY that refuses no stream already opened: only new streams must go elsewhere."""
    payload = MAX_STREAM_ID.to_bytes(4, "big") + NO_ERROR.to_bytes(4, "big") + debug.encode()[:200]
    header = len(payload).to_bytes(3, "big") + bytes([GOAWAY, 0]) + (0).to_bytes(4, "big")
    return header + payload


class FrameBoundaries:
    """Follows where frames begin and end in one direction of an HTTP/2 connection."""

    def __init__(self) -> None:
        self._header = b""  # the part of a frame header seen so far
        self._payload_left = 0
        self._started = False
        self._began: int | None = None  # the type of the frame whose header the last step completed

    @property
    def at_boundary(self) -> bool:
        """True between two frames (or before the first)."""
        return not self._header and not self._payload_left

    def feed(self, data: bytes) -> list[int]:
        """Account for `data`, which went on in this direction; the types of the frames it began."""
        self._started = self._started or bool(data)
        position, kinds = 0, []
        while position < len(data):
            position = self._step(data, position)
            if self._began is not None:
                kinds.append(self._began)
                self._began = None
        return kinds

    def first_boundary(self, data: bytes) -> int | None:
        """The smallest k such that after `data[:k]` the stream is between two frames, at least one frame
        in (the server's first frame must stay its SETTINGS), or None."""
        if self.at_boundary and self._started:
            return 0
        probe = FrameBoundaries()
        probe._header, probe._payload_left = self._header, self._payload_left
        position = 0
        while position < len(data):
            position = probe._step(data, position)
            if probe.at_boundary:
                return position
        return None

    def _step(self, data: bytes, position: int) -> int:
        if self._payload_left:
            taken = min(self._payload_left, len(data) - position)
            self._payload_left -= taken
            return position + taken
        wanted = FRAME_HEADER - len(self._header)
        piece = data[position : position + wanted]
        self._header += piece
        if len(self._header) == FRAME_HEADER:
            self._payload_left = int.from_bytes(self._header[:3], "big")
            self._began = self._header[3]
            self._header = b""
        return position + len(piece)


def ping_frame(opaque: bytes) -> bytes:
    """A PING (§6.7); the client answers with an ACK carrying the same 8 bytes, after every frame before
    it (the GOAWAY) has been processed."""
    assert len(opaque) == 8
    return (8).to_bytes(3, "big") + bytes([PING, 0]) + (0).to_bytes(4, "big") + opaque


class PingAckFilter:
    """Follows the client-to-server direction and takes out the ACK of the relay's own PING, which the
    real server never sent and must not see. Frame headers are passed on whole; everything else as it
    comes, except a PING ACK while one is `expected` (17 bytes at most are held back)."""

    def __init__(self) -> None:
        self.expected: bytes | None = None
        self._preface_left = len(CLIENT_PREFACE)
        self._header = b""
        self._payload_left = 0
        self._held: bytearray | None = None

    def filter(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to pass on, and whether they contained the expected ACK (which is removed)."""
        out, acked, position = bytearray(), False, 0
        while position < len(data):
            if self._preface_left:
                piece = data[position : position + self._preface_left]
                self._preface_left -= len(piece)
                out += piece
            elif self._payload_left:
                piece = data[position : position + self._payload_left]
                self._payload_left -= len(piece)
                if self._held is None:
                    out += piece
                else:
                    self._held += piece
                    if not self._payload_left:
                        acked = self._settle_held(out) or acked
            else:
                piece = data[position : position + FRAME_HEADER - len(self._header)]
                self._header += piece
                if len(self._header) == FRAME_HEADER:
                    self._start_frame(out)
            position += len(piece)
        return bytes(out), acked

    def _start_frame(self, out: bytearray) -> None:
        header, self._header = self._header, b""
        self._payload_left = int.from_bytes(header[:3], "big")
        is_ping_ack = header[3] == PING and header[4] & ACK and self._payload_left == 8
        if self.expected is not None and is_ping_ack:
            self._held = bytearray(header)
        else:
            out += header

    def _settle_held(self, out: bytearray) -> bool:
        held, self._held = bytes(self._held or b""), None
        if held[FRAME_HEADER:] == self.expected:
            self.expected = None
            return True
        out += held  # grpcio's own PING's ACK
        return False
