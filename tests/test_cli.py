"""The `livesale` command line: flags it must refuse before doing anything."""

from __future__ import annotations

import pytest

from live.cli import _parser, main
from livesale.auth import Verifier

SECRET = "cli-test-secret-0123456789abcdef0123456789"


@pytest.mark.parametrize("argv", [
    ["token", "--user", ""],
    ["token", "--user", "u" * 129],
    ["token", "--user", "alice", "--ttl", "0"],
    ["token", "--user", "alice", "--ttl", "-60"],
    ["serve", "--workers", "0"],
    ["demo", "--workers", "-2"],
    ["serve", "--port", "70000"],
    ["serve", "--port", "0"],
])
def test_cli_refuses_flags_that_cannot_work(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A token the server would refuse (no user, user over 128 chars, already expired) and a worker
    count or port that cannot serve are usage errors (exit 2), not a token printed or a server started."""
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_token_is_accepted_by_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: object,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`livesale token` prints one token, signed with LIVESALE_SECRET, for the user and role asked."""
    monkeypatch.setenv("LIVESALE_SECRET", SECRET)
    monkeypatch.setenv("LIVESALE_DATA", str(tmp_path))
    assert main(["token", "--user", "alice", "--role", "host", "--ttl", "60"]) == 0
    user = Verifier(SECRET).verify(capsys.readouterr().out.strip())
    assert (user.id, user.role) == ("alice", "host")
