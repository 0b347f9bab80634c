#!/usr/bin/env python3
"""Measures what checking the callers' credentials costs the server, and writes the
"Authentication" section of the Markdown report.

    python3 bench/identity.py --server target/release/mcp-raspi-server --out BENCHMARKS.md

One server (release build, simulated hardware) with `auth_mode: [token, cloudflare_access]`,
its key set served by this script on 127.0.0.1 (an RSA-2048 key made with openssl for the
run, tokens signed with `openssl dgst`). Side by side, REQUESTS stateless tools/call
system.get_info requests on one keep-alive connection, each form ROUNDS times:
  * with the static bearer token;
  * with one Cloudflare Access assertion (RS256), the same on every request, as a client
    sends it: verified once, then found among the recently verified tokens;
  * with a fresh assertion on every request (FRESH_TOKENS distinct tokens): a signature
    check each time.
The figures are the server's CPU time per request (from the schedstat of its threads), the client's
median round trip, and the server's resident memory after the runs.

Exit status: 0 when every figure was measured, 2 when the benchmark could not run.
"""

import argparse
import base64
import http.client
import http.server
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the server process and report helpers)

REQUESTS = 3000
FRESH_TOKENS = 1000
ROUNDS = 3
SECTION = "## Authentication"
TEAM = "bench.cloudflareaccess.com"
AUD = "bench-audience-tag"
TOKEN = "bench-token-" + "0123456789abcdef"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RSA-2048 key made by openssl, its JWK, and RS256 tokens."""

    def __init__(self, directory):
        self.key = Path(directory) / "key.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                        "-out", str(self.key)], check=True, capture_output=True)
        out = subprocess.run(["openssl", "rsa", "-in", str(self.key), "-noout", "-modulus"], check=True,
                             capture_output=True, text=True).stdout
        modulus = bytes.fromhex(out.strip().split("=", 1)[1])
        self.jwk = {"kty": "RSA", "kid": "bench-1", "alg": "RS256", "use": "sig", "n": b64(modulus),
                    "e": b64((65537).to_bytes(3, "big"))}

    def token(self, email, jti):
        now = int(time.time())
        header = b64(json.dumps({"alg": "RS256", "kid": "bench-1", "typ": "JWT"}).encode())
        claims = b64(json.dumps({"iss": f"https://{TEAM}", "aud": [AUD], "email": email, "sub": jti,
                                 "iat": now, "nbf": now, "exp": now + 3600, "jti": jti}).encode())
        message = f"{header}.{claims}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=message.encode(),
                                   check=True, capture_output=True).stdout
        return f"{message}.{b64(signature)}"


class KeySetServer:
    def __init__(self, jwk):
        body = json.dumps({"keys": [jwk]}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - the http.server interface
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/certs"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class IdentityWorkdir(run.Workdir):
    def __init__(self, jwks_url):
        self.jwks_url = jwks_url
        super().__init__()
        self.env = {"BENCH_TOKEN": TOKEN}

    def config_text(self):
        security = f"""security:
  auth_mode: [token, cloudflare_access]
  tokens:
    - {{ identity: bench, role: admin, env: BENCH_TOKEN }}
  cloudflare_access:
    enabled: true
    team_domain: {TEAM}
    audience_tag: {AUD}
    jwks_url: "{self.jwks_url}"
  role_mappings:
    - {{ jwt_claim: email, pattern: '.*@example\\.com', role: admin }}
  secrets_file: null
  rate_limit:
    requests_per_minute: 0
"""
        text = super().config_text()
        start = text.index("security:")
        end = text.index("logging:")
        return text[:start] + security + text[end:]


def body():
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "system.get_info", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": run.STATELESS_VERSION,
                  "io.modelcontextprotocol/clientCapabilities": {}}}})


def cpu_ns(pid):
    """CPU time of all the process's threads, in ns (schedstat: finer than /proc/PID/stat's ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    return total


def measure(server, port, credentials):
    """Sends one request per entry of `credentials` (header name, value) on one connection;
    returns the server's CPU time per request in µs and the median round trip in µs."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    payload = body()
    base = {"Content-Type": "application/json", "Accept": "application/json",
            "MCP-Protocol-Version": run.STATELESS_VERSION, "Mcp-Method": "tools/call", "Mcp-Name": "system.get_info"}
    times = []
    cpu_before = cpu_ns(server.pid)
    try:
        for name, value in credentials:
            start = time.perf_counter()
            conn.request("POST", "/mcp", body=payload, headers={**base, name: value})
            r = conn.getresponse()
            data = r.read()
            times.append(time.perf_counter() - start)
            if r.status != 200 or b'"isError":true' in data:
                raise run.BenchError(f"a call with {name} failed: HTTP {r.status} {data[:300]!r}")
    finally:
        conn.close()
    cpu = cpu_ns(server.pid) - cpu_before
    return {"cpu_us": cpu / len(credentials) / 1e3, "rtt_us": statistics.median(times) * 1e6}


def bench(server_bin):
    with tempfile.TemporaryDirectory(prefix="mcp-raspi-bench-identity-") as scratch:
        signer = Signer(scratch)
        run.log(f"minting {FRESH_TOKENS} assertions with openssl")
        fresh = [signer.token("bench@example.com", f"fresh-{i}") for i in range(FRESH_TOKENS)]
        same = signer.token("bench@example.com", "same")
        keys = KeySetServer(signer.jwk)
        w = IdentityWorkdir(keys.url)
        server = None
        try:
            server = run.Server(server_bin, w, "127.0.0.1:0", capture_stdout=True)
            port = server.listening_port()
            forms = {
                "token": [("Authorization", f"Bearer {TOKEN}")] * REQUESTS,
                "same": [("Cf-Access-Jwt-Assertion", same)] * REQUESTS,
                "fresh": [("Cf-Access-Jwt-Assertion", t) for t in fresh],
            }
            measure(server, port, forms["token"][:100] + forms["same"][:100])  # warm up
            rounds = {name: [] for name in forms}
            for n in range(ROUNDS):
                # Each round in another order, so that no form always follows the same one.
                order = list(forms.items())[n % 3:] + list(forms.items())[:n % 3]
                for name, credentials in order:
                    if name == "fresh" and n > 0:
                        # Fresh means never seen: a new batch for each round.
                        credentials = [("Cf-Access-Jwt-Assertion", signer.token("bench@example.com", f"r{n}-{i}"))
                                       for i in range(FRESH_TOKENS)]
                    rounds[name].append(measure(server, port, credentials))
                    run.log(f"round {n + 1}: {name}: {rounds[name][-1]['cpu_us']:.1f} µs CPU per request")
            rss_kb = server.memory()["VmRSS"]
            return {"machine": run.machine(), "rss_kb": rss_kb,
                    **{name: {k: statistics.median(r[k] for r in rs) for k in ("cpu_us", "rtt_us")}
                       for name, rs in rounds.items()}}
        finally:
            if server:
                server.stop()
            keys.close()
            w.remove()


def render(d):
    def row(label, f):
        return f"| {label} | {f['cpu_us']:.1f} µs | {f['rtt_us']:.0f} µs |"

    m = d["machine"]
    return "\n".join([
        SECTION,
        "",
        f"`bench/identity.py` (`make bench`), measured {m['date']} on {m['cpu']}, {m['nproc']} CPUs, {m['arch']}:",
        f"stateless tools/call system.get_info on one keep-alive connection, {REQUESTS} requests per form",
        f"({FRESH_TOKENS} for fresh assertions), median of {ROUNDS} rounds; server CPU time from the schedstat of",
        "its threads.",
        "",
        "| Credential | Server CPU time per request | Round trip, median |",
        "|---|---|---|",
        row("Static bearer token", d["token"]),
        row("Cloudflare Access assertion, the same on every request", d["same"]),
        row("Cloudflare Access assertion, a new one on every request (RS256 check each time)", d["fresh"]),
        "",
        f"Server VmRSS after the runs: {run.mb(d['rss_kb']):.1f} MB. A client sends the same assertion until",
        "it expires, so the signature is checked once a minute per caller; the row of fresh",
        "assertions is the cost of a signature check with aws-lc.",
        "",
    ])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    try:
        d = bench(str(Path(a.server).resolve()))
    except run.BenchError as e:
        print(f"bench/identity.py: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    existing = out.read_text() if out.exists() else ""
    out.write_text(run.merge_section(existing, render(d)))
    run.log(f"wrote the {SECTION[3:]} section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
