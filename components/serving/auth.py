"""Bearer-token authentication for the public service (an ASGI middleware, like schema.RequestGuard).

With a token set (`LLMSREC_API_TOKEN`, or `LLMSREC_API_TOKEN_FILE` naming a file that holds it), every
request must carry `Authorization: Bearer TOKEN`, except on the endpoints `LLMSREC_OPEN_ENDPOINTS` leaves
open (default: the probes /livez and /readyz, which orchestrators call without credentials). A request
without it, with another token, or with two Authorization headers gets a 401 that says which, and never
reaches the API. Without a token there is no authentication: the server then binds 127.0.0.1 only by
default (docs/serving.md: Exposure).

The token is compared in constant time (`hmac.compare_digest` over SHA-256 digests, so neither its
content nor its length shows in the response time) and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from components.serving.settings import ServingSettings, env_name

REALM = "llmsrec"


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class BearerAuth:
    """ASGI middleware: 401 for a request to a protected path without the right bearer token.

    `token` and `open_paths` default to the settings (read when BentoML builds the app, like the body
    limit of RequestGuard: a bad setting stops that start with a ConfigError naming the variable). A
    path in `open_paths` ending in "/" opens everything under it."""

    def __init__(self, app, token: str | None = None, open_paths: tuple[str, ...] | None = None):
        if token is None and open_paths is None:
            settings = ServingSettings.from_env()
            token, open_paths = settings.token(), settings.open_paths()
        self.app = app
        self._digest = None if token is None else _digest(token.encode("ascii"))
        self.exact = frozenset(p for p in open_paths or () if not p.endswith("/") or p == "/")
        self.prefixes = tuple(p for p in open_paths or () if p.endswith("/") and p != "/")

    async def __call__(self, scope, receive, send):
        if self._digest is None or scope["type"] not in ("http", "websocket") or self._open(scope.get("path", "")):
            return await self.app(scope, receive, send)
        refused = self._refusal([v for k, v in scope.get("headers") or [] if k.lower() == b"authorization"])
        if refused is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # no HTTP answer to a websocket handshake: close it (policy violation)
            return await send({"type": "websocket.close", "code": 1008})
        error, why = refused
        data = json.dumps({"error": error}).encode()
        challenge = f'Bearer realm="{REALM}"' + (f', error="{why}"' if why else "")
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                (b"www-authenticate", challenge.encode())]})
        await send({"type": "http.response.body", "body": data})

    def _open(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)

    def _refusal(self, values: list[bytes]) -> tuple[str, str] | None:
        """None when `values` (the request's Authorization headers) hold exactly the token; else the error
        message and RFC 6750's error code for the challenge ("" when no credentials were sent)."""
        fix = (f"send the header Authorization: Bearer TOKEN, with the token the server was given "
               f"({env_name('api_token')} or {env_name('api_token_file')})")
        if not values:
            return f"this endpoint needs a bearer token. Fix: {fix}", ""
        if len(values) > 1:
            return f"{len(values)} Authorization headers; the token is read from exactly one. Fix: {fix}", \
                "invalid_request"
        scheme, _, given = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return f"the Authorization header is not 'Bearer TOKEN'. Fix: {fix}", "invalid_request"
        if not hmac.compare_digest(_digest(given.strip()), self._digest):
            return f"the bearer token is not the server's. Fix: {fix}", "invalid_token"
        return None

    def __repr__(self) -> str:  # never the token, e.g. in a debugger or a log of the middleware stack
        return f"BearerAuth(token={'set' if self._digest else 'unset'}, open={sorted(self.exact) + list(self.prefixes)})"

