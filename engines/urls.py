"""URLs that may carry credentials (cameras, Redis, MQTT, media servers), for errors and logs."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``url`` with any password (and user name) replaced by ``***``: safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None and parts.username is None:
        return url
    # host and port as written (parts.port raises on a port out of range: this is called for error lines)
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
