"""`nsc-sidecar`: the client sidecar. Configuration comes from the environment only (see settings.py)."""

from __future__ import annotations

import asyncio
import os
import sys

from nsc_sidecar.agent import run
from nsc_sidecar.settings import NscSettings
from nsm_sdk.agent.lifecycle import run_agent
from nsm_sdk.agent.logs import setup_logging
from nsm_sdk.protocol.errors import ConfigError


def main() -> None:
    try:
        settings = NscSettings.from_env(os.environ)
    except ConfigError as exc:
        print(f"nsc-sidecar: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging("nsc-sidecar", settings.log_level)
    asyncio.run(run_agent(lambda stop: run(settings, stop), backstop=settings.request_timeout + 5))


if __name__ == "__main__":
    main()
