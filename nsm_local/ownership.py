"""Who owns what in nsm-local: connections, link names, and the namespaces links go into.

nsmgr's policies check that a path is signed and chained; they do not tie a connection to the identity
that opened it (sdk v1.18.0 keeps such a map only for an optional monitor policy). nsm-local does:

* a connection belongs to the caller that opened it: only that identity may refresh, close or monitor
  it. The owners are kept in a small state file, so ownership survives a restart of nsm-local (clients
  re-adopt their links by refreshing);
* a client's link goes into the caller's own network namespace, and an endpoint offers only its own
  (the namespace fd must be the one the process runs in, as the kernel reports it);
* an interface name in a namespace belongs to the connection that holds it; another connection asking
  for it is refused, never handed the existing link.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from nsm_sdk.agent.statefile import write_atomically
from nsm_sdk.identity.policies import PermissionDenied
from nsm_sdk.identity.tokens import TokenError, decode_unverified
from nsm_sdk.protocol.errors import NsmError


class LinkNameInUse(NsmError):
    """An interface name a live connection already holds in that namespace."""

    grpc_status = "ALREADY_EXISTS"


def check_caller_subject(token: str, caller: str | None, secure: bool) -> None:
    """The caller's token must name the caller we authenticated (a token is signed with the TLS key,
    `prev_token_signed`; this also keeps its `sub` honest, which the registry's ownership relies on)."""
    if not secure or caller is None:
        return
    try:
        subject = decode_unverified(token).get("sub")
    except TokenError:
        subject = None
    if subject != caller:
        raise PermissionDenied("caller_subject", f"token subject {subject!r} is not the TLS peer {caller}")


def check_own_namespace(who: str, offered: int, own: int | None) -> None:
    """A namespace fd must be the namespace the process itself runs in (`own`, None: unknown)."""
    if own is not None and offered != own:
        raise PermissionDenied(
            "own_namespace", f"{who} offered network namespace {offered}, but runs in namespace {own}"
        )


@dataclass(frozen=True, slots=True)
class LinkEnd:
    netns: int
    ifname: str

    def __str__(self) -> str:
        return f"{self.ifname} in netns {self.netns}"


SAVE_AFTER = 0.2
"""Seconds from a change of the owners to the rewrite of their file (`ConnectionOwners._save_soon`)."""


class ConnectionOwners:
    """nsmgr connection id -> owner identity, persisted (best effort) in `state_file`."""

    def __init__(self, state_file: Path | None) -> None:
        self._file = state_file
        self._owners: dict[str, str] = {}
        self._pending: asyncio.TimerHandle | None = None
        self.load_problem: str | None = None
        if state_file is not None and state_file.exists():
            try:
                data = json.loads(state_file.read_text() or "{}")
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                self._owners = {str(k): str(v) for k, v in data.items()}
            except (OSError, ValueError) as exc:
                self.load_problem = f"{state_file} could not be read ({exc}); connection owners start empty"

    def __repr__(self) -> str:
        return f"<ConnectionOwners {len(self._owners)}>"

    def owner(self, conn_id: str) -> str | None:
        return self._owners.get(conn_id)

    def check(self, conn_id: str, caller: str | None) -> None:
        """PermissionDenied unless the connection is unknown or `caller` owns it."""
        owner = self._owners.get(conn_id)
        if owner is not None and owner != caller:
            detail = f"connection {conn_id} belongs to {owner}, not {caller}"
            raise PermissionDenied("connection_owner", detail)

    def set(self, conn_id: str, owner: str | None) -> None:
        if owner is None or self._owners.get(conn_id) == owner:
            return
        self._owners[conn_id] = owner
        self._save_soon()

    def forget(self, conn_id: str) -> None:
        if self._owners.pop(conn_id, None) is not None:
            self._save_soon()

    def _save_soon(self) -> None:
        """Write the file `SAVE_AFTER` seconds after a change, once for all the changes made meanwhile:
        a lab of two thousand links would otherwise rewrite the whole map two thousand times. Without a
        running event loop, at once. A crash inside that window loses only the last changes: an unknown
        connection is anyone's to refresh, and the refresh records its owner again."""
        if self._file is None or self._pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._save()
            return
        self._pending = loop.call_later(SAVE_AFTER, self._save)

    def flush(self) -> None:
        """Write now what is waiting (nsm-local's shutdown)."""
        if self._pending is not None:
            self._pending.cancel()
            self._save()

    def _save(self) -> None:
        self._pending = None
        if self._file is None:
            return
        write_atomically(self._file, json.dumps(self._owners))
