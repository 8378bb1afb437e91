"""The import layering of docs/design.md holds (import-linter's contracts in .importlinter), and the
checker sees a broken contract when there is one."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_every_layering_contract_is_kept(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """realtime and commerce never import each other or live, monitoring imports nothing of ours,
    livesale imports no feature package, load imports only livesale plumbing."""
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True, no_logo=True) == 0


def test_the_checker_reports_an_import_that_breaks_a_contract(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A contract our code does break (live imports commerce, by design) is reported broken: the
    contracts above are checked against the real import graph."""
    monkeypatch.chdir(ROOT)
    config = tmp_path / "broken.ini"
    config.write_text("[importlinter]\nroot_packages =\n    live\n    commerce\n\n"
                      "[importlinter:contract:x]\nname = live without commerce\ntype = forbidden\n"
                      "source_modules = live\nforbidden_modules = commerce\n")
    assert lint_imports(config_filename=str(config), no_cache=True, no_logo=True) == 1
