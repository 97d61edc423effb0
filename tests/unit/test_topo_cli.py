"""The `nsm-topo` command line: what it writes and prints, and bad input as one line with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nsm_topo.__main__ import main


def test_random_writes_the_topology_and_one_config_per_router(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["random", "10", "0", "--seed", "1", "-o", str(tmp_path)])
    assert "10 routers, 9 links" in capsys.readouterr().out
    assert (tmp_path / "random.yml").is_file()
    assert len(list((tmp_path / "config-random").iterdir())) == 10


def test_show_prints_the_network_service_and_each_devices_sidecars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "three.yml"
    path.write_text('links:\n  - endpoints: ["r1:eth1", "r2:eth1"]\n  - endpoints: ["r2:eth2", "r3:eth1"]\n')
    main(["show", str(path)])
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["networkservice"]["metadata"]["name"] == "three"
    assert shown["devices"]["r1"]["nsc-sidecar"] == {
        "NS_NETWORKSERVICEMESH_IO": "three/eth1?link=net-0&peerif=eth1"
    }
    assert "nsc-sidecar" not in shown["devices"]["r3"]
    assert shown["devices"]["r3"]["nse-sidecar"]["IP_ADDRESS"] == "10.60.2.0/24"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["random", "1", "0"], "at least 2 routers"),
        (["random", "4", "9"], "room for 3 more links"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and says in err and err.startswith("nsm-topo: ")


def test_a_bad_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yml"
    path.write_text('links:\n  - endpoints: ["r1:eth1", "r2:eth1", "r3:eth1"]\n')
    with pytest.raises(SystemExit) as exited:
        main(["show", str(path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "net-0" in err


def test_the_triangle_example_wires_three_links_and_has_a_config_per_router() -> None:
    from nsm_topo.local.frr import daemons_for, loopback_of
    from nsm_topo.topology import load_topology
    from nsm_topo.wiring import wire

    path = Path(__file__).parents[2] / "examples" / "triangle" / "topology.yml"
    topology = load_topology(path)
    wiring = wire(topology)
    assert [(link.client.device, link.endpoint.device) for link in topology.links] == [
        ("frr-a", "frr-b"),
        ("frr-b", "frr-c"),
        ("frr-c", "frr-a"),
    ]
    assert {d.name: d.nse_env["IP_ADDRESS"] for d in wiring.devices} == {
        "frr-a": "10.60.0.0/24",
        "frr-b": "10.60.1.0/24",
        "frr-c": "10.60.2.0/24",
    }
    for device in topology.devices:
        config = topology.config_file(device)
        assert config is not None and config.is_file()
        text = config.read_text()
        assert daemons_for(text) == ["zebra", "ospfd"] and loopback_of(text) is not None
