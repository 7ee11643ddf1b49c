"""Fetching an image from a client-given URL (only with `serve.allow_remote_images`), without
letting a client reach what the server can reach and it cannot.

* The host is resolved once and every address it resolves to must be public: private, loopback,
  link-local (169.254.169.254, the cloud metadata service), multicast, reserved and unspecified
  addresses are refused, IPv4-mapped IPv6 included. The connection goes to the address that was
  checked, so a second resolution cannot swap in another one (DNS rebinding).
* Redirects are not followed (a public URL may redirect to a private one).
* Every failure after the address check reads the same, so the error cannot tell an open port
  from a closed or filtered one.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlsplit

FETCH_FAILED = "could not fetch the image URL (it must answer 200 with the image itself, no redirects)"


class RemoteImageError(ValueError):
    """The URL is refused or could not be fetched; the message is safe to return to the client."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def resolve_public(host: str, port: int) -> str:
    """One public address of `host`; RemoteImageError when any address it resolves to is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RemoteImageError(FETCH_FAILED) from None
    addresses = [info[4][0] for info in infos]
    if not addresses or not all(is_public_address(a) for a in addresses):
        raise RemoteImageError(
            "image URL refused: its host is not a public address (private, loopback, link-local and "
            "reserved addresses are never fetched)"
        )
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # certificate checked for the name


def fetch_image(url: str, max_bytes: int, timeout_s: float = 10.0) -> bytes:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteImageError("image URL must be http(s)://host/...")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RemoteImageError("image URL has an invalid port") from None
    address = resolve_public(parts.hostname, port)
    cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    conn = cls(parts.hostname, address, port, timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", path, headers={"Accept": "image/*", "User-Agent": "r1v_ray"})
        resp = conn.getresponse()
        if resp.status != 200:  # 3xx included: redirects are not followed
            raise RemoteImageError(FETCH_FAILED)
        data = resp.read(max_bytes + 1)
    except (OSError, http.client.HTTPException):
        raise RemoteImageError(FETCH_FAILED) from None
    finally:
        conn.close()
    if len(data) > max_bytes:
        raise RemoteImageError(f"image larger than {max_bytes} bytes", too_large=True)
    return data
