"""The pages over plain HTTP: routes, the Content-Security-Policy, the 404 page, the demo's sign-in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from live.app import create_app
from live.demo import seed_on_startup
from live.pages import WEB_DIR
from livesale.auth import Verifier
from livesale.config import Settings
from livesale.web import Runner
from tests.helpers import Api, spawn_server, start_demo_server, stop_server


def _script_src(csp: str) -> str:
    return next(d for d in csp.split(";") if d.strip().startswith("script-src"))


async def test_every_page_has_a_csp_without_inline_script(api: Api) -> None:
    """/, /s/{stream}, /host/{stream}, /g/{group} and the 404 page are HTML with a CSP whose script-src
    is 'self' only, and the HTML itself holds no inline script and no inline event handler."""
    s = await api.setup_sale()
    for path, status in (("/", 200), (f"/s/{s['stream_id']}", 200), (f"/host/{s['stream_id']}", 200),
                         ("/g/gr0123", 200), ("/s/st000000000000", 404), ("/host/nope", 404)):
        async with api.session.get(api.server.url + path) as r:
            body = await r.text()
            assert r.status == status, path
            assert r.content_type == "text/html", path
            csp = r.headers["Content-Security-Policy"]
            assert _script_src(csp).split() == ["script-src", "'self'"], csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert not re.search(r"<script(?![^>]*\bsrc=)", body), f"inline script on {path}"
            assert not re.search(r"\son[a-z]+\s*=", body), f"inline handler on {path}"
            assert "style=" not in body, f"inline style on {path}"


async def test_unknown_stream_page_is_a_404_html_page(api: Api) -> None:
    """A viewer page for a stream that does not exist is a 404 whose HTML says so (not the API's JSON)."""
    async with api.session.get(api.server.url + "/s/st0123456789ab") as r:
        assert r.status == 404 and r.content_type == "text/html"
        assert "No such stream" in await r.text()


async def test_assets_are_served_with_their_types_and_unknown_ones_404(api: Api) -> None:
    """ES modules as JavaScript (browsers refuse modules of other types under nosniff), CSS as CSS, an
    ETag honoured with 304; a missing asset is a 404 and paths cannot leave the folder."""
    async with api.session.get(api.server.url + "/assets/js/viewer.js") as r:
        assert r.status == 200 and r.content_type == "text/javascript"
        etag = r.headers["ETag"]
    async with api.session.get(api.server.url + "/assets/js/viewer.js", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    async with api.session.get(api.server.url + "/assets/app.css") as r:
        assert r.status == 200 and r.content_type == "text/css"
    for path in ("/assets/nope.js", "/assets/../pages.py", "/assets/%2e%2e/pages.py"):
        async with api.session.get(api.server.url + path) as r:
            assert r.status == 404, path


async def test_user_text_never_goes_in_as_html() -> None:
    """No script of the pages writes HTML from strings: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write or eval; user text goes in through textContent (live/web/assets/js/dom.js)."""
    for js in (WEB_DIR / "assets" / "js").glob("*.js"):
        text = js.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert banned not in text, f"{banned} in {js.name}"


async def test_dev_token_is_404_under_serve(api: Api) -> None:
    """`livesale serve` has no demo sign-in: POST /dev/token is a 404 like any unknown path, and mints nothing."""
    st, body = await api.call("POST", "/dev/token", json={"user": "mallory", "role": "host"})
    assert st == 404 and body["error"] == "not_found"


async def test_dev_token_under_demo_signs_in(settings: Settings) -> None:
    """Under `livesale demo`, POST /dev/token {user, role} returns a token the API accepts for that user and
    role; admin and malformed bodies are 422 and mint nothing."""
    async with start_demo_server(settings) as srv, Api(srv) as api:
        st, body = await api.call("POST", "/dev/token", json={"user": "bob", "role": "viewer"})
        assert st == 200
        user = Verifier(settings.secret).from_header("Bearer " + body["token"])
        assert (user.id, user.role) == ("bob", "viewer")
        st, body = await api.call("POST", "/dev/token", json={"user": "hana", "role": "host"})
        st, stream = await api.call("POST", "/api/streams", token=body["token"], json={"title": "Mine"})
        assert st == 201 and stream["host"] == "hana"
        for bad in ({"user": "x", "role": "admin"}, {"user": "", "role": "viewer"}, {"user": 5}, {"role": "viewer"}):
            st, body = await api.call("POST", "/dev/token", json=bad)
            assert st == 422 and body["error"] == "validation_error" and "token" not in body, bad
        st, body = await api.call("POST", "/dev/token", data=b"not json")
        assert st == 400


def test_web_folder_is_package_data() -> None:
    """Every file under live/web is covered by pyproject's package-data globs, so an installed livesale
    serves the same pages as a checkout."""
    import tomllib
    from fnmatch import fnmatch

    root = Path(__file__).resolve().parent.parent
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    # Each folder is a listed package (else setuptools warns on every install), its files its globs'.
    dirs = {pkg: root / pkg.replace(".", "/") for pkg in tool["package-data"] if pkg.split(".")[0] == "live"}
    for path in WEB_DIR.rglob("*"):
        if path.is_dir():
            assert path.relative_to(root).as_posix().replace("/", ".") in tool["packages"], path
        if path.is_file():
            assert any(path.parent == d and any(fnmatch(path.name, g) for g in tool["package-data"][pkg])
                       for pkg, d in dirs.items()), f"{path.relative_to(root)} is not in package-data"


async def test_demo_prints_the_three_page_urls_first(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """`make run` (livesale demo) prints the landing, a viewer page and the host console first, and each
    of them is a page the server serves."""
    app = create_app(settings)
    app.on_startup.append(seed_on_startup)
    runner = Runner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await runner.cleanup()
    lines = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert [words[0] for words in lines[1:4]] == ["landing:", "viewer", "host"], lines[:4]
    urls = [words[-1] if words[0] == "landing:" else words[2] for words in lines[1:4]]
    base = f"http://{settings.host}:{settings.port}"
    assert urls[0] == base + "/" and urls[1].startswith(base + "/s/st") and urls[2].startswith(base + "/host/st")
    async with start_demo_server(settings) as srv, Api(srv) as api:
        for url in urls:
            async with api.session.get(url.replace(base, srv.url)) as r:
                assert r.status == 200 and r.content_type == "text/html", url


def test_demo_sign_in_works_on_every_worker(settings: Settings) -> None:
    """`livesale demo --workers 2`: POST /dev/token answers on every worker (each new connection may
    land on either), while `livesale serve --workers 2` answers 404 on all of them."""
    import urllib.error
    import urllib.request

    def post_token(url: str) -> int:
        req = urllib.request.Request(url + "/dev/token", data=b'{"user": "zoe", "role": "viewer"}',
                                     headers={"Content-Type": "application/json", "Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    for command, expected in (("demo", 200), ("serve", 404)):
        srv = spawn_server(settings, workers=2, command=command)
        try:
            assert {post_token(srv.url) for _ in range(24)} == {expected}, command
        finally:
            stop_server(srv)
