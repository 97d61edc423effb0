"""`nsc-sidecar`: the client sidecar. Configuration comes from the environment only (`--help`)."""

from __future__ import annotations

from nsc_sidecar.agent import run
from nsc_sidecar.settings import ENVIRONMENT, EXAMPLE, IGNORED_LEGACY, SUMMARY, NscSettings
from nsm_sdk.agent.lifecycle import agent_main
from nsm_sdk.protocol.envdoc import help_text


def main() -> None:
    usage = help_text("nsc-sidecar", SUMMARY, ENVIRONMENT, IGNORED_LEGACY, EXAMPLE)
    agent_main("nsc-sidecar", NscSettings.from_env, run, usage=usage)


if __name__ == "__main__":
    main()
