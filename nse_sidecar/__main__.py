"""`nse-sidecar`: the endpoint sidecar. Configuration comes from the environment only (`--help`)."""

from __future__ import annotations

from nse_sidecar.agent import run
from nse_sidecar.settings import ENVIRONMENT, EXAMPLE, IGNORED_LEGACY, SUMMARY, NseSettings
from nsm_sdk.agent.lifecycle import agent_main
from nsm_sdk.protocol.envdoc import help_text


def main() -> None:
    usage = help_text("nse-sidecar", SUMMARY, ENVIRONMENT, IGNORED_LEGACY, EXAMPLE)
    agent_main("nse-sidecar", NseSettings.from_env, run, usage=usage)


if __name__ == "__main__":
    main()
