"""nsm-local's own flags under hostile values: `serve` either starts (here: reaches the control plane,
replaced by a stub) or exits 2 with one line naming the flag and its value (or argparse's usage and its
one error line, for a value it cannot even take apart). Never a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nsm_local.__main__ as cli

FLAGS = ("--listen", "--registration-expiry", "--svid-ttl", "--workload-api", "--prometheus-listen-on")
EXAMPLES = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["0s", "-1s", "1h", "99999999999999999999h", "unix:///", "unix://rel", "tcp://h:1", ":0"]
    ),
)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What `serve` would have run: the control plane is replaced by a stub that records its settings."""
    seen: list[Any] = []

    async def control_plane(settings: Any, stop: asyncio.Event, ready: Any = None, **_: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(cli, "serve_control_plane", control_plane)
    monkeypatch.setattr(cli, "setup_logging", lambda *_: None)
    return seen


@EXAMPLES
@given(flag=st.sampled_from(FLAGS), value=values)
def test_any_serve_flag_value_starts_or_is_one_line_naming_the_flag(
    flag: str, value: str, started: list[Any], capsys: pytest.CaptureFixture[str], tmp_path_factory: Any
) -> None:
    state = tmp_path_factory.mktemp("state")
    argv = [
        "serve",
        "--insecure",
        "--state-dir",
        str(state),
        "--listen",
        f"unix://{state}/nsm.sock",
        flag,
        value,
    ]
    started.clear()
    try:
        cli.main(argv)
    except SystemExit as exit_:
        err = capsys.readouterr().err
        assert exit_.code == 2, err
        lines = err.strip().splitlines()
        assert "Traceback" not in err, err
        if lines[-1].startswith("nsm-local serve: error: argument"):  # argparse's own (usage, then one line)
            assert flag in lines[-1], err
            return
        assert len(lines) == 1, err
        assert lines[0].startswith(f"nsm-local: {flag}=") and repr(value) in lines[0], lines[0]
        return
    assert len(started) == 1, "a value it accepts starts the control plane"
