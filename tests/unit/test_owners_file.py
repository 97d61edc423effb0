"""nsm-local's connection owners file: written once for a burst of changes, and at once on flush."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from nsm_local import ownership
from nsm_local.ownership import ConnectionOwners


def test_a_burst_of_changes_is_written_once_after_a_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "owners.json"
    writes: list[dict[str, str]] = []
    real_save = ConnectionOwners._save

    def counting_save(self: ConnectionOwners) -> None:
        real_save(self)
        writes.append(json.loads(path.read_text()))

    monkeypatch.setattr(ConnectionOwners, "_save", counting_save)
    monkeypatch.setattr(ownership, "SAVE_AFTER", 0.05)

    async def main() -> None:
        owners = ConnectionOwners(path)
        for number in range(100):
            owners.set(f"c{number}", "spiffe://nsm.local/a")
        owners.forget("c0")
        assert not path.exists(), "nothing written yet"
        await asyncio.sleep(0.2)
        assert len(writes) == 1 and len(writes[0]) == 99
        owners.set("late", "spiffe://nsm.local/b")
        owners.flush()
        assert writes[-1]["late"] == "spiffe://nsm.local/b", "flush writes at once"
        await asyncio.sleep(0.2)
        assert len(writes) == 2, "nothing left pending after a flush"

    asyncio.run(main())
    assert ConnectionOwners(path).owner("c5") == "spiffe://nsm.local/a"


def test_without_a_running_loop_a_change_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "owners.json"
    ConnectionOwners(path).set("c1", "spiffe://nsm.local/a")
    assert json.loads(path.read_text()) == {"c1": "spiffe://nsm.local/a"}
