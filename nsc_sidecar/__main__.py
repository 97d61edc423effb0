"""`nsc-sidecar`: the client sidecar. Configuration comes from the environment only (see settings.py)."""

from __future__ import annotations

from nsc_sidecar.agent import run
from nsc_sidecar.settings import NscSettings
from nsm_sdk.agent.lifecycle import agent_main


def main() -> None:
    agent_main("nsc-sidecar", NscSettings.from_env, run)


if __name__ == "__main__":
    main()
