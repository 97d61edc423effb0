"""A page as a browser shows it: Debian's headless Chromium, driven from the command line.

`rendered_dom` is the DOM after the page's scripts ran (`--dump-dom`), `screenshot` a PNG of the window;
`decode_png` reads that PNG back with zlib and struct, so a test can look at its pixels. Each run gets a
fresh profile, and Chromium is told not to reach for the network (on a closed network it otherwise waits
for Google's services).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

QUIET = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
)


def chromium() -> str:
    """The Chromium binary; in CI a missing one fails the test (scripts/setup.sh installs it)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found is None:
        message = "Chromium is not installed (apt-get install chromium; scripts/setup.sh does it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(page: Path, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        done = subprocess.run(
            [chromium(), *QUIET, f"--user-data-dir={profile}", *flags, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def rendered_dom(page: Path) -> str:
    return _run(page, "--dump-dom").stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 900) -> bytes:
    _run(page, f"--screenshot={png}", f"--window-size={width},{height}")
    return png.read_bytes()


@dataclass
class Image:
    width: int
    height: int
    rows: list[bytes]
    """RGB(A) bytes per row, unfiltered."""
    channels: int

    def pixels(self) -> list[tuple[int, int, int]]:
        c = self.channels
        return [tuple(row[i : i + 3]) for row in self.rows for i in range(0, len(row), c)]  # type: ignore[misc]


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def decode_png(data: bytes) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes), decoded to rows of pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    assert header is not None, "PNG without IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                corner = previous[i - channels] if i >= channels else 0
                line[i] = (line[i] + _paeth(left, previous[i], corner)) & 255
        rows.append(bytes(line))
        previous = line
    return Image(width, height, rows, channels)


def near(pixel: tuple[int, int, int], colour: str, tolerance: int = 12) -> bool:
    """Whether a pixel is within `tolerance` of a #rrggbb colour on every channel."""
    wanted = (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, wanted, strict=True))


class Drawing(HTMLParser):
    """What a rendered page draws: its SVG's node and link groups, each link end's label (link, device,
    its lines of text) and every text in the SVG."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[str] = []
        self.links: list[dict[str, str]] = []
        self.texts: list[str] = []
        self.ends: list[tuple[str, str, list[str]]] = []
        self._end: tuple[str, str, list[str]] | None = None
        self._in_svg = 0
        self._in_text = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        classes = values.get("class", "").split()
        if tag == "svg" and values.get("id") == "topo":
            self._in_svg += 1
        if not self._in_svg:
            return
        if tag == "g" and "node" in classes:
            self.nodes.append(values.get("data-device", ""))
        if tag == "g" and "link" in classes:
            self.links.append(values)
        if tag == "g" and "end" in classes:
            self._end = (values.get("data-link", ""), values.get("data-device", ""), [])
        if tag in ("text", "tspan"):
            self._in_text += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self._in_svg:
            self._in_svg -= 1
        if tag in ("text", "tspan") and self._in_text:
            self._in_text -= 1
        if tag == "g" and self._end is not None:
            self.ends.append(self._end)
            self._end = None

    def handle_data(self, data: str) -> None:
        if self._in_svg and self._in_text and data.strip():
            self.texts.append(data.strip())
            if self._end is not None:
                self._end[2].append(data.strip())


def drawing_of(dom: str) -> Drawing:
    drawing = Drawing()
    drawing.feed(dom)
    return drawing
