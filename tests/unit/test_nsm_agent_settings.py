"""nsm-agent's configuration: one router's two roles from one environment, and an agent host's routers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from nsm_agent.host import Countdown, HostedRouter, HostSettings, HostStatus, playing, set_later
from nsm_agent.router import RouterReadiness, RouterSettings
from nsm_sdk.protocol.errors import ConfigError

CLIENT = {"NS_NETWORKSERVICEMESH_IO": "lab/eth1?link=net-0&peerif=eth1"}
ENDPOINT = {"ENDPOINT_NETWORK_SERVICE": "lab", "ENDPOINT_LABELS": "device=r1", "IP_ADDRESS": "10.60.0.0/24"}


def test_a_router_plays_each_role_whose_variables_are_set() -> None:
    both = RouterSettings.from_env({**CLIENT, **ENDPOINT, "NSM_NAME": "lab-r1"})
    assert both.client is not None and both.endpoint is not None
    assert both.roles == "client+endpoint"
    assert both.name == both.client.name == both.endpoint.name == "lab-r1"
    assert RouterSettings.from_env(ENDPOINT).roles == "endpoint"
    assert RouterSettings.from_env(CLIENT).roles == "client"


def test_a_router_with_no_role_is_refused_naming_the_variables_to_set() -> None:
    with pytest.raises(ConfigError, match=r"NS_NETWORKSERVICEMESH_IO.*ENDPOINT_NETWORK_SERVICE"):
        RouterSettings.from_env({"NSM_NAME": "r1"})


def test_nsm_labels_is_refused_as_ambiguous_between_the_roles() -> None:
    with pytest.raises(ConfigError) as refused:
        RouterSettings.from_env({**CLIENT, **ENDPOINT, "NSM_LABELS": "a=b"})
    assert refused.value.variable == "NSM_LABELS"
    assert "ENDPOINT_LABELS" in refused.value.problem


def test_a_role_variable_error_is_the_sidecars_own() -> None:
    with pytest.raises(ConfigError) as refused:
        RouterSettings.from_env({**ENDPOINT, "IP_ADDRESS": "10.60.0.1/24"})
    assert refused.value.variable == "IP_ADDRESS"


def test_a_router_is_ready_only_while_every_role_it_plays_is() -> None:
    reports: list[bool] = []
    readiness = RouterReadiness(RouterSettings.from_env({**CLIENT, **ENDPOINT}), reports.append)
    client, endpoint = readiness.part("client"), readiness.part("endpoint")
    client(True)
    endpoint(True)
    client(False)
    client(True)
    assert reports == [True, False, True]


def routers_file(tmp_path: Path, routers: object) -> str:
    path = tmp_path / "routers.json"
    path.write_text(json.dumps({"routers": routers}))
    return str(path)


def test_a_routers_file_lays_each_routers_env_over_the_hosts(tmp_path: Path) -> None:
    path = routers_file(
        tmp_path,
        [
            {"netns": "/run/netns/lab-r1", "env": {**ENDPOINT, "POD_NAME": "lab-r1"}},
            {"netns": "/run/netns/lab-r2", "env": CLIENT},
        ],
    )
    settings = HostSettings.load(path, None, {"NSM_REQUEST_TIMEOUT": "7s", "NSM_LOG_LEVEL": "WARN"})
    assert [router.name for router in settings.routers] == ["lab-r1", "lab-r2"], "POD_NAME, else the netns"
    assert settings.request_timeout == 7.0
    assert settings.routers[1].settings.roles == "client"


@pytest.mark.parametrize(
    ("routers", "problem"),
    [
        ([], "non-empty list"),
        ([{"env": ENDPOINT}], "router #0: needs a 'netns' path"),
        ([{"netns": "/run/netns/a", "env": {"X": 1}}], "router #0: 'env' must map names to strings"),
        (
            [
                {"netns": "/run/netns/a", "env": ENDPOINT},
                {"netns": "/run/netns/b", "env": {**ENDPOINT, "NSM_NAME": "a"}},
            ],
            None,
        ),
    ],
)
def test_a_bad_routers_file_is_refused_naming_the_router(
    tmp_path: Path, routers: list[object], problem: str | None
) -> None:
    path = routers_file(tmp_path, routers)
    if problem is None:  # two routers that would have the same name
        with pytest.raises(ConfigError, match="router name 'a' appears twice"):
            HostSettings.load(path, None, {})
        return
    with pytest.raises(ConfigError, match=problem):
        HostSettings.load(path, None, {})


def test_a_routers_bad_variable_is_refused_naming_the_router(tmp_path: Path) -> None:
    path = routers_file(tmp_path, [{"netns": "/run/netns/a", "env": {**ENDPOINT, "IP_ADDRESS": "nonsense"}}])
    with pytest.raises(ConfigError) as refused:
        HostSettings.load(path, None, {})
    assert refused.value.variable == "IP_ADDRESS"
    assert "router #0, /run/netns/a" in refused.value.problem


def test_a_missing_routers_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a routers file"):
        HostSettings.load(str(tmp_path / "none.json"), None, {})


def hosted(name: str, env: dict[str, str]) -> HostedRouter:
    return HostedRouter(f"/run/netns/{name}", RouterSettings.from_env({**env, "NSM_NAME": name}))


def test_clients_start_once_every_hosted_endpoint_has_registered() -> None:
    async def main() -> None:
        routers = (hosted("a", ENDPOINT), hosted("b", {**ENDPOINT, **CLIENT}), hosted("c", CLIENT))
        gate = Countdown(playing(routers, "endpoint"))
        gate.done("a")
        assert not gate.event.is_set()
        gate.done("b")
        assert gate.event.is_set()

    asyncio.run(main())


def test_endpoints_stop_once_every_hosted_client_has_closed_after_stop() -> None:
    async def main() -> None:
        routers = (hosted("a", CLIENT), hosted("b", {**ENDPOINT, **CLIENT}), hosted("c", ENDPOINT))
        closed = Countdown(playing(routers, "client"))
        closed.done("a")
        assert not closed.event.is_set()
        closed.done("b")
        assert closed.event.is_set(), "c has no client to wait for"

    asyncio.run(main())


def test_endpoints_stop_at_the_latest_the_grace_after_stop() -> None:
    async def main() -> None:
        closed = Countdown(playing((hosted("a", CLIENT),), "client"))
        stop = asyncio.Event()
        bound = asyncio.create_task(set_later(closed.event, 0.01, after=stop))
        await asyncio.sleep(0.05)
        assert not closed.event.is_set(), "not before stop"
        stop.set()
        await asyncio.wait_for(bound, 5)
        assert closed.event.is_set()

    asyncio.run(main())


def test_the_status_file_says_how_many_routers_are_ready_and_which_are_not(tmp_path: Path) -> None:
    status = HostStatus(["a", "b", "c"], str(tmp_path / "host.status"))
    status.update("b", True)
    status.write()
    written = json.loads((tmp_path / "host.status").read_text())
    assert (written["routers"], written["ready"], written["not_ready"]) == (3, 1, ["a", "c"])
    status.remove()
    assert not (tmp_path / "host.status").exists()


def test_a_hosts_shutdown_backstop_grows_with_its_links(tmp_path: Path) -> None:
    two_links = {
        "NS_NETWORKSERVICEMESH_IO": "lab/eth1?link=net-0&peerif=eth1,lab/eth2?link=net-1&peerif=eth1"
    }
    path = routers_file(
        tmp_path,
        [{"netns": f"/run/netns/r{i}", "env": {**two_links, "NSM_NAME": f"r{i}"}} for i in range(500)],
    )
    settings = HostSettings.load(path, None, {})
    assert settings.links == 1000
    assert settings.shutdown_backstop == settings.request_timeout + 5 + 0.02 * 1000


def test_routers_sharing_one_readiness_file_are_refused(tmp_path: Path) -> None:
    routers = [{"netns": f"/run/netns/r{i}", "env": {**ENDPOINT, "NSM_NAME": f"r{i}"}} for i in range(2)]
    with pytest.raises(ConfigError, match="several routers would share this file"):
        HostSettings.load(routers_file(tmp_path, routers), None, {"NSM_READY_FILE": "/run/ready"})
