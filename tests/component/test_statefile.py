"""`write_atomically`: a state file is the old content or the new, never half, and no temporary is left."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from nsm_sdk.agent.statefile import write_atomically


def test_the_new_content_replaces_the_old_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "state" / "lab.json"
    write_atomically(path, "old")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomically(path, "new", mode=0o644)
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["lab.json"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "owners.json"
    write_atomically(path, "old")
    with pytest.raises(TypeError):
        write_atomically(path, b"not text")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owners.json"]
