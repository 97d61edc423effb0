"""The sidecars' environment is written down once (`ENVIRONMENT` in each settings module): `--help` and the
README show the same rows, and every row names a variable the settings really read, and no other."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from nsc_sidecar import settings as nsc
from nse_sidecar import settings as nse
from nsm_sdk.agent.metrics import open_metrics
from nsm_sdk.protocol.envdoc import EnvVar, help_text, markdown_table, readme_block

README = Path(__file__).resolve().parents[2] / "README.md"

SIDECARS = {"nsc-sidecar": nsc, "nse-sidecar": nse}
LOADERS = {"nsc-sidecar": nsc.NscSettings.from_env, "nse-sidecar": nse.NseSettings.from_env}

# Environments that, together, take every branch of from_env that reads a variable.
ENVIRONMENTS = {
    "nsc-sidecar": [{"NS_NETWORKSERVICEMESH_IO": "p2p/eth1"}, {"NSM_NETWORK_SERVICES": "kernel://p2p/eth1"}],
    "nse-sidecar": [
        {"ENDPOINT_NETWORK_SERVICE": "p2p", "IP_ADDRESS": "10.60.0.0/24"},
        {"ADVERTISE_NSE_NAME": "p2p", "ADVERTISE_NSE_LABELS": "a=b"},
        {"NSM_SERVICE_NAMES": "p2p", "NSM_LABELS": "a:b", "NSM_CIDR_PREFIX": "172.16.0.0/16"},
    ],
}


class ReadRecorder(Mapping[str, str]):
    """An environment that remembers every variable looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("settings must look variables up by name, so that each can be documented")

    def __len__(self) -> int:
        return len(self._values)


def _documented(rows: tuple[EnvVar, ...]) -> set[str]:
    return {name for row in rows for name in row.names}


def _read_by(program: str) -> set[str]:
    read: set[str] = set()
    for values in ENVIRONMENTS[program]:
        env = ReadRecorder(values)
        LOADERS[program](env)
        open_metrics(env)
        read |= env.read
    return read


@pytest.mark.parametrize("program", sorted(SIDECARS))
def test_readme_table_is_the_one_help_prints(program: str) -> None:
    block = readme_block(README.read_text(), program)
    assert block is not None, f"README.md lost the {program} environment markers"
    assert block == markdown_table(program, SIDECARS[program].ENVIRONMENT), (
        "README.md's table differs from the settings module's ENVIRONMENT: run scripts/sync-readme.py"
    )


@pytest.mark.parametrize("program", sorted(SIDECARS))
def test_every_variable_the_settings_read_is_documented_and_every_documented_one_is_read(
    program: str,
) -> None:
    module = SIDECARS[program]
    read = _read_by(program)
    documented = _documented(module.ENVIRONMENT)
    assert read - documented - set(module.IGNORED_LEGACY) == set(), "read but not in ENVIRONMENT"
    assert documented - read == set(), "in ENVIRONMENT but never read"


@pytest.mark.parametrize("program", sorted(SIDECARS))
def test_help_shows_every_variable_with_its_default_and_example(program: str) -> None:
    module = SIDECARS[program]
    text = help_text(program, module.SUMMARY, module.ENVIRONMENT, module.IGNORED_LEGACY, module.EXAMPLE)
    for row in module.ENVIRONMENT:
        assert "  " + ", ".join(row.names) + "\n" in text
        assert f"      default: {row.default.replace('`', '')}\n" in text
        assert row.example and f"      example: {row.example}\n" in text
    for ignored in module.IGNORED_LEGACY:
        assert ignored in text
    assert text.rstrip().endswith(module.EXAMPLE)


def test_every_example_sets_the_variable_of_its_row() -> None:
    for module in SIDECARS.values():
        for row in module.ENVIRONMENT:
            assert row.example.split("=", 1)[0] in row.names, row
