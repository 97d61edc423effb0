"""`nsm-topo graph`: the layout and the page, read back as a browser would read its SVG."""

from __future__ import annotations

import itertools
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from nsm_topo.__main__ import main
from nsm_topo.builder import build
from nsm_topo.graph import (
    STATE_COLOURS,
    ObservedEnd,
    ObservedLink,
    boxes_overlap,
    layout,
    render,
)
from nsm_topo.topology import Endpoint, Link, Topology, parse_topology

SVG = "{http://www.w3.org/2000/svg}"
TRIANGLE = """\
prefix: tri
links:
  - endpoints: ["r1:eth1", "r2:eth1"]
  - endpoints: ["r2:eth2", "r3:eth1"]
  - endpoints: ["r3:eth2", "r1:eth2"]
"""


def random_topology(routers: int, extra: int, seed: int) -> Topology:
    network = build(routers, extra, seed)
    links = [{"endpoints": list(ends)} for ends in network.links]
    text = yaml.safe_dump({"prefix": "random", "links": links})
    return parse_topology(text)


def svg_of(page: str) -> ET.Element:
    """The page's picture, which must be well-formed SVG on its own."""
    start = page.index('<svg id="topo"')
    end = page.index("</svg>", start) + len("</svg>")
    return ET.fromstring(page[start:end])


def groups(svg: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if kind in g.get("class", "").split()]


def node_boxes(svg: ET.Element) -> dict[str, tuple[float, float, float, float]]:
    """device -> (centre x, centre y, width, height) as drawn."""
    boxes = {}
    for node in groups(svg, "node"):
        x, y = map(float, re.findall(r"[-\d.]+", node.get("transform", ""))[:2])
        rect = node.find(f"{SVG}rect")
        assert rect is not None
        boxes[node.get("data-device", "")] = (x, y, float(rect.get("width", 0)), float(rect.get("height", 0)))
    return boxes


def texts(element: ET.Element) -> list[str]:
    return [t.text.strip() for t in element.iter() if t.tag in (f"{SVG}text", f"{SVG}tspan") and t.text]


def test_layout_is_deterministic_and_a_seed_changes_it() -> None:
    topology = random_topology(30, 5, seed=4)
    edges = [(link.client.device, link.endpoint.device) for link in topology.links]
    first = layout(topology.devices, edges)
    assert first == layout(topology.devices, edges)
    assert first != layout(topology.devices, edges, seed=1)
    assert render(topology) == render(topology)  # the whole page, byte for byte


@pytest.mark.parametrize(("routers", "extra"), [(10, 4), (50, 10)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_two_devices_overlap_in_random_networks(routers: int, extra: int, seed: int) -> None:
    topology = random_topology(routers, extra, seed)
    boxes = node_boxes(svg_of(render(topology)))
    assert len(boxes) == routers
    placed = list(boxes.values())
    for i, (x, y, w, h) in enumerate(placed):
        assert x - w / 2 >= 0 and y - h / 2 >= 0  # inside the picture
        for x2, y2, w2, h2 in placed[i + 1 :]:
            assert not boxes_overlap((x, y), (w, h), (x2, y2), (w2, h2), gap=10.0)


@pytest.mark.parametrize("routers", [10, 50])
def test_layout_keeps_boxes_apart_even_when_they_are_wider_than_the_links_are_long(routers: int) -> None:
    topology = random_topology(routers, routers // 5, seed=5)
    edges = [(link.client.device, link.endpoint.device) for link in topology.links]
    loners = ["alone-1", "alone-2"]  # devices without links too
    devices = [*topology.devices, *loners]
    size = (260.0, 44.0)
    placed = list(layout(devices, edges, {d: size for d in devices}, edge_length=80.0, gap=12.0).values())
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            assert not boxes_overlap(a, size, b, size, gap=11.0), (a, b)


def test_neighbours_are_drawn_nearer_than_devices_far_apart_in_hops() -> None:
    chain = [f"n{i}" for i in range(8)]
    placed = layout(chain, list(itertools.pairwise(chain)))

    def distance(a: str, b: str) -> float:
        return float(((placed[a][0] - placed[b][0]) ** 2 + (placed[a][1] - placed[b][1]) ** 2) ** 0.5)

    assert max(distance(a, b) for a, b in itertools.pairwise(chain)) < distance("n0", "n7")


def test_every_device_link_and_interface_is_in_the_svg() -> None:
    topology = random_topology(10, 4, seed=9)
    svg = svg_of(render(topology))
    assert sorted(node.get("data-device", "") for node in groups(svg, "node")) == sorted(topology.devices)
    links = groups(svg, "link")
    assert [g.get("data-link") for g in links] == [link.name for link in topology.links]
    for link, drawn in zip(topology.links, links, strict=True):
        assert (drawn.get("data-a"), drawn.get("data-b")) == (link.client.device, link.endpoint.device)
        ends = [g for g in groups(svg, "end") if g.get("data-link") == link.name]
        assert {(g.get("data-device"), texts(g)[0]) for g in ends} == {
            (link.client.device, link.client.interface),
            (link.endpoint.device, link.endpoint.interface),
        }
    shown = texts(svg)
    assert set(topology.devices) <= set(shown)


def test_without_a_lab_links_are_unknown_and_show_the_addresses_they_will_get() -> None:
    page = render(parse_topology(TRIANGLE))
    svg = svg_of(page)
    assert {g.get("data-state") for g in groups(svg, "link")} == {"unknown"}
    assert {w.get("stroke") for w in svg.iter(f"{SVG}path") if w.get("class") == "wire"} == {
        STATE_COLOURS["unknown"]
    }
    assert {"10.60.0.0/24", "10.60.1.0/24", "10.60.2.0/24"} <= set(texts(svg))
    assert "3 devices · 3 links" in page and "no lab observed" in page
    # net-0 is the first link its endpoint r2 answers: the first /30 of r2's pool, at both ends
    assert {"10.60.1.1/30", "10.60.1.2/30"} <= set(texts(svg))


def test_observed_states_are_coloured_and_addresses_shown() -> None:
    topology = parse_topology(TRIANGLE)
    observed = {
        "net-0": ObservedLink(
            True, ObservedEnd(("10.60.1.1/30",), True), ObservedEnd(("10.60.1.2/30",), True)
        ),
        "net-1": ObservedLink(False, ObservedEnd(("10.60.2.1/30",), False), None),
    }  # net-2 not observed: unknown
    page = render(topology, observed)
    svg = svg_of(page)
    states = {g.get("data-link"): g.get("data-state") for g in groups(svg, "link")}
    assert states == {"net-0": "up", "net-1": "down", "net-2": "unknown"}
    for g in groups(svg, "link"):
        wire = next(p for p in g.iter(f"{SVG}path") if p.get("class") == "wire")
        assert wire.get("stroke") == STATE_COLOURS[g.get("data-state", "")]
    assert len(set(STATE_COLOURS.values())) == 3
    shown = texts(svg)
    assert "10.60.1.1/30" in shown and "10.60.1.2/30" in shown and "absent" in shown
    legend = re.search(r'<ul class="legend".*?</ul>', page)
    assert legend is not None
    assert re.findall(r"(up|down|unknown) <b>(\d+)</b>", legend.group(0)) == [
        ("up", "1"),
        ("down", "1"),
        ("unknown", "1"),
    ]
    assert "lab up: 1 of 3 links up" in page


def test_names_are_escaped_everywhere() -> None:
    evil = '<script>alert("x")</script>&'
    a, b = Endpoint(evil, "eth1"), Endpoint("b", '"><i>')
    topology = Topology(name=evil, links=(Link(0, a, b),), devices=(evil, "b"))
    page = render(topology, note=evil)
    assert "<script>alert" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    svg = svg_of(page)  # still well-formed
    assert evil in texts(svg) and '"><i>' in texts(svg)


def test_the_page_is_self_contained() -> None:
    page = render(random_topology(10, 2, seed=3))
    # the one address is the SVG namespace, which is never fetched
    assert re.findall(r"https?://[^\"' )]+", page) == ["http://www.w3.org/2000/svg"]
    assert not re.search(r"<link\b|\bsrc=|@import|url\((?!#)", page)
    assert page.count("<script>") == 1 and page.count("<style>") == 1


def test_graph_writes_name_html_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.yml").write_text(TRIANGLE.replace("prefix: tri", "prefix: graph-unit-tri"))
    monkeypatch.chdir(tmp_path)
    main(["graph", "t.yml", "--state-dir", str(tmp_path / "state")])
    out = capsys.readouterr().out
    assert out == "graph-unit-tri.html: graph-unit-tri, 3 devices, 3 links (planned)\n"
    assert svg_of((tmp_path / "graph-unit-tri.html").read_text()) is not None
    main(["graph", "t.yml", "--state-dir", str(tmp_path / "state"), "-o", str(tmp_path / "x.html")])
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'x.html'}: ")


def test_graph_of_a_bad_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text('links:\n  - endpoints: ["r1:eth1", "r2:eth1", "r3:eth1"]\n')
    with pytest.raises(SystemExit) as exited:
        main(["graph", str(path), "-o", str(tmp_path / "bad.html")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "net-0" in err
    assert not (tmp_path / "bad.html").exists()


def recorded_lab(tmp_path: Path, name: str) -> Path:
    """A topology whose lab record says it is up (its namespaces do not exist: every link is down)."""
    path = tmp_path / f"{name}.yml"
    path.write_text(TRIANGLE.replace("prefix: tri", f"prefix: {name}"))
    (tmp_path / "state" / name).mkdir(parents=True)
    (tmp_path / "state" / name / "lab.json").write_text(json.dumps({"topology": name, "file": str(path)}))
    return path


def test_a_user_without_root_gets_the_planned_wiring_and_is_told_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = recorded_lab(tmp_path, "graph-unit-user")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    page = tmp_path / "p.html"
    main(["graph", str(path), "--state-dir", str(tmp_path / "state"), "-o", str(page)])
    captured = capsys.readouterr()
    assert "is up, but reading its links needs root" in captured.err and captured.err.count("\n") == 1
    assert captured.out.endswith("(planned)\n")
    assert "needs root" in page.read_text()  # said on the page too
    assert {g.get("data-state") for g in groups(svg_of(page.read_text()), "link")} == {"unknown"}


def test_as_root_a_recorded_lab_without_its_namespaces_shows_every_link_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = recorded_lab(tmp_path, "graph-unit-gone")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    page = tmp_path / "p.html"
    main(["graph", str(path), "--state-dir", str(tmp_path / "state"), "-o", str(page)])
    assert capsys.readouterr().out.endswith("(0 up)\n")
    svg = svg_of(page.read_text())
    assert {g.get("data-state") for g in groups(svg, "link")} == {"down"}
    assert texts(svg).count("absent") == 6
