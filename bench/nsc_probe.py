"""`nsc-sidecar` as it is, with its calls to the manager timed (for bench/versus_go.py).

The sidecar logs no event when its Request leaves, only when the link it got is verified, and its log
stamps have milliseconds; this runs the unchanged program (`nsc_sidecar.__main__.main`) with
`NsmClient.request` and `NsmClient.held_connections` wrapped so that each call logs one more line in the
sidecar's own format when it returns, and `ReadinessFile.set` so that becoming ready does too:

    ts=... level=info agent=nsc-sidecar event=probe.request start=1764750000.123456 ms=12.345 ok=true
    ts=... level=info agent=nsc-sidecar event=probe.ready at=1764750000.140001

`start` is the wall clock when the call began, `ms` its duration (monotonic clock) as the sidecar's Link
sees it: waiting for the channel, token metadata, the RPC, the reply's policy checks; `at` is right after
NSM_READY_FILE was written. Nothing else changes: these modules are imported by the sidecar anyway, and a
wrapper costs microseconds per call.

    ip netns exec NS env NSM_...=... python bench/nsc_probe.py
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nsc_sidecar.__main__ import main as nsc_main
from nsm_sdk.agent.lifecycle import ReadinessFile
from nsm_sdk.agent.logs import EventLog
from nsm_sdk.agent.nsm_client import NsmClient

_log = EventLog("bench.probe")


def _timed(event: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, start = time.time(), time.perf_counter()
        ok = False
        try:
            result = await method(*args, **kwargs)
            ok = True
            return result
        finally:
            elapsed = (time.perf_counter() - start) * 1000
            _log.info(event, start=f"{wall:.6f}", ms=f"{elapsed:.3f}", ok=str(ok).lower())

    return wrapper


def _readiness_timed(method: Callable[[ReadinessFile, bool], None]) -> Callable[[ReadinessFile, bool], None]:
    @functools.wraps(method)
    def wrapper(self: ReadinessFile, ready: bool) -> None:
        became_ready = ready and not self.ready
        method(self, ready)
        if became_ready:
            _log.info("probe.ready", at=f"{time.time():.6f}")

    return wrapper


def main() -> None:
    ReadinessFile.set = _readiness_timed(ReadinessFile.set)  # type: ignore[method-assign,assignment]
    NsmClient.request = _timed("probe.request", NsmClient.request)  # type: ignore[method-assign,assignment]
    NsmClient.held_connections = _timed(  # type: ignore[method-assign,assignment]
        "probe.lookup", NsmClient.held_connections
    )
    nsc_main()


if __name__ == "__main__":
    main()
