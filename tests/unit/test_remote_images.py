"""serve.allow_remote_images: no private, loopback or link-local fetches, no redirects, one error text.

Nothing here connects anywhere but 127.0.0.1: the address filter is tested by patching name
resolution and failing any connection attempt.
"""

import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from r1v_ray.serve import remote_images
from r1v_ray.serve.openai_api import APIError, Limits, parse_chat_request

LIMITS = Limits(max_image_bytes=100_000, allow_remote_images=True, max_n=4, max_tokens=512)


def _body(url: str) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


def _parse_error(url: str) -> APIError:
    with pytest.raises(APIError) as err:
        parse_chat_request(_body(url), ["m"], LIMITS)
    return err.value


@pytest.mark.parametrize(
    "resolved",
    [
        ["169.254.169.254"],  # cloud metadata service
        ["127.0.0.1"],
        ["10.1.2.3"],
        ["172.16.0.9"],
        ["192.168.0.1"],
        ["100.64.0.1"],  # carrier-grade NAT
        ["0.0.0.0"],
        ["224.0.0.1"],
        ["::1"],
        ["fe80::1%eth0"],
        ["fd00::1"],
        ["::ffff:169.254.169.254"],  # IPv4-mapped
        ["93.184.216.34", "10.0.0.1"],  # one private address among public ones is enough to refuse
    ],
)
def test_non_public_addresses_are_refused_without_connecting(monkeypatch, resolved):
    connects = []

    def fake_getaddrinfo(host, port, *args, **kwargs):
        family = lambda a: socket.AF_INET6 if ":" in a else socket.AF_INET
        return [(family(a), socket.SOCK_STREAM, 6, "", (a, port)) for a in resolved]

    def no_connect(address, *args, **kwargs):
        connects.append(address)
        raise OSError("test: no connection may be attempted")

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", no_connect)
    err = _parse_error("http://images.example.com/cat.png")
    assert connects == []
    assert (err.status, err.code) == (400, "invalid_image") and "not a public address" in err.message


def test_public_addresses_pass_the_filter():
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"):
        assert remote_images.is_public_address(address)


class _Handler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):
        type(self).hits.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/img.png")
            self.end_headers()
        elif self.path == "/img.png":
            buf = io.BytesIO()
            Image.new("RGB", (4, 4), "blue").save(buf, format="PNG")
            self.send_response(200)
            self.send_header("Content-Length", str(len(buf.getvalue())))
            self.end_headers()
            self.wfile.write(buf.getvalue())
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(monkeypatch):
    """An HTTP server on 127.0.0.1, reachable because the filter is told loopback is public here."""
    monkeypatch.setattr(remote_images, "is_public_address", lambda address: True)
    _Handler.hits = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_redirects_are_not_followed_and_failures_read_the_same(local_server):
    chat = parse_chat_request(_body(f"{local_server}/img.png"), ["m"], LIMITS)
    assert len(chat.request.images) == 1  # a plain 200 image is fetched
    redirect = _parse_error(f"{local_server}/redirect")
    assert _Handler.hits == ["/img.png", "/redirect"]  # the redirect's target was never requested
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    closed = _parse_error(f"http://127.0.0.1:{closed_port}/img.png")
    missing = _parse_error(f"{local_server}/missing.png")
    # An open port (404 or redirect) and a closed one cannot be told apart from the answer.
    assert {e.message for e in (redirect, closed, missing)} == {remote_images.FETCH_FAILED}
    assert {(e.status, e.code) for e in (redirect, closed, missing)} == {(400, "invalid_image")}
