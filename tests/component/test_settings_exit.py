"""The sidecar programs themselves on hostile environments: exit code 2 and exactly one line on stderr that
names the variable, never a traceback. A few generated examples only (each starts a Python process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nsc_sidecar.settings import NscSettings
from nse_sidecar.settings import NseSettings
from nsm_sdk.protocol.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent.parent / "unit"))
from settings_strategies import NSC_VARIABLES, NSE_VARIABLES, hostile_env

PROGRAMS = {
    "nsc-sidecar": ("nsc_sidecar", NscSettings, NSC_VARIABLES, {"NSM_NETWORK_SERVICES": "kernel://p2p/eth1"}),
    "nse-sidecar": ("nse_sidecar", NseSettings, NSE_VARIABLES, {"NSM_SERVICE_NAMES": "p2p"}),
}


def passable(env: dict[str, str]) -> bool:
    """What an environment can carry: no NUL, and text that maps back to bytes."""
    try:
        return all(b"\0" not in os.fsencode(value) for value in env.values())
    except UnicodeEncodeError:
        return False


def refusal(program: str, spoiled: dict[str, str]) -> ConfigError:
    """The ConfigError the program's settings raise in-process (the case is skipped if they load)."""
    _, settings_class, _, base = PROGRAMS[program]
    try:
        settings_class.from_env({**base, **spoiled})
    except ConfigError as error:
        return error
    assume(False)
    raise AssertionError("unreachable")


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(sorted(PROGRAMS)).flatmap(lambda p: st.tuples(st.just(p), hostile_env(PROGRAMS[p][2])))
)
def test_sidecar_exits_2_with_one_line_naming_the_variable(case: tuple[str, dict[str, str]]) -> None:
    program, spoiled = case
    assume(passable(spoiled))
    error = refusal(program, spoiled)
    module, _, _, base = PROGRAMS[program]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **base, **spoiled}
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, timeout=30, check=False
    )
    stderr = done.stderr.decode("utf-8", errors="backslashreplace")
    assert done.returncode == 2, stderr
    assert b"Traceback" not in done.stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith(f"{program}: {error.variable}="), (lines, error)
