"""The web pages (docs/pages.md): landing, viewer page, host console, group deep link, and the demo's
sign-in. Plain HTML, CSS and ES modules from `live/web/`, read once at startup; no build step.

Every page carries a Content-Security-Policy whose `script-src` is `'self'` only: the pages run no
inline script and no inline event handler, and user text reaches the DOM only through textContent.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from live import keys
from livesale.auth import mint
from livesale.errors import Unprocessable
from livesale.services import SERVICES
from livesale.web import guarded, json_response, read_json

WEB_DIR = Path(__file__).with_name("web")

CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: https:",  # product image_url may point at a shop's CDN
    "media-src 'self' blob:",
    "connect-src 'self'",  # the API, /ws (CSP3: 'self' covers ws: on the same host) and WHIP/WHEP
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
    "form-action 'self'",
))
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
    # The host console asks for the camera and microphone; nothing else may.
    "Permissions-Policy": "camera=(self), microphone=(self), geolocation=()",
}

DEV_TOKENS = web.AppKey("dev_tokens", bool)
DEV_ROLES = ("viewer", "host", "moderator")  # never admin, even in the demo
DEV_TOKEN_TTL_S = 86400


@dataclass(frozen=True)
class _File:
    body: bytes
    content_type: str
    etag: str


def _load(root: Path) -> dict[str, _File]:
    files: dict[str, _File] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            body = path.read_bytes()
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".js":
                ctype = "text/javascript"  # ES modules need a JavaScript MIME type (nosniff)
            files[path.relative_to(root).as_posix()] = _File(body, ctype, '"' + hashlib.sha1(body).hexdigest()[:16] + '"')
    return files


class Pages:
    def __init__(self, root: Path = WEB_DIR) -> None:
        self.files = _load(root)

    def respond(self, request: web.Request, name: str, status: int = 200) -> web.Response:
        f = self.files[name]
        headers = dict(PAGE_HEADERS, ETag=f.etag)
        if status == 200 and request.headers.get("If-None-Match") == f.etag:
            return web.Response(status=304, headers=headers)
        charset = "utf-8" if f.content_type.startswith("text/") else None
        return web.Response(body=f.body, status=status, content_type=f.content_type, charset=charset,
                            headers=headers)

    async def landing(self, request: web.Request) -> web.Response:
        return self.respond(request, "pages/index.html")

    async def _stream_page(self, request: web.Request, name: str) -> web.Response:
        svc = request.app[SERVICES]
        if not await svc.redis.exists(keys.meta(request.match_info["stream"])):
            return self.respond(request, "pages/notfound.html", 404)
        return self.respond(request, name)

    async def viewer(self, request: web.Request) -> web.Response:
        return await self._stream_page(request, "pages/viewer.html")

    async def host(self, request: web.Request) -> web.Response:
        return await self._stream_page(request, "pages/host.html")

    async def group(self, request: web.Request) -> web.Response:
        # Whether the group exists is the page's own GET /api/groups/{gid}: group-buys live in commerce.
        return self.respond(request, "pages/group.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = "assets/" + request.match_info["path"]
        if name not in self.files:
            raise web.HTTPNotFound()
        return self.respond(request, name)


async def dev_token(request: web.Request) -> web.Response:
    """`POST /dev/token {user, role}` → `{token}`: the pages' sign-in, only under `livesale demo`; under
    `livesale serve` it is a 404 like any unknown path."""
    if not request.app.get(DEV_TOKENS, False):
        raise web.HTTPNotFound()
    body = await read_json(request)
    user, role = body.get("user"), body.get("role", "viewer")
    if not isinstance(user, str) or not 1 <= len(user.strip()) <= 64 or not user.strip().isprintable():
        raise Unprocessable("user must be 1-64 printable characters")
    if role not in DEV_ROLES:
        raise Unprocessable(f"role must be one of {', '.join(DEV_ROLES)}")
    settings = request.app[SERVICES].settings
    ttl = min(DEV_TOKEN_TTL_S, settings.jwt_max_lifetime_s or DEV_TOKEN_TTL_S)  # docs/auth.md's maximum
    return json_response({"token": mint(settings.secret, user.strip(), role, ttl), "user": user.strip(),
                          "role": role, "expires_in": ttl})


def enable_dev_tokens(app: web.Application) -> None:
    """What `livesale demo` turns on (and the browser tests): `POST /dev/token` mints tokens for anyone."""
    app[DEV_TOKENS] = True


def setup(app: web.Application) -> None:
    pages = Pages()
    r = app.router
    r.add_get("/", guarded(pages.landing))
    r.add_get("/s/{stream}", guarded(pages.viewer))
    r.add_get("/host/{stream}", guarded(pages.host))
    r.add_get("/g/{group}", guarded(pages.group))
    r.add_get("/assets/{path:.+}", guarded(pages.asset))
    r.add_post("/dev/token", guarded(dev_token))
