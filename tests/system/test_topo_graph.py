"""`nsm-topo graph` as a user sees it: the page the real command writes, opened in headless Chromium.

The screenshots stay in the test's tmp directory; each test prints their path (also in CI's log).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser import Image, decode_png, drawing_of, near, rendered_dom, screenshot
from labtools import run
from topocli import TopoCli, lab_namespaces, processes_of

from nsm_topo.graph import STATE_COLOURS
from nsm_topo.topology import load_topology

# not frr/qrtr and no conf_dir: plain devices, so no FRR is started
TINY = """\
prefix: graphlab
links:
  - endpoints: ["a:eth1", "b:eth1"]
  - endpoints: ["b:eth2", "c:eth1"]
"""


@pytest.fixture
def announce(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Say something in the test log even when the test passes (the screenshot's path)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        print(line)
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)

    return say


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[TopoCli]:
    cli = TopoCli(Path(tmp_path))
    yield cli
    if (cli.directory / "graphlab.yml").exists():  # whatever a failed test left up
        cli("down", str(cli.directory / "graphlab.yml"))


def looks_drawn(png: bytes, must_show: str) -> tuple[int, int, int]:
    """(distinct colours, ink pixels, pixels of the colour `must_show`) in the picture's part of a
    screenshot (the band between the page's header and the tables below the picture)."""
    image = decode_png(png)
    rows = image.rows[image.height * 15 // 100 : image.height * 80 // 100]
    band = Image(image.width, len(rows), rows, image.channels)
    pixels = band.pixels()
    ink = sum(1 for p in pixels if min(p) < 200)  # the canvas is white with light grey dots
    return len(set(pixels)), ink, sum(1 for p in pixels if near(p, must_show, 20))


def test_the_page_of_a_50_router_file_draws_every_device_link_and_interface(
    topo: TopoCli, announce: Callable[[str], None]
) -> None:
    made = topo("random", "50", "6", "--seed", "11")
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    graph = topo("graph", "random.yml")
    took = time.monotonic() - started
    page = topo.directory / "random.html"
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout.splitlines() == ["random.html: random, 50 devices, 55 links (planned)"]
    assert page.is_file() and took < 20, took

    drawing = drawing_of(rendered_dom(page))
    topology = load_topology(topo.directory / "random.yml")
    assert len(drawing.nodes) == 50 and sorted(drawing.nodes) == sorted(topology.devices)
    assert len(drawing.links) == 55 and all(link["data-state"] == "unknown" for link in drawing.links)
    texts = drawing.texts
    assert set(topology.devices) <= set(texts)  # every device's name is shown
    for link, shown in zip(topology.links, drawing.links, strict=True):  # and both ends' interfaces
        assert (shown["data-link"], shown["data-a"], shown["data-b"]) == (
            link.name,
            link.client.device,
            link.endpoint.device,
        )
        labels = sorted((device, lines[0]) for name, device, lines in drawing.ends if name == link.name)
        assert labels == sorted(
            [(link.client.device, link.client.interface), (link.endpoint.device, link.endpoint.interface)]
        )
    assert "10.60.49.0/24" in texts  # the last device's pool

    png = topo.directory / "random-50.png"
    colours, drawn, grey = looks_drawn(screenshot(page, png, 1600, 1100), STATE_COLOURS["unknown"])
    announce(f"nsm-topo graph screenshot (50 routers, planned): {png}")
    print(f"distinct colours {colours}, ink pixels {drawn}, link-grey pixels {grey}")
    assert colours > 100 and drawn > 5_000 and grey > 1_000, (colours, drawn, grey)


def test_the_page_of_a_running_lab_shows_its_links_up_with_the_real_addresses(
    topo: TopoCli, announce: Callable[[str], None]
) -> None:
    path = topo.directory / "graphlab.yml"
    path.write_text(TINY)
    up = topo("up", str(path))
    assert up.returncode == 0, up.stderr
    try:
        graph = topo("graph", str(path), "-o", "lab.html")
        assert graph.returncode == 0, graph.stderr
        assert graph.stdout.splitlines() == ["lab.html: graphlab, 3 devices, 2 links (2 up)"]
        page = topo.directory / "lab.html"
        drawing = drawing_of(rendered_dom(page))
        assert sorted(drawing.nodes) == ["a", "b", "c"]
        assert [(link["data-link"], link["data-state"]) for link in drawing.links] == [
            ("net-0", "up"),
            ("net-1", "up"),
        ]
        labels = {(device, lines[0]): lines[1:] for _, device, lines in drawing.ends}
        for device, interface in (("a", "eth1"), ("b", "eth1"), ("b", "eth2"), ("c", "eth1")):
            shown = json.loads(run("ip", "-n", f"graphlab-{device}", "-j", "addr", "show", interface).stdout)
            ipv4 = [f"{a['local']}/{a['prefixlen']}" for a in shown[0]["addr_info"] if a["family"] == "inet"]
            assert ipv4 and set(ipv4) <= set(labels[(device, interface)]), (device, ipv4, labels)
        assert "10.60.1.1/30" in drawing.texts and "10.60.2.2/30" in drawing.texts  # from b's and c's pools

        png = topo.directory / "lab.png"
        colours, drawn, green = looks_drawn(screenshot(page, png, 1100, 800), STATE_COLOURS["up"])
        announce(f"nsm-topo graph screenshot (lab up): {png}")
        print(f"distinct colours {colours}, ink pixels {drawn}, link-green pixels {green}")
        assert colours > 50 and drawn > 3_000 and green > 300, (colours, drawn, green)

        # a user without root sees the planned wiring, and is told why
        shared = Path(tempfile.mkdtemp(prefix="graph-user-"))
        try:
            shared.chmod(0o777)
            shutil.copy(path, shared / "graphlab.yml")
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            as_user = subprocess.run(
                [*nobody, sys.executable, "-m", "nsm_topo", "graph", *topo.options, "graphlab.yml"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=shared,
                env={**os.environ, "HOME": str(shared)},
            )
            assert as_user.returncode == 0, as_user.stderr
            assert "is up, but reading its links needs root" in as_user.stderr
            assert as_user.stdout.splitlines() == ["graphlab.html: graphlab, 3 devices, 2 links (planned)"]
            planned = (shared / "graphlab.html").read_text()
            assert 'data-state="unknown"' in planned and 'data-state="up"' not in planned
        finally:
            shutil.rmtree(shared)
    finally:
        down = topo("down", str(path))
    assert down.returncode == 0, down.stderr
    assert lab_namespaces("graphlab") == [] and processes_of(topo.directory) == []


README_PICTURE = Path(__file__).resolve().parents[2] / "docs" / "images" / "demo-lab.png"
UPDATE_PICTURES = "NSM_UPDATE_PICTURES"


def _differing_share(a: Image, b: Image) -> float:
    """The share of pixels whose colours differ by more than anti-aliasing does."""
    pairs = zip(a.pixels(), b.pixels(), strict=True)
    return sum(1 for p, q in pairs if max(abs(x - y) for x, y in zip(p, q, strict=True)) > 40) / (
        a.width * a.height
    )


def test_the_readme_picture_is_the_seed_demo_lab_as_its_graph_page_draws_it(
    topo: TopoCli, announce: Callable[[str], None]
) -> None:
    """The README's first picture: scripts/demo.sh's network (10 FRR routers, seed 2020), brought up, drawn
    by `nsm-topo graph`. `NSM_UPDATE_PICTURES=1` writes the new picture after a change to the page."""
    made = topo("random", "10", "4", "--seed", "2020", "--name", "demo", "-o", str(topo.directory))
    assert made.returncode == 0, made.stderr
    path = topo.directory / "demo.yml"
    up = topo("up", str(path))
    assert up.returncode == 0, up.stderr
    try:
        graph = topo("graph", str(path), "-o", "demo.html")
        assert graph.stdout.splitlines() == ["demo.html: demo, 10 devices, 13 links (13 up)"], graph.stderr
        png = screenshot(topo.directory / "demo.html", topo.directory / "demo.png", 1100, 650)
    finally:
        down = topo("down", str(path))
        assert down.returncode == 0, down.stderr
    colours, drawn, green = looks_drawn(png, STATE_COLOURS["up"])
    assert colours > 50 and drawn > 5_000 and green > 1_000, (colours, drawn, green)
    announce(f"README picture as drawn now: {topo.directory / 'demo.png'}")
    if os.environ.get(UPDATE_PICTURES) == "1":
        README_PICTURE.parent.mkdir(exist_ok=True)
        README_PICTURE.write_bytes(png)
    committed, now = decode_png(README_PICTURE.read_bytes()), decode_png(png)
    assert (committed.width, committed.height) == (now.width, now.height)
    share = _differing_share(committed, now)
    assert share < 0.03, (
        f"{share:.1%} of docs/images/demo-lab.png differs from what the page draws now; "
        f"{UPDATE_PICTURES}=1 .venv/bin/python -m pytest tests/system/test_topo_graph.py -k readme writes it"
    )
