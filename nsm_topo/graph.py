"""`nsm-topo graph`: a topology as one self-contained HTML page (k8s-topo's `--graph`, without a server).

The picture is an inline SVG computed here, so it renders offline and with JavaScript off: devices as
boxes (name and address pool), links as lines coloured by state (up, down, or unknown when no lab is up),
each end labelled with its interface and its address (as `ENDPOINT_LINKS` fixes it, or as observed when
the lab is up). A little inline JavaScript
adds pan and zoom, hover highlighting, tooltips and a device search; tables of links and devices follow
the picture.

Pure: a topology and optionally the observed state of its links in, an HTML string out. `layout` is
deterministic (stress majorisation over hop distances from a classical-MDS start, then overlap removal),
readable for a few dozen devices and fine up to the wiring's 256.
"""

from __future__ import annotations

import html
import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nsm_topo.topology import Link, Topology
from nsm_topo.wiring import planned_addresses, wire

Point = tuple[float, float]
Size = tuple[float, float]

STATE_COLOURS: Mapping[str, str] = {"up": "#16a34a", "down": "#dc2626", "unknown": "#94a3b8"}
"""Link state -> wire colour (the legend uses the same)."""
STATE_DASH: Mapping[str, str] = {"up": "", "down": "7 5", "unknown": ""}

_NAME_FONT = 13.0
_SMALL_FONT = 11.0
_CHAR = 0.61  # monospace advance per font-size unit (DejaVu Sans Mono, Menlo: 0.602; Consolas 0.55)
_NODE_HEIGHT = 44.0
_LINE = 13.0
_MARGIN = 48.0


@dataclass(frozen=True, slots=True)
class ObservedEnd:
    """One end of a link as found on the host: its addresses (`addr/len`) and whether it is up."""

    addresses: tuple[str, ...]
    up: bool


@dataclass(frozen=True, slots=True)
class ObservedLink:
    """A link of a running lab: up (both ends present, up, addressed) or not; None for a missing end."""

    up: bool
    client: ObservedEnd | None
    endpoint: ObservedEnd | None


# ----- layout -------------------------------------------------------------------------------------------


def _hops(adjacency: list[set[int]], start: int) -> list[int]:
    """Hop distance from `start` to every node (-1: unreachable)."""
    distance = [-1] * len(adjacency)
    distance[start] = 0
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for following in sorted(adjacency[node]):
            if distance[following] < 0:
                distance[following] = distance[node] + 1
                queue.append(following)
    return distance


def _top_eigenvector(matrix: list[list[float]], rng: random.Random) -> tuple[float, list[float]]:
    """The dominant eigenpair of a symmetric matrix by power iteration (deterministic for a given rng)."""
    n = len(matrix)
    vector = [rng.uniform(-1.0, 1.0) for _ in range(n)]
    value = 0.0
    for _ in range(200):
        product = [sum(row[j] * vector[j] for j in range(n)) for row in matrix]
        norm = math.sqrt(sum(x * x for x in product))
        if norm < 1e-12:
            return 0.0, vector
        following = [x / norm for x in product]
        value = sum(vector[i] * product[i] for i in range(n))
        moved = max(abs(a - b) for a, b in zip(following, vector, strict=True))
        vector = following
        if moved < 1e-7:
            break
    return value, vector


def _classical_mds(distance: list[list[float]], rng: random.Random) -> list[list[float]]:
    """Two-dimensional classical MDS of a distance matrix (power iteration with deflation)."""
    n = len(distance)
    squared = [[d * d for d in row] for row in distance]
    row_mean = [sum(row) / n for row in squared]
    total_mean = sum(row_mean) / n
    centred = [
        [-0.5 * (squared[i][j] - row_mean[i] - row_mean[j] + total_mean) for j in range(n)] for i in range(n)
    ]
    axes = []
    for _ in range(2):
        value, vector = _top_eigenvector(centred, rng)
        scale = math.sqrt(value) if value > 0 else 0.0
        axes.append([x * scale for x in vector])
        for i in range(n):
            for j in range(n):
                centred[i][j] -= value * vector[i] * vector[j]
    return [[axes[0][i], axes[1][i]] for i in range(n)]


def _stress_majorise(positions: list[list[float]], distance: list[list[float]]) -> None:
    """Move nodes so that Euclidean distances approach hop distances (weights d^-2), in place."""
    n = len(positions)
    weight = [[0.0 if i == j else 1.0 / (distance[i][j] ** 2) for j in range(n)] for i in range(n)]
    weight_sum = [sum(row) for row in weight]
    sweeps = 300 if n <= 80 else 120 if n <= 160 else 60
    for _ in range(sweeps):
        moved = 0.0
        for i in range(n):
            xi, yi = positions[i]
            sum_x = sum_y = 0.0
            for j in range(n):
                if i == j:
                    continue
                xj, yj = positions[j]
                dx, dy = xi - xj, yi - yj
                length = math.hypot(dx, dy) or 1e-9
                pull = weight[i][j] * distance[i][j] / length
                sum_x += weight[i][j] * xj + pull * dx
                sum_y += weight[i][j] * yj + pull * dy
            new_x, new_y = sum_x / weight_sum[i], sum_y / weight_sum[i]
            moved = max(moved, abs(new_x - xi), abs(new_y - yi))
            positions[i] = [new_x, new_y]
        if moved < 1e-4:
            break


def _rotate_wide(positions: list[list[float]]) -> None:
    """Rotate about the centroid so that the layout's principal axis is horizontal (screens are wide)."""
    n = len(positions)
    cx = sum(p[0] for p in positions) / n
    cy = sum(p[1] for p in positions) / n
    sxx = sum((p[0] - cx) ** 2 for p in positions)
    syy = sum((p[1] - cy) ** 2 for p in positions)
    sxy = sum((p[0] - cx) * (p[1] - cy) for p in positions)
    angle = 0.5 * math.atan2(2 * sxy, sxx - syy)
    cos, sin = math.cos(-angle), math.sin(-angle)
    for p in positions:
        x, y = p[0] - cx, p[1] - cy
        p[0], p[1] = x * cos - y * sin, x * sin + y * cos


def _stretch(positions: list[list[float]], aspect: float) -> None:
    """Widen a layout narrower than `aspect` (width/height), by at most that factor: boxes are wider
    than tall, and so are screens."""
    width = max(p[0] for p in positions) - min(p[0] for p in positions)
    height = max(p[1] for p in positions) - min(p[1] for p in positions)
    if height <= 1e-9 or width / height >= aspect:
        return
    factor = min(aspect * height / max(width, 1e-9), aspect)
    for p in positions:
        p[0] *= factor


def boxes_overlap(a: Point, size_a: Size, b: Point, size_b: Size, gap: float = 0.0) -> bool:
    """Whether two boxes centred at a and b (plus `gap` between them) overlap."""
    return (
        abs(a[0] - b[0]) < (size_a[0] + size_b[0]) / 2 + gap
        and abs(a[1] - b[1]) < (size_a[1] + size_b[1]) / 2 + gap
    )


def _remove_overlaps(positions: list[list[float]], sizes: list[Size], gap: float) -> None:
    """Push overlapping boxes apart along the axis of least overlap until none overlap (in place)."""
    n = len(positions)
    for round_ in range(1000):
        clean = True
        for i in range(n):
            for j in range(i + 1, n):
                dx = positions[j][0] - positions[i][0]
                dy = positions[j][1] - positions[i][1]
                over_x = (sizes[i][0] + sizes[j][0]) / 2 + gap - abs(dx)
                over_y = (sizes[i][1] + sizes[j][1]) / 2 + gap - abs(dy)
                if over_x <= 0 or over_y <= 0:
                    continue
                clean = False
                if over_x <= over_y:
                    step = (over_x / 2 + 0.5) * (1 if dx > 0 or (dx == 0 and (i + j) % 2) else -1)
                    positions[i][0] -= step
                    positions[j][0] += step
                else:
                    step = (over_y / 2 + 0.5) * (1 if dy > 0 or (dy == 0 and (i + j) % 2) else -1)
                    positions[i][1] -= step
                    positions[j][1] += step
        if clean:
            return
        if round_ % 100 == 99:  # stuck in a crowd: spread everything a little
            for p in positions:
                p[0] *= 1.1
                p[1] *= 1.1


def layout(
    devices: Sequence[str],
    edges: Sequence[tuple[str, str]],
    sizes: Mapping[str, Size] | None = None,
    edge_length: float = 200.0,
    gap: float = 28.0,
    seed: int = 0,
    aspect: float = 1.5,
) -> dict[str, Point]:
    """Device -> centre of its box, top-left of the picture at about (0, 0).

    Neighbours end up about `edge_length` apart; boxes (`sizes`, default 100x44) never overlap and keep
    `gap` between them; a layout narrower than `aspect` is widened. The same input always gives the same
    output; `seed` picks another start.
    """
    n = len(devices)
    if n == 0:
        return {}
    size = [(sizes or {}).get(device, (100.0, _NODE_HEIGHT)) for device in devices]
    index = {device: i for i, device in enumerate(devices)}
    adjacency: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        if a != b:
            adjacency[index[a]].add(index[b])
            adjacency[index[b]].add(index[a])
    hops = [_hops(adjacency, i) for i in range(n)]
    farthest = max(max(row) for row in hops)
    # another component sits a little beyond the farthest hop, so components stay apart but near
    distance = [[float(d) if d >= 0 else farthest + 1.5 for d in row] for row in hops]
    rng = random.Random(seed)
    if n == 1:
        positions = [[0.0, 0.0]]
    else:
        positions = _classical_mds(distance, rng)
        for p in positions:  # break symmetries MDS leaves (a star's leaves can coincide)
            p[0] += rng.uniform(-0.05, 0.05)
            p[1] += rng.uniform(-0.05, 0.05)
        _stress_majorise(positions, distance)
        _rotate_wide(positions)
        _stretch(positions, aspect)
    for p in positions:
        p[0] *= edge_length
        p[1] *= edge_length
    _remove_overlaps(positions, size, gap)
    left = min(p[0] - s[0] / 2 for p, s in zip(positions, size, strict=True))
    top = min(p[1] - s[1] / 2 for p, s in zip(positions, size, strict=True))
    return {
        device: (round(p[0] - left, 1), round(p[1] - top, 1))
        for device, p in zip(devices, positions, strict=True)
    }


# ----- drawing ------------------------------------------------------------------------------------------


def link_state(link: Link, observed: Mapping[str, ObservedLink] | None) -> str:
    """up, down, or unknown (no lab observed, or this link not in what was observed)."""
    if observed is None or link.name not in observed:
        return "unknown"
    return "up" if observed[link.name].up else "down"


def _text_width(text: str, font: float) -> float:
    return len(text) * font * _CHAR


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True)
class _Label:
    lines: tuple[str, ...]

    @property
    def size(self) -> Size:
        width = max(_text_width(line, _SMALL_FONT) for line in self.lines) + 10
        return width, _LINE * len(self.lines) + 5


def _end_lines(interface: str, end: ObservedEnd | None, observed: bool, planned: str) -> tuple[str, ...]:
    if not observed:
        return (interface, planned)
    if end is None:
        return (interface, "absent")
    addresses = tuple(sorted(end.addresses, key=lambda a: (":" in a, a)))
    return (interface, *(addresses or ("no address",)))


def _bezier(start: Point, control: Point, end: Point, t: float) -> tuple[Point, Point]:
    """The point of a quadratic Bezier curve at t, and the unit tangent there."""
    u = 1 - t
    point = (
        u * u * start[0] + 2 * u * t * control[0] + t * t * end[0],
        u * u * start[1] + 2 * u * t * control[1] + t * t * end[1],
    )
    dx = 2 * u * (control[0] - start[0]) + 2 * t * (end[0] - control[0])
    dy = 2 * u * (control[1] - start[1]) + 2 * t * (end[1] - control[1])
    length = math.hypot(dx, dy) or 1.0
    return point, (dx / length, dy / length)


def _label_centre(
    start: Point, control: Point, end: Point, label: Size, taken: list[tuple[Point, Size]]
) -> Point:
    """Where the label of a link's end at `start` goes: on the link, as near its device as it can be
    without covering a box or label already placed (`taken`, the device's own box among them); else a
    little to the link's side; up to the middle of the link."""
    samples = [_bezier(start, control, end, k / 100) for k in range(51)]
    for side in (0.0, 0.6, -0.6, 1.2, -1.2):
        for point, (ux, uy) in samples:
            across = (abs(uy) * label[0] + abs(ux) * label[1]) * side
            candidate = (point[0] - uy * across, point[1] + ux * across)
            if not any(boxes_overlap(candidate, label, at, size, 3.0) for at, size in taken):
                return candidate
    return samples[len(samples) // 2][0]


def _curve_offsets(links: Sequence[Link], spacing: float) -> dict[str, float]:
    """Parallel links between the same two devices bow apart (px, signed); a single link is straight."""
    groups: dict[frozenset[str], list[Link]] = {}
    for link in links:
        groups.setdefault(frozenset((link.client.device, link.endpoint.device)), []).append(link)
    offsets = {}
    for group in groups.values():
        for i, link in enumerate(group):
            offset = (i - (len(group) - 1) / 2) * spacing
            # the same sign convention whichever device is the client
            flip = 1 if link.client.device < link.endpoint.device else -1
            offsets[link.name] = offset * flip
    return offsets


def _node_sizes(topology: Topology, pools: Mapping[str, str]) -> dict[str, Size]:
    return {
        device: (
            max(_text_width(device, _NAME_FONT), _text_width(pools[device], _SMALL_FONT)) + 26,
            _NODE_HEIGHT,
        )
        for device in topology.devices
    }


def _svg(
    topology: Topology,
    observed: Mapping[str, ObservedLink] | None,
    pools: Mapping[str, str],
    served: Mapping[str, int],
    seed: int,
    planned: Mapping[str, tuple[str, str]],
) -> str:
    sizes = _node_sizes(topology, pools)
    labels: dict[tuple[str, str], _Label] = {}
    for link in topology.links:
        seen = observed.get(link.name) if observed is not None else None
        client, endpoint = planned[link.name]
        labels[(link.name, "client")] = _Label(
            _end_lines(link.client.interface, seen.client if seen else None, seen is not None, client)
        )
        labels[(link.name, "endpoint")] = _Label(
            _end_lines(link.endpoint.interface, seen.endpoint if seen else None, seen is not None, endpoint)
        )
    widest_node = max(s[0] for s in sizes.values())
    widest_label = max((label.size[0] for label in labels.values()), default=40.0)
    tallest_label = max((label.size[1] for label in labels.values()), default=18.0)
    edge_length = max(170.0, widest_node * 0.6 + 2 * widest_label + 70)
    edges = [(link.client.device, link.endpoint.device) for link in topology.links]
    # room for a label at each end of a link between two boxes, whichever way the link runs
    room = {d: (w + 2 * widest_label, h + 2 * tallest_label + 8) for d, (w, h) in sizes.items()}
    centres = layout(topology.devices, edges, room, edge_length=edge_length, gap=16.0, seed=seed)
    centres = {d: (x + _MARGIN, y + _MARGIN) for d, (x, y) in centres.items()}
    offsets = _curve_offsets(topology.links, max(34.0, widest_label * 0.75))

    wires: list[str] = []
    ends: list[str] = []
    taken = [(centres[device], sizes[device]) for device in topology.devices]
    right = bottom = 0.0
    for link in topology.links:
        state = link_state(link, observed)
        a, b = centres[link.client.device], centres[link.endpoint.device]
        dx, dy = b[0] - a[0], b[1] - a[1]
        length = math.hypot(dx, dy) or 1.0
        normal = (-dy / length, dx / length)
        offset = offsets[link.name]
        mid = ((a[0] + b[0]) / 2 + normal[0] * offset, (a[1] + b[1]) / 2 + normal[1] * offset)
        control = ((a[0] + b[0]) / 2 + 2 * normal[0] * offset, (a[1] + b[1]) / 2 + 2 * normal[1] * offset)
        if offset:
            path = (
                f"M{_num(a[0])},{_num(a[1])} Q{_num(control[0])},{_num(control[1])} {_num(b[0])},{_num(b[1])}"
            )
        else:
            path = f"M{_num(a[0])},{_num(a[1])} L{_num(b[0])},{_num(b[1])}"
        tip = _link_tip(link, state, observed, pools, planned[link.name])
        data = (
            f'data-link="{_e(link.name)}" data-a="{_e(link.client.device)}" '
            f'data-b="{_e(link.endpoint.device)}" data-state="{state}"'
        )
        dash = f' stroke-dasharray="{STATE_DASH[state]}"' if STATE_DASH[state] else ""
        wires.append(
            f'<g class="link {state}" id="link-{_e(link.name)}" {data}><title>{_e(tip)}</title>'
            f'<path class="hit" d="{path}"/>'
            f'<path class="wire" d="{path}" stroke="{STATE_COLOURS[state]}"{dash}/>'
            f'<text class="lname" x="{_num(mid[0])}" y="{_num(mid[1] - 5)}">{_e(link.name)}</text></g>'
        )
        for role, end, start, finish in (("client", link.client, a, b), ("endpoint", link.endpoint, b, a)):
            label = labels[(link.name, role)]
            width, height = label.size
            x, y = _label_centre(start, control, finish, (width, height), taken)
            taken.append(((x, y), (width, height)))
            right, bottom = max(right, x + width / 2), max(bottom, y + height / 2)
            spans = "".join(
                f'<tspan x="{_num(x)}" y="{_num(y - height / 2 + 3 + _LINE * (k + 1) - 2.5)}"'
                f"{' class=' + chr(34) + 'addr' + chr(34) if k else ''}>{_e(line)}</tspan>"
                for k, line in enumerate(label.lines)
            )
            ends.append(
                f'<g class="end {state}" {data} data-device="{_e(end.device)}">'
                f'<rect x="{_num(x - width / 2)}" y="{_num(y - height / 2)}" width="{_num(width)}" '
                f'height="{_num(height)}" rx="4" stroke="{STATE_COLOURS[state]}"/>'
                f"<text>{spans}</text></g>"
            )
    nodes: list[str] = []
    for device in topology.devices:
        x, y = centres[device]
        width, height = sizes[device]
        right, bottom = max(right, x + width / 2), max(bottom, y + height / 2)
        links = topology.links_of(device)
        pool_class = "pool" if served[device] else "pool idle"
        tip = (
            f"{device}\npool {pools[device]}"
            + ("" if served[device] else " (unused: endpoint of no link)")
            + f"\n{len(links)} link{'s' if len(links) != 1 else ''}: "
            + ", ".join(
                f"{(lk.client if lk.client.device == device else lk.endpoint).interface}"
                f" → {lk.endpoint if lk.client.device == device else lk.client}"
                for lk in links
            )
        )
        nodes.append(
            f'<g class="node" data-device="{_e(device)}" transform="translate({_num(x)},{_num(y)})">'
            f"<title>{_e(tip)}</title>"
            f'<rect x="{_num(-width / 2)}" y="{_num(-height / 2)}" width="{_num(width)}" '
            f'height="{_num(height)}" rx="8"/>'
            f'<text class="dname" y="-3">{_e(device)}</text>'
            f'<text class="{pool_class}" y="13">{_e(pools[device])}</text></g>'
        )
    width, height = right + _MARGIN, bottom + _MARGIN
    return (
        f'<svg id="topo" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_num(width)} {_num(height)}" '
        f'width="{_num(width)}" height="{_num(height)}" role="img" '
        f'aria-label="{_e(topology.name)}: {len(topology.devices)} devices, {len(topology.links)} links">'
        f'<g id="wires">{"".join(wires)}</g><g id="ends">{"".join(ends)}</g>'
        f'<g id="nodes">{"".join(nodes)}</g></svg>'
    )


def _link_tip(
    link: Link,
    state: str,
    observed: Mapping[str, ObservedLink] | None,
    pools: Mapping[str, str],
    planned: tuple[str, str],
) -> str:
    lines = [f"{link.name}: {state}", f"{link.client}  (client: requests it)"]
    lines.append(f"{link.endpoint}  (endpoint: answers, from its pool {pools[link.endpoint.device]})")
    seen = observed.get(link.name) if observed is not None else None
    if seen is not None:
        for end, side in ((link.client, seen.client), (link.endpoint, seen.endpoint)):
            if side is None:
                lines.append(f"{end}: absent")
            else:
                shown = ", ".join(sorted(side.addresses)) or "no address"
                lines.append(f"{end}: {'up' if side.up else 'down'}, {shown}")
    else:
        lines.append(f"planned: {planned[0]} <-> {planned[1]} (ENDPOINT_LINKS fixes them)")
    return "\n".join(lines)


def _addresses_cell(end: ObservedEnd | None, observed: bool, planned: str) -> str:
    if not observed:
        return f'<td class="mono dim">{_e(planned)}</td>'
    if end is None:
        return '<td class="mono dim">absent</td>'
    shown = "<br>".join(_e(a) for a in sorted(end.addresses)) or "no address"
    return f'<td class="mono">{shown}{"" if end.up else " (down)"}</td>'


def _tables(
    topology: Topology,
    observed: Mapping[str, ObservedLink] | None,
    pools: Mapping[str, str],
    served: Mapping[str, int],
    planned: Mapping[str, tuple[str, str]],
) -> str:
    rows = []
    for link in topology.links:
        state = link_state(link, observed)
        seen = observed.get(link.name) if observed is not None else None
        client, endpoint = planned[link.name]
        rows.append(
            f'<tr data-link="{_e(link.name)}" data-a="{_e(link.client.device)}" '
            f'data-b="{_e(link.endpoint.device)}">'
            f'<td class="mono">{_e(link.name)}</td>'
            f'<td class="mono">{_e(link.client.device)}:<b>{_e(link.client.interface)}</b></td>'
            f"{_addresses_cell(seen.client if seen else None, observed is not None, client)}"
            f'<td class="mono">{_e(link.endpoint.device)}:<b>{_e(link.endpoint.interface)}</b></td>'
            f"{_addresses_cell(seen.endpoint if seen else None, observed is not None, endpoint)}"
            f'<td><span class="badge {state}">{state}</span></td></tr>'
        )
    devices = []
    for device in topology.devices:
        links = topology.links_of(device)
        neighbours = sorted(
            {lk.endpoint.device if lk.client.device == device else lk.client.device for lk in links}
        )
        devices.append(
            f'<tr data-device="{_e(device)}"><td class="mono">{_e(device)}</td>'
            f'<td class="mono{"" if served[device] else " dim"}">{_e(pools[device])}</td>'
            f"<td>{len(links)}</td><td>{served[device]}</td>"
            f'<td class="mono">{_e(", ".join(neighbours))}</td></tr>'
        )
    return (
        '<section class="tables"><h2>Links</h2><table id="links"><thead><tr><th>link</th>'
        "<th>client (requests)</th><th>addresses</th><th>endpoint (answers)</th><th>addresses</th>"
        f"<th>state</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<h2>Devices</h2><table id="devices"><thead><tr><th>device</th><th>pool</th><th>links</th>'
        "<th>answers</th><th>neighbours</th></tr></thead>"
        f"<tbody>{''.join(devices)}</tbody></table></section>"
    )


def _legend(counts: Mapping[str, int]) -> str:
    items = []
    for state in ("up", "down", "unknown"):
        dash = f' stroke-dasharray="{STATE_DASH[state]}"' if STATE_DASH[state] else ""
        items.append(
            f'<li class="{state}"><svg width="30" height="10" aria-hidden="true"><line x1="1" y1="5" '
            f'x2="29" y2="5" stroke="{STATE_COLOURS[state]}" stroke-width="3.5"{dash}/></svg>'
            f"{state} <b>{counts.get(state, 0)}</b></li>"
        )
    return f'<ul class="legend" aria-label="link states">{"".join(items)}</ul>'


def render(
    topology: Topology,
    observed: Mapping[str, ObservedLink] | None = None,
    note: str | None = None,
    seed: int = 0,
) -> str:
    """The whole page. `observed` (link name -> state) when a lab is up, None for the planned wiring."""
    wiring = wire(topology)
    pools = {device.name: str(device.pool) for device in wiring.devices}
    served = {device.name: len(device.served) for device in wiring.devices}
    planned = {
        link.name: planned_addresses(wiring.device(link.endpoint.device), link) for link in topology.links
    }
    counts: dict[str, int] = {}
    for link in topology.links:
        state = link_state(link, observed)
        counts[state] = counts.get(state, 0) + 1
    n_devices, n_links = len(topology.devices), len(topology.links)
    summary = (
        f"{n_devices} device{'s' if n_devices != 1 else ''} · {n_links} link{'s' if n_links != 1 else ''}"
    )
    if observed is None:
        mode = "planned wiring: no lab observed; addresses as the endpoints will give them"
    else:
        mode = f"lab up: {counts.get('up', 0)} of {n_links} links up"
    source = f" from {topology.source}" if topology.source is not None else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="nsm-topo graph"><title>{_e(topology.name)} · nsm-topo</title>'
        f"<style>{_CSS}</style></head><body>"
        f'<header><div class="titles"><h1>{_e(topology.name)}</h1>'
        f'<p class="sub"><span id="counts">{summary}</span> · <span class="mode">{_e(mode)}</span></p></div>'
        f"{_legend(counts)}"
        '<div class="tools js-only"><input id="find" type="search" placeholder="find device…" '
        'aria-label="find device"><button id="zoom-in" title="zoom in">+</button>'
        '<button id="zoom-out" title="zoom out">&minus;</button><button id="fit" title="fit (double-click)">'
        "fit</button></div></header>"
        + (f'<p class="note">{_e(note)}</p>' if note else "")
        + f'<main id="canvas">{_svg(topology, observed, pools, served, seed, planned)}'
        '<div id="tip" hidden></div></main>'
        '<p class="hint js-only">scroll to zoom · drag to pan · hover a device or link to trace it</p>'
        f"{_tables(topology, observed, pools, served, planned)}"
        f"<footer>written by <code>nsm-topo graph</code>{_e(source)}; the picture is plain SVG and needs "
        f"no script.</footer><script>{_JS}</script></body></html>\n"
    )


_CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--paper:#f8fafc;--card:#fff;
--mono:"DejaVu Sans Mono",ui-monospace,Menlo,Consolas,monospace;
--sans:system-ui,-apple-system,"Segoe UI","DejaVu Sans",Roboto,sans-serif}
*{box-sizing:border-box}
body{margin:0;background:var(--paper);color:var(--ink);font:14px/1.45 var(--sans)}
header{display:flex;flex-wrap:wrap;align-items:center;gap:12px 28px;padding:14px 22px;background:var(--card);
border-bottom:1px solid var(--line)}
h1{margin:0;font:600 21px/1.2 var(--mono)}
.sub{margin:2px 0 0;color:var(--muted)}
.legend{display:flex;gap:18px;list-style:none;margin:0;padding:0}
.legend li{display:flex;align-items:center;gap:7px;color:var(--muted)}
.legend b{color:var(--ink)}
.tools{margin-left:auto;display:flex;gap:6px}
.tools input{font:13px var(--sans);padding:5px 9px;border:1px solid #cbd5e1;border-radius:6px;width:170px}
.tools button{font:15px var(--sans);min-width:34px;padding:4px 9px;border:1px solid #cbd5e1;
border-radius:6px;background:var(--card);cursor:pointer}
.tools button:hover{background:#f1f5f9}
.js-only{display:none}
.js .js-only{display:flex}
.js p.js-only{display:block}
.note{margin:10px 22px 0;padding:8px 12px;border-left:4px solid #f59e0b;background:#fffbeb;color:#78350f}
#canvas{position:relative;margin:14px 22px 0;border:1px solid var(--line);border-radius:10px;overflow:auto;
max-height:78vh;background-color:var(--card);
background-image:radial-gradient(circle,#e2e8f0 1px,transparent 1.2px);background-size:22px 22px}
.js #canvas{height:74vh;min-height:420px;overflow:hidden}
.js #canvas svg{width:100%;height:100%;cursor:grab;touch-action:none}
.js #canvas svg.dragging{cursor:grabbing}
#topo{display:block;font-family:var(--mono)}
.wire{fill:none;stroke-width:3;stroke-linecap:round;vector-effect:non-scaling-stroke}
.link.unknown .wire{stroke-width:2.5}
.hit{fill:none;stroke:transparent;stroke-width:14;vector-effect:non-scaling-stroke}
.lname{font-size:10px;fill:var(--muted);text-anchor:middle;opacity:0;paint-order:stroke;stroke:#fff;
stroke-width:3px;pointer-events:none}
.link:hover .lname,.link.hl .lname{opacity:1}
.end rect{fill:#fff;stroke-width:1.2}
.end.unknown rect{stroke:#cbd5e1}
.end text{font-size:11px;fill:#334155;text-anchor:middle}
.end .addr{fill:#0369a1}
.node rect{fill:#fff;stroke:#334155;stroke-width:1.6;filter:drop-shadow(0 1px 1.5px rgba(15,23,42,.18))}
.node text{text-anchor:middle}
.dname{font-size:13px;font-weight:700;fill:var(--ink)}
.pool{font-size:11px;fill:#0369a1}
.pool.idle{fill:#94a3b8}
.node:hover rect,.node.hl rect{stroke:#2563eb;stroke-width:2.4}
.node.match rect{fill:#fef9c3;stroke:#ca8a04;stroke-width:2.6}
#topo .node,#topo .link,#topo .end{transition:opacity .12s}
#topo.focus .node:not(.hl),#topo.focus .link:not(.hl),#topo.focus .end:not(.hl){opacity:.16}
#topo.focus .link.hl .wire{stroke-width:4.5}
#tip{position:absolute;z-index:2;pointer-events:none;max-width:460px;padding:7px 10px;border-radius:6px;
background:rgba(15,23,42,.93);color:#f8fafc;font:12px/1.5 var(--mono);white-space:pre-line;
box-shadow:0 4px 14px rgba(15,23,42,.25)}
.hint{margin:6px 22px 0;color:var(--muted);font-size:12px}
.tables{margin:8px 22px 30px}
h2{font:600 15px var(--sans);margin:22px 0 8px}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:8px;
font-size:13px;min-width:60%}
th,td{padding:5px 12px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#f1f5f9;font-weight:600;color:#334155}
tbody tr:hover,tbody tr.hl{background:#eff6ff}
.mono{font-family:var(--mono);font-size:12.5px}
.dim{color:#94a3b8}
.badge{display:inline-block;padding:0 8px;border-radius:9px;font-size:12px;font-weight:600;color:#fff}
.badge.up{background:#16a34a}.badge.down{background:#dc2626}.badge.unknown{background:#94a3b8}
footer{margin:0 22px 24px;color:var(--muted);font-size:12px}
"""

# Progressive enhancement only: the picture above is complete without it.
_JS = """
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var svg = document.getElementById("topo"), canvas = document.getElementById("canvas");
  var tip = document.getElementById("tip");
  if (!svg || !canvas) return;
  var b = svg.viewBox.baseVal, home = {x: b.x, y: b.y, w: b.width, h: b.height}, vb = null;
  function apply() { svg.setAttribute("viewBox", vb.x + " " + vb.y + " " + vb.w + " " + vb.h); }
  function fit() {  // the whole picture, magnified at most 1.4 times
    var r = svg.getBoundingClientRect();
    var w = Math.max(home.w, r.width / 1.4), h = Math.max(home.h, r.height / 1.4);
    vb = {x: home.x - (w - home.w) / 2, y: home.y - (h - home.h) / 2, w: w, h: h}; apply();
  }
  svg.removeAttribute("width"); svg.removeAttribute("height"); fit();
  function scale() {
    var r = svg.getBoundingClientRect();
    return {r: r, s: Math.max(vb.w / r.width, vb.h / r.height)};
  }
  function toUser(cx, cy) {
    var k = scale(), r = k.r, s = k.s;
    return {x: vb.x - (r.width * s - vb.w) / 2 + (cx - r.left) * s,
            y: vb.y - (r.height * s - vb.h) / 2 + (cy - r.top) * s};
  }
  function zoomAt(p, f) {
    var w = vb.w * f;
    if (w < 120 || w > home.w * 8) return;
    vb = {x: p.x - (p.x - vb.x) * f, y: p.y - (p.y - vb.y) * f, w: w, h: vb.h * f}; apply();
  }
  function centre() { return {x: vb.x + vb.w / 2, y: vb.y + vb.h / 2}; }
  svg.addEventListener("wheel", function (e) {
    e.preventDefault(); zoomAt(toUser(e.clientX, e.clientY), Math.exp(e.deltaY * 0.0015));
  }, {passive: false});
  var drag = null;
  svg.addEventListener("pointerdown", function (e) {
    drag = {x: e.clientX, y: e.clientY, vx: vb.x, vy: vb.y, s: scale().s};
    svg.setPointerCapture(e.pointerId); svg.classList.add("dragging");
  });
  svg.addEventListener("pointermove", function (e) {
    if (!drag) return;
    vb.x = drag.vx - (e.clientX - drag.x) * drag.s; vb.y = drag.vy - (e.clientY - drag.y) * drag.s; apply();
  });
  function stop() { drag = null; svg.classList.remove("dragging"); }
  svg.addEventListener("pointerup", stop); svg.addEventListener("pointercancel", stop);
  svg.addEventListener("dblclick", fit);
  document.getElementById("fit").addEventListener("click", fit);
  document.getElementById("zoom-in").addEventListener("click", function () { zoomAt(centre(), 0.75); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoomAt(centre(), 1 / 0.75); });

  var nodes = Array.prototype.slice.call(svg.querySelectorAll(".node"));
  var parts = Array.prototype.slice.call(svg.querySelectorAll("[data-link]"));
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-link]"));
  function focus(devices, links) {
    svg.classList.add("focus");
    nodes.forEach(function (n) { n.classList.toggle("hl", devices.has(n.dataset.device)); });
    parts.forEach(function (p) { p.classList.toggle("hl", links.has(p.dataset.link)); });
    rows.forEach(function (r) { r.classList.toggle("hl", links.has(r.dataset.link)); });
  }
  function unfocus() {
    svg.classList.remove("focus");
    svg.querySelectorAll(".hl").forEach(function (e) { e.classList.remove("hl"); });
    rows.forEach(function (r) { r.classList.remove("hl"); });
  }
  function traceDevice(name) {
    var devices = new Set([name]), links = new Set();
    svg.querySelectorAll(".link").forEach(function (l) {
      if (l.dataset.a === name || l.dataset.b === name) {
        links.add(l.dataset.link); devices.add(l.dataset.a); devices.add(l.dataset.b);
      }
    });
    focus(devices, links);
  }
  function traceLink(el) { focus(new Set([el.dataset.a, el.dataset.b]), new Set([el.dataset.link])); }
  // tooltips: the SVG's <title> texts, shown at once and styled (the titles serve when script is off)
  svg.querySelectorAll(".node, .link").forEach(function (el) {
    var t = el.querySelector("title");
    if (t) { el.dataset.tip = t.textContent; t.remove(); }
  });
  function showTip(el, e) {
    if (drag || !el.dataset.tip) return;
    tip.textContent = el.dataset.tip; tip.hidden = false; moveTip(e);
  }
  function moveTip(e) {
    var r = canvas.getBoundingClientRect(), x = e.clientX - r.left + 14, y = e.clientY - r.top + 14;
    if (x + tip.offsetWidth > r.width - 8) x = e.clientX - r.left - tip.offsetWidth - 14;
    if (y + tip.offsetHeight > r.height - 8) y = e.clientY - r.top - tip.offsetHeight - 14;
    tip.style.left = x + "px"; tip.style.top = y + "px";
  }
  function hideTip() { tip.hidden = true; }
  nodes.forEach(function (n) {
    n.addEventListener("mouseenter", function (e) { traceDevice(n.dataset.device); showTip(n, e); });
    n.addEventListener("mousemove", moveTip);
    n.addEventListener("mouseleave", function () { unfocus(); hideTip(); });
  });
  svg.querySelectorAll(".link, .end").forEach(function (l) {
    l.addEventListener("mouseenter", function (e) {
      traceLink(l); showTip(svg.querySelector('.link[data-link="' + l.dataset.link + '"]'), e);
    });
    l.addEventListener("mousemove", moveTip);
    l.addEventListener("mouseleave", function () { unfocus(); hideTip(); });
  });
  rows.forEach(function (r) {
    r.addEventListener("mouseenter", function () { traceLink(r); });
    r.addEventListener("mouseleave", unfocus);
  });
  document.querySelectorAll("tr[data-device]").forEach(function (r) {
    r.addEventListener("mouseenter", function () { traceDevice(r.dataset.device); });
    r.addEventListener("mouseleave", unfocus);
  });
  var find = document.getElementById("find");
  function matches() {
    var q = find.value.trim().toLowerCase();
    return nodes.filter(function (n) { return q && n.dataset.device.indexOf(q) >= 0; });
  }
  find.addEventListener("input", function () {
    var found = matches();
    nodes.forEach(function (n) { n.classList.toggle("match", found.indexOf(n) >= 0); });
  });
  find.addEventListener("keydown", function (e) {
    if (e.key !== "Enter") return;
    var found = matches();
    if (!found.length) return;
    var m = found[0].transform.baseVal.consolidate().matrix, w = Math.min(home.w, 900);
    var h = w * home.h / home.w;
    vb = {x: m.e - w / 2, y: m.f - h / 2, w: w, h: h}; apply();
  });
})();
"""
