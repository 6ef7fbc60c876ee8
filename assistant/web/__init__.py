"""The browser page the gateway serves at ``/``: plain files in this package, shipped as package data, with no build
step and nothing fetched from elsewhere (no CDN, no external fonts).

- ``index.html``: the page; ``app.js``: its code (an ES module); ``fragments.js``: the data channel's fragment format
  (the same as :mod:`assistant.fragments`), imported by ``app.js``; ``style.css``.
- :func:`read_asset` gives an asset's bytes and content type by name and refuses every other name
  (:class:`UnknownAsset`), so a request path never reaches the file system.
- :data:`PAGE_HEADERS` go with every asset: ``Cache-Control: no-cache`` (a server upgrade is picked up at once) and a
  Content-Security-Policy that lets the page load only its own files, call only its own server, show pictures from
  ``blob:``/``data:`` URLs and play media only from a ``mediastream:`` (the call's audio).

The page carries no secret: it is served without a credential (the gateway still applies the Origin and Host rules
of :mod:`assistant.access`); the API key a user types into it stays in the page's memory and goes out only as
``Authorization: Bearer`` to this server.
"""

from __future__ import annotations

from importlib import resources

INDEX = "index.html"

CONTENT_TYPES: dict[str, str] = {
    INDEX: "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "fragments.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' mediastream: blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

PAGE_HEADERS: dict[str, str] = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # the page asks for the microphone; nothing it might embed may
    "Permissions-Policy": "microphone=(self), camera=()",
}


class UnknownAsset(KeyError):
    """A name that is not one of the page's files."""


def read_asset(name: str) -> tuple[bytes, str]:
    """(bytes, content type) of the page's file ``name`` (``"index.html"``, ``"app.js"``, ...); raises
    :class:`UnknownAsset` for any other name (paths, other files of this package)."""
    content_type = CONTENT_TYPES.get(name)
    if content_type is None:
        raise UnknownAsset(name)
    return resources.files(__name__).joinpath(name).read_bytes(), content_type
