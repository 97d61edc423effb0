"""`nse-sidecar`: the endpoint sidecar. Configuration comes from the environment only (see settings.py)."""

from __future__ import annotations

import asyncio
import os
import sys

from nse_sidecar.agent import run
from nse_sidecar.settings import NseSettings
from nsm_sdk.agent.lifecycle import run_agent
from nsm_sdk.agent.logs import setup_logging
from nsm_sdk.protocol.errors import ConfigError


def main() -> None:
    try:
        settings = NseSettings.from_env(os.environ)
    except ConfigError as exc:
        print(f"nse-sidecar: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging("nse-sidecar", settings.log_level)
    asyncio.run(run_agent(lambda stop: run(settings, stop), backstop=settings.request_timeout + 5))


if __name__ == "__main__":
    main()
