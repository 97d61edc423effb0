"""`socket_problem`: what is wrong at a socket URL, said so that a person knows what to do."""

from __future__ import annotations

import socket
from pathlib import Path

from nsm_sdk.transport.probe import socket_problem


def test_a_listening_unix_socket_has_no_problem(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "s.sock"))
        server.listen()
        assert socket_problem(f"unix://{tmp_path}/s.sock") is None


def test_a_missing_socket_is_named_missing(tmp_path: Path) -> None:
    assert socket_problem(f"unix://{tmp_path}/none.sock") == "no socket there (no such file)"


def test_a_socket_nobody_listens_on_is_called_stale(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_behind:
        left_behind.bind(str(tmp_path / "s.sock"))
        problem = socket_problem(f"unix://{tmp_path}/s.sock")
    assert problem is not None and problem.startswith("the socket file exists but nothing listens on it")


def test_a_regular_file_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert socket_problem(f"unix://{tmp_path}/file") == "the file there is not a socket"


def test_a_tcp_port_nothing_listens_on_refuses(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert socket_problem(f"tcp://127.0.0.1:{port}") == "the port refuses connections (nothing listens there)"


def test_a_listening_tcp_port_has_no_problem() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert socket_problem(f"tcp://127.0.0.1:{server.getsockname()[1]}") is None


def test_a_url_of_another_scheme_says_what_is_wrong_with_it() -> None:
    problem = socket_problem("http://example.invalid/")
    assert problem is not None and 'scheme must be "unix" or "tcp"' in problem
