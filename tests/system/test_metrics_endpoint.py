"""The optional Prometheus endpoints (nsm_sdk/agent/metrics.py) of both sidecars and nsm-local, scraped
over HTTP while a link lives, refreshes and closes."""

from __future__ import annotations

import signal
import sys

from lab import Lab, Process, run, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_p2p_link import P2P

SCRAPE = (
    "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())"
)
CLIENT_METRICS = "127.0.0.1:9464"  # the client's own netns: nothing else listens there
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(process: Process, netns: str | None = None, address: str | None = None) -> Samples:
    """Every sample of /metrics at `address` (default: where the process said it serves), by name+labels."""
    if address is None:
        (serving,) = process.events("metrics.serving")
        address = serving["address"]
    argv = [sys.executable, "-c", SCRAPE, f"http://{address}/metrics"]
    text = run(*(["ip", "netns", "exec", netns, *argv] if netns else argv)).stdout
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_follow_a_links_life_in_both_sidecars_and_nsm_local(lab: Lab) -> None:
    listen = {"NSM_PROMETHEUS_LISTEN_ON": "127.0.0.1:0"}
    manager = lab.nsm_local("--prometheus-listen-on", "127.0.0.1:0")
    lab.apply(P2P)
    dev1, dev2 = lab.netns("device-1"), lab.netns("device-2")
    for netns in (dev1, dev2):
        run("ip", "-n", netns, "link", "set", "lo", "up")
    nse = lab.nse(
        dev2,
        ENDPOINT_NETWORK_SERVICE="p2p",
        ENDPOINT_LABELS="device=device-2",
        IP_ADDRESS="10.60.1.0/24",
        **listen,
    )
    nsc = lab.nsc(
        dev1,
        NS_NETWORKSERVICEMESH_IO="p2p/eth12?link=net-0&peerif=eth21",
        NSM_MAX_TOKEN_LIFETIME="6s",
        NSM_REQUEST_TIMEOUT="2s",
        NSM_LOG_LEVEL="WARN",  # the metrics still see every event; the log shows only warnings
        NSM_PROMETHEUS_LISTEN_ON=CLIENT_METRICS,
    )
    wait_until(lambda: nse.events("metrics.serving") and manager.events("metrics.serving"), 10, "endpoints")
    wait_until(lambda: lab.link_up(dev1, "eth12", "10.60.1.1/30"), 20, "the link")

    wait_until(
        lambda: value(scrape(nsc, dev1, CLIENT_METRICS), "nsm_events_total", event="link.refreshing") >= 2,
        20,
        "two refreshes",
    )
    client = scrape(nsc, dev1, CLIENT_METRICS)
    assert (
        value(client, "nsm_links", state="established") + value(client, "nsm_links", state="refreshing") == 1
    )
    assert value(client, "nsm_links", state="requesting") == 0
    assert value(client, "nsm_link_request_duration_seconds_count", kind="request") == 1
    assert value(client, "nsm_link_request_duration_seconds_count", kind="refresh") >= 1
    assert value(client, "process_open_fds") > 0 and value(client, "nsm_asyncio_tasks") > 0
    assert "event=link.established" not in nsc.log, "NSM_LOG_LEVEL=WARN still applies to the log"

    endpoint, plane = scrape(nse, dev2), scrape(manager)
    assert value(endpoint, "nsm_connections") == 1
    assert value(endpoint, "nsm_events_total", event="request.accepted") == 1
    assert value(endpoint, "nsm_events_total", event="request.refreshed") >= 2
    assert value(plane, "nsm_connections") == 1
    assert value(plane, "nsm_events_total", event="connection.refreshed") >= 2

    nsc.signal(signal.SIGTERM)
    assert nsc.wait(20) == 0, nsc.log
    wait_until(lambda: value(scrape(manager), "nsm_connections") == 0, 10, "nsm-local to forget the link")
    plane, endpoint = scrape(manager), scrape(nse, dev2)
    assert value(plane, "nsm_events_total", event="connection.closed") == 1
    assert value(endpoint, "nsm_connections") == 0


def test_a_bad_or_busy_metrics_address_is_one_line_and_exit_2(lab: Lab) -> None:
    manager = lab.nsm_local("--prometheus-listen-on", "127.0.0.1:0")
    wait_until(lambda: manager.events("metrics.serving"), 10, "nsm-local's metrics")
    busy = manager.events("metrics.serving")[0]["address"]
    for value_, problem in (
        ("9090", "expected host:port"),
        ("example.com:80", "IP address"),
        (busy, "cannot listen"),
    ):
        nse = lab.start(
            "nse-sidecar",
            {
                "ENDPOINT_NETWORK_SERVICE": "p2p",
                "IP_ADDRESS": "10.60.1.0/24",
                "NSM_PROMETHEUS_LISTEN_ON": value_,
            },
        )
        assert nse.wait(10) == 2, nse.log
        lines = nse.log.strip().splitlines()
        assert len(lines) == 1 and "NSM_PROMETHEUS_LISTEN_ON" in lines[0] and problem in lines[0], nse.log
        assert repr(value_) in lines[0]
