"""`nse-sidecar`: the endpoint sidecar. Configuration comes from the environment only (see settings.py)."""

from __future__ import annotations

from nse_sidecar.agent import run
from nse_sidecar.settings import NseSettings
from nsm_sdk.agent.lifecycle import agent_main


def main() -> None:
    agent_main("nse-sidecar", NseSettings.from_env, run)


if __name__ == "__main__":
    main()
