"""Credentials out of anything printed, logged or stored: URLs with userinfo or token-like query parameters.

`redact_url` rewrites one URL; `redact` rewrites every URL inside a free text (log lines, exception messages,
artifacts). Both are idempotent and never raise: a string that is not a URL comes back unchanged.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

MASK = "***"

# Query parameter names whose values are secrets (S3 presigned URLs, API tokens, SAS signatures, ...).
_SECRET_KEYS = re.compile(
    r"(token|key|secret|passw|pwd|sig|signature|auth|credential|session|code|x-amz-[a-z-]+)", re.IGNORECASE
)
# scheme://[userinfo@]host... up to whitespace or a quote/bracket that ends a URL inside prose or repr().
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>(){},]+(?<![.:;!?\]])")  # [] kept: IPv6 hosts


def redact_url(url: str) -> str:
    """``https://alice:S3cr3t@host/p?token=abc&x=1`` -> ``https://alice:***@host/p?token=***&x=1``.

    The user name stays (it tells which account was used); the password and secret-looking query values go.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _redact_userinfo_raw(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if sep else f"{MASK}@{host}"
    # Rewrite only the secret values; every other byte of the query stays as it was.
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret: unchanged (urlunsplit would turn sqlite:///x.db into sqlite:/x.db)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_pair(pair: str) -> str:
    key, sep, _value = pair.partition("=")
    return f"{key}={MASK}" if sep and _SECRET_KEYS.search(unquote_plus(key)) else pair


def redact(text: object) -> str:
    """`text` (any object, via ``str``) with every URL in it passed through `redact_url`."""
    return _URL.sub(lambda m: redact_url(m.group(0)), str(text))


def _redact_userinfo_raw(url: str) -> str:
    """Fallback for strings urlsplit rejects (e.g. a bad IPv6 literal): mask the userinfo and secret query values."""
    url = re.sub(r"(://[^/@\s]*?:)[^/@\s]*@", rf"\1{MASK}@", url)
    base, sep, query = url.partition("?")
    return base + sep + "&".join(_redact_pair(pair) for pair in query.split("&")) if sep else base
