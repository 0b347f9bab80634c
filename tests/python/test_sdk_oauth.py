"""mcp-raspi-server as an OAuth protected resource, seen by the official MCP Python SDK.

The server runs with `auth_mode: oidc` in front of a small authorization server on loopback
(RFC 8414 metadata, a key set, and a client_credentials token endpoint that signs RS256
JWTs). The SDK's own OAuth client is given nothing but the MCP URL and its client
credentials: it must learn where to sign in from the server's 401 (`WWW-Authenticate:
Bearer resource_metadata=...`) and its RFC 9728 metadata, fetch a token for the server's
resource (RFC 8707), and call tools with it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from conftest import REPO, ServerPaths, _child_environment, _finish, _private_dir, _start, _write_config

pytestmark = pytest.mark.anyio

CLIENT_ID = "pytest-client"
CLIENT_SECRET = "pytest-secret-0123456789"
KID = "as-key-1"


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class AuthorizationServer:
    """A client_credentials authorization server on 127.0.0.1, recording its token requests."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.token_requests: list[dict[str, list[str]]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def mint(self, audience: str, subject: str = CLIENT_ID, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": audience, "sub": subject, "iat": now, "exp": now + 600, **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": KID})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                if self.path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
                    self._json(200, {
                        "issuer": server.issuer,
                        "authorization_endpoint": f"{server.issuer}/authorize",
                        "token_endpoint": f"{server.issuer}/token",
                        "jwks_uri": f"{server.issuer}/certs",
                        "grant_types_supported": ["client_credentials"],
                        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                        "response_types_supported": ["code"],
                    })
                elif self.path == "/certs":
                    numbers = server.key.public_key().public_numbers()
                    self._json(200, {"keys": [
                        {"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256", "n": _b64(numbers.n), "e": _b64(numbers.e)}
                    ]})
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                server.token_requests.append(form)
                expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
                if self.path != "/token" or self.headers.get("Authorization") != f"Basic {expected}":
                    self._json(401, {"error": "invalid_client"})
                    return
                resource = form.get("resource", [""])[0]
                token = server.mint(resource, scope=form.get("scope", [""])[0])
                self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 600})

        return Handler


class ProtectedServer(NamedTuple):
    url: str
    authorization: AuthorizationServer
    paths: ServerPaths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def protected() -> Iterator[ProtectedServer]:
    authorization = AuthorizationServer()
    root = _private_dir("mcp-raspi-oauth-")
    port = _free_port()
    security = f"""\
  auth_mode: oidc
  oidc:
    issuer: "{authorization.issuer}"
    resource: "http://127.0.0.1:{port}/mcp"
    scopes_supported: [mcp]
  role_mappings:
    - {{ jwt_claim: sub, value: "{CLIENT_ID}", role: operator }}"""
    paths = _write_config(root, security, listen=f"127.0.0.1:{port}")
    proc, url = _start(["--config", str(paths.config)], _child_environment(root, {}), root)
    try:
        yield ProtectedServer(url=url, authorization=authorization, paths=paths)
    finally:
        _finish(proc, root)
        authorization.close()


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def _caller(client: Client) -> dict[str, Any]:
    result = await client.call_tool("system.get_capabilities", {})
    assert not result.is_error, result
    return result.structured_content["caller"]


async def test_a_401_points_the_client_at_the_resource_metadata(protected: ProtectedServer):
    async with httpx2.AsyncClient() as http:
        r = await http.post(protected.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 401
        metadata_url = protected.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        assert r.headers["WWW-Authenticate"] == f'Bearer realm="mcp-raspi", resource_metadata="{metadata_url}"'
        metadata = (await http.get(metadata_url)).json()
        assert metadata["resource"] == protected.url
        assert metadata["authorization_servers"] == [protected.authorization.issuer]


async def test_the_sdk_calls_tools_with_a_bearer_jwt(protected: ProtectedServer):
    token = protected.authorization.mint(protected.url)
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(protected.url, http_client=http)) as client:
            tools = await client.list_tools()
            assert any(t.name == "system.get_info" for t in tools.tools)
            assert await _caller(client) == {"identity": CLIENT_ID, "role": "operator"}


async def test_the_sdk_oauth_client_discovers_where_to_sign_in_and_gets_a_token_for_this_resource(
    protected: ProtectedServer,
):
    protected.authorization.token_requests.clear()
    provider = ClientCredentialsOAuthProvider(
        server_url=protected.url,
        storage=MemoryStorage(),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scope="mcp",
        issuer=protected.authorization.issuer,
    )
    async with httpx2.AsyncClient(auth=provider, timeout=httpx2.Timeout(10.0, read=20.0)) as http:
        async with Client(streamable_http_client(protected.url, http_client=http)) as client:
            assert await _caller(client) == {"identity": CLIENT_ID, "role": "operator"}
    # One token, asked for this server's resource (RFC 8707) as its metadata names it.
    assert len(protected.authorization.token_requests) == 1
    request = protected.authorization.token_requests[0]
    assert request["grant_type"] == ["client_credentials"]
    assert request["resource"] == [protected.url]


async def test_a_token_for_another_resource_is_refused(protected: ProtectedServer):
    token = protected.authorization.mint("http://127.0.0.1:1/mcp")
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        r = await http.post(protected.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert r.json()["error"]["data"]["cause"] == "wrong_audience"


def test_the_typescript_sdk_oauth_client_discovers_where_to_sign_in_too(protected: ProtectedServer):
    node = os.environ.get("MCP_RASPI_NODE")
    assert node, "MCP_RASPI_NODE names the node binary (make pytest sets it)"
    sdk = REPO / "tests" / "conformance" / "node_modules" / "@modelcontextprotocol" / "sdk"
    assert sdk.is_dir(), f"no TypeScript SDK at {sdk}: CONFORMANCE_INSTALL_ONLY=1 tests/conformance/run.sh installs it"
    protected.authorization.token_requests.clear()
    script = Path(__file__).with_name("ts_oauth_client.mjs")
    args = [node, str(script), str(sdk), protected.url, CLIENT_ID, CLIENT_SECRET, protected.authorization.issuer]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"identity": CLIENT_ID, "role": "operator"}
    assert [r["resource"] for r in protected.authorization.token_requests] == [[protected.url]]
