"""mcp-raspi-server as seen by the official MCP Python SDK (package `mcp`).

Every protocol version the server speaks is exercised through the SDK's own client:
2025-03-26, 2025-06-18 and 2025-11-25 with the initialize handshake and a session,
2026-07-28 statelessly, and "auto" (server/discover first, falling back to initialize).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.client.session
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from conftest import RunningServer

pytestmark = pytest.mark.anyio

TEST_TIMEOUT_S = 30

TOOLS = {
    "system.get_info",
    "system.get_health_snapshot",
    "system.get_capabilities",
    "system.get_network_info",
    "system.reboot",
    "system.shutdown",
    "metrics.get_snapshot",
    "metrics.query",
    "metrics.get_status",
    "metrics.start_sampling",
    "metrics.stop_sampling",
    "process.list",
    "process.get_info",
    "logs.get_recent_app_logs",
    "logs.get_recent_audit_logs",
    "logs.query_journal",
    "service.list",
    "service.get_status",
    "service.start",
    "service.stop",
    "service.restart",
    "service.enable",
    "service.disable",
    "service.force_restart",
    "gpio.list_pins",
    "gpio.read_pin",
    "gpio.set_mode",
    "gpio.write_pin",
    "i2c.scan_bus",
    "i2c.read",
    "i2c.write",
    "camera.capture",
    "os.check_updates",
    "os.apply_updates",
    "manage.get_server_status",
    "manage.check_config",
    "manage.deploy_config",
    "manage.update_server",
    "manage.rollback",
    "manage.list_versions",
}

# Arguments of one valid call of each tool (process.get_info also gets a pid), and the
# keys its structured result must have at least.
TOOL_CALLS: dict[str, tuple[dict[str, Any], set[str]]] = {
    "system.get_info": (
        {},
        {"backend", "board", "cpu", "hostname", "memory_total_bytes", "os", "server_version", "uptime_seconds"},
    ),
    "system.get_health_snapshot": (
        {"sample_ms": 20},
        {"verdict", "reasons", "cpu", "memory", "disks", "load", "temperatures", "throttling", "services"},
    ),
    "system.get_capabilities": (
        {},
        {"server_version", "protocol_versions", "auth_mode", "caller", "tools", "agent"},
    ),
    "system.get_network_info": ({}, {"hostname", "interfaces"}),
    "metrics.get_snapshot": ({"sample_ms": 20}, {"metrics", "timestamp"}),
    "metrics.get_status": ({}, {"state", "enabled", "interval_seconds", "series", "samples", "retention"}),
    "metrics.query": ({"since": "1h", "step": "1m"}, {"since", "until", "step_seconds", "aggregation", "series"}),
    "process.list": ({"sort_by": "memory", "limit": 5, "sample_ms": 20}, {"processes", "total_processes", "sample_ms"}),
    "process.get_info": ({}, {"pid", "ppid", "name", "state", "cmdline", "rss_bytes", "threads", "user"}),
    "logs.get_recent_app_logs": ({"level": "info", "limit": 20}, {"count", "entries", "source"}),
    "logs.get_recent_audit_logs": ({"limit": 20}, {"count", "entries", "source"}),
    "manage.get_server_status": ({}, {"version", "pid", "started_at", "uptime_seconds", "backend", "config", "agent"}),
    "manage.list_versions": ({}, {"releases", "keep_versions"}),
    "manage.check_config": (
        {"text": 'config_version: "1.2"\n'},
        {"valid", "sha256", "current_sha256", "running_sha256", "unchanged", "diff", "deployments_enabled"},
    ),
}
# The tools above that only read: they need no ops agent, so this suite calls each of them.
READ_ONLY_TOOLS = set(TOOL_CALLS)
assert READ_ONLY_TOOLS <= TOOLS
DESTRUCTIVE_TOOLS = {
    "system.reboot",
    "system.shutdown",
    "service.stop",
    "service.disable",
    "os.apply_updates",
    "manage.update_server",
    "manage.rollback",
    "manage.deploy_config",
}

RESOURCES = {"raspi://system/info", "raspi://metrics/snapshot", "raspi://metrics/last-24h", "raspi://logs/app", "raspi://logs/audit"}
PROCESS_TEMPLATE = "raspi://process/{pid}"
PROMPTS = {"daily_health_check", "troubleshoot_service", "troubleshoot_update"}


@dataclass(frozen=True)
class Protocol:
    """How the SDK client is set up to reach one protocol version."""

    mode: str  # the Client's mode=
    offer: str | None  # for legacy mode: the version initialize offers
    expected: str  # the version the connection must end up with


ALL_PROTOCOLS = {
    "2025-03-26": Protocol("legacy", "2025-03-26", "2025-03-26"),
    "2025-06-18": Protocol("legacy", "2025-06-18", "2025-06-18"),
    "2025-11-25": Protocol("legacy", "2025-11-25", "2025-11-25"),
    "2026-07-28": Protocol("2026-07-28", None, "2026-07-28"),
    "auto": Protocol("auto", None, "2026-07-28"),
}
# One version of each era: handshake and session, then stateless.
ERAS = ["2025-11-25", "2026-07-28"]


@pytest.fixture(params=list(ALL_PROTOCOLS))
def protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Protocol:
    return _use(ALL_PROTOCOLS[request.param], monkeypatch)


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Protocol:
    return _use(ALL_PROTOCOLS[request.param], monkeypatch)


def _use(p: Protocol, monkeypatch: pytest.MonkeyPatch) -> Protocol:
    if p.offer is not None:
        # ClientSession.initialize() offers this module-level version.
        monkeypatch.setattr(mcp.client.session, "LATEST_HANDSHAKE_VERSION", p.offer)
    return p


@asynccontextmanager
async def connect(url: str, token: str | None, protocol: Protocol) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(10.0, read=20.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=protocol.mode) as client:
            yield client


def admin(server: RunningServer, protocol: Protocol) -> Any:
    return connect(server.url, server.tokens["admin"], protocol)


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def audit_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- Every protocol version -------------------------------------------------------------


async def test_the_client_ends_up_with_the_protocol_version_it_asked_for(server: RunningServer, protocol: Protocol):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with admin(server, protocol) as client:
            assert client.protocol_version == protocol.expected
            if protocol.mode != "2026-07-28":
                # Pinned 2026-07-28 sends no discover, so it learns no server info up front.
                assert client.server_info is not None
                assert client.server_info.name == "mcp-raspi"
            if protocol.mode == "legacy":
                with warnings.catch_warnings():
                    # The SDK warns that ping is gone from 2026-07-28; it is part of these versions.
                    warnings.simplefilter("ignore", MCPDeprecationWarning)
                    await client.send_ping()
            result = await client.call_tool("system.get_capabilities", {})
            assert protocol.expected in result.structured_content["protocol_versions"]


async def test_tools_list_names_every_tool_not_experimental_with_its_annotations(
    server: RunningServer, protocol: Protocol
):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with admin(server, protocol) as client:
            tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == TOOLS
    assert len(tools) == len(TOOLS)
    for tool in tools:
        assert tool.description, tool.name
        assert tool.input_schema.get("type") == "object", tool.name
        assert tool.output_schema is not None and tool.output_schema.get("type") == "object", tool.name
        assert tool.annotations is not None, tool.name
        if tool.name in READ_ONLY_TOOLS:
            assert tool.annotations.read_only_hint is True, tool.name
        assert tool.annotations.destructive_hint is (tool.name in DESTRUCTIVE_TOOLS), tool.name


async def test_every_tool_answers_with_structured_content_that_matches_its_output_schema(
    server: RunningServer, protocol: Protocol
):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with admin(server, protocol) as client:
            # Listing first hands the SDK the output schemas it validates each result against;
            # call_tool raises when structured content does not match.
            await client.list_tools()
            results: dict[str, Any] = {}
            status = await client.call_tool("manage.get_server_status", {})
            assert status.is_error is False, text_of(status)
            pid = status.structured_content["pid"]
            for name, (arguments, keys) in TOOL_CALLS.items():
                if name == "process.get_info":
                    arguments = {"pid": pid}
                result = await client.call_tool(name, arguments)
                assert result.is_error is False, f"{name}: {text_of(result)}"
                content = result.structured_content
                assert isinstance(content, dict), name
                assert keys <= content.keys(), f"{name} lacks {keys - content.keys()}"
                # The text block carries the same JSON for clients without structured content.
                assert json.loads(result.content[0].text) == content, name
                results[name] = content

    assert results["process.get_info"]["pid"] == pid
    assert results["system.get_info"]["server_version"] == results["manage.get_server_status"]["version"]
    assert results["manage.get_server_status"]["backend"] == "simulated"
    assert results["system.get_capabilities"]["caller"] == {"identity": "admin", "role": "admin"}
    assert results["system.get_capabilities"]["auth_mode"] == "token"
    # The capability report names experimental tools too, hidden from tools/list here.
    assert {t["name"] for t in results["system.get_capabilities"]["tools"]} >= TOOLS
    assert len(results["process.list"]["processes"]) <= 5
    assert results["system.get_health_snapshot"]["verdict"] in {"ok", "warning", "critical"}


async def test_every_resource_and_the_process_template_can_be_read(server: RunningServer, protocol: Protocol):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with admin(server, protocol) as client:
            listed = (await client.list_resources()).resources
            templates = (await client.list_resource_templates()).resource_templates
            assert {str(r.uri) for r in listed} == RESOURCES
            assert [t.uri_template for t in templates] == [PROCESS_TEMPLATE]

            pid = (await client.call_tool("manage.get_server_status", {})).structured_content["pid"]
            uris = sorted(RESOURCES) + [PROCESS_TEMPLATE.replace("{pid}", str(pid))]
            for uri in uris:
                result = await client.read_resource(uri)
                assert len(result.contents) == 1, uri
                body = result.contents[0]
                assert str(body.uri) == uri
                assert body.mime_type == "application/json", uri
                assert isinstance(json.loads(body.text), dict), uri
            process = json.loads((await client.read_resource(uris[-1])).contents[0].text)
            assert process["pid"] == pid


async def test_every_prompt_can_be_fetched_and_troubleshoot_service_names_its_unit(
    server: RunningServer, protocol: Protocol
):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with admin(server, protocol) as client:
            prompts = {p.name: p for p in (await client.list_prompts()).prompts}
            assert set(prompts) == PROMPTS
            unit = prompts["troubleshoot_service"].arguments
            assert unit is not None and [(a.name, a.required) for a in unit] == [("unit", True)]

            for name in sorted(PROMPTS):
                arguments = {"unit": "ssh.service"} if name == "troubleshoot_service" else None
                result = await client.get_prompt(name, arguments)
                assert result.messages, name
                text = "\n".join(m.content.text for m in result.messages if m.content.type == "text")
                assert text.strip(), name
                if name == "troubleshoot_service":
                    assert "ssh.service" in text


# --- Roles, authentication and errors ---------------------------------------------------


async def test_a_viewer_is_refused_the_audit_log_tool_and_resource(server: RunningServer, era: Protocol):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with connect(server.url, server.tokens["viewer"], era) as client:
            allowed = await client.call_tool("logs.get_recent_app_logs", {"limit": 1})
            assert allowed.is_error is False, text_of(allowed)

            refused = await client.call_tool("logs.get_recent_audit_logs", {})
            assert refused.is_error is True
            assert "role" in text_of(refused)

            with pytest.raises(MCPError) as raised:
                await client.read_resource("raspi://logs/audit")
            assert "role" in str(raised.value)


@pytest.mark.parametrize("token", ["wrong-token-0123456789abcdef", None], ids=["wrong token", "no token"])
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_a_client_without_a_valid_token_cannot_connect(server: RunningServer, mode: str, token: str | None):
    with anyio.fail_after(TEST_TIMEOUT_S):
        with pytest.raises(Exception) as raised:
            async with connect(server.url, token, Protocol(mode, None, "")) as client:
                # Pinned 2026-07-28 sends nothing while connecting; the first request fails.
                await client.list_tools()
    errors = leaves(raised.value)
    assert any(isinstance(e, MCPError) and "token" in str(e).lower() for e in errors), errors


async def test_an_unknown_tool_is_reported_as_an_error(server: RunningServer, era: Protocol):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with admin(server, era) as client:
            try:
                result = await client.call_tool("no.such_tool", {})
            except MCPError as e:
                assert "no.such_tool" in str(e)
            else:
                assert result.is_error is True
                assert "no.such_tool" in text_of(result)


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("process.get_info", {}),
        ("process.get_info", {"pid": 2**31 - 1}),
        ("process.list", {"limit": 0}),
        ("process.list", {"limit": 101}),
        ("process.list", {"sort_by": "name"}),
        ("process.list", {"sample_ms": 5001}),
        ("system.get_health_snapshot", {"sample_ms": 5001}),
        ("metrics.get_snapshot", {"sample_ms": 5001}),
        ("system.get_info", {"unexpected": 1}),
    ],
    ids=lambda v: v if isinstance(v, str) else json.dumps(v),
)
async def test_invalid_arguments_give_a_tool_error_result(server: RunningServer, name: str, arguments: dict[str, Any]):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with admin(server, ALL_PROTOCOLS["2026-07-28"]) as client:
            # A refusal is immediate; an out-of-range sample window must not be waited out.
            with anyio.move_on_after(3) as waited:
                result = await client.call_tool(name, arguments)
    if waited.cancelled_caught:
        pytest.fail(f"{name} {arguments} was accepted: no answer within 3 s")
    assert result.is_error is True, f"{name} {arguments} was accepted: {text_of(result)[:200]}"
    assert text_of(result).strip()


# --- Progress and the audit log ---------------------------------------------------------


async def test_progress_notifications_reach_the_callback_during_a_sampled_health_snapshot(
    server: RunningServer, era: Protocol
):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    with anyio.fail_after(TEST_TIMEOUT_S):
        async with admin(server, era) as client:
            result = await client.call_tool(
                "system.get_health_snapshot", {"sample_ms": 500}, progress_callback=on_progress
            )
    assert result.is_error is False, text_of(result)
    assert len(seen) >= 2, seen
    values = [p for p, _, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values), f"progress must increase: {seen}"
    for progress, total, _ in seen:
        assert total is None or progress <= total


async def test_each_tool_call_adds_one_audit_line_naming_the_identity_and_the_tool(server: RunningServer):
    audit = server.paths.audit_log
    before = len(audit_lines(audit))
    calls = [
        ("admin", "system.get_info", {}),
        ("admin", "process.list", {"limit": 3, "sample_ms": 0}),
        ("viewer", "metrics.get_snapshot", {"sample_ms": 0}),
        ("viewer", "logs.get_recent_audit_logs", {}),  # refused: still audited
        ("admin", "manage.get_server_status", {}),
    ]
    with anyio.fail_after(TEST_TIMEOUT_S):
        for era in ERAS:
            for identity, name, arguments in calls:
                async with connect(server.url, server.tokens[identity], ALL_PROTOCOLS[era]) as client:
                    await client.call_tool(name, arguments)
        expected = 2 * len(calls)
        # The line is written before the response; allow for a slow disk all the same.
        while len(audit_lines(audit)) < before + expected:
            await anyio.sleep(0.05)

    added = audit_lines(audit)[before:]
    assert [(line["identity"], line["tool"]) for line in added] == [(i, n) for i, n, _ in calls] * 2
    for line, (_, name, arguments) in zip(added, calls * 2):
        assert line["arguments"] == arguments, line
        assert line["outcome"] == ("denied" if name == "logs.get_recent_audit_logs" else "ok"), line
        assert line["transport"] == "http"
        assert line["time"]
    if os.geteuid() == 0:
        assert audit.stat().st_uid == 65534


# --- The development server -------------------------------------------------------------


async def test_the_development_server_serves_clients_without_a_token_as_admin(dev_server: RunningServer):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with connect(dev_server.url, None, ALL_PROTOCOLS["auto"]) as client:
            assert client.protocol_version == "2026-07-28"
            capabilities = (await client.call_tool("system.get_capabilities", {})).structured_content
            audit = await client.call_tool("logs.get_recent_audit_logs", {"limit": 5})
    assert capabilities["auth_mode"] == "none"
    assert capabilities["caller"]["role"] == "admin"
    assert audit.is_error is False, text_of(audit)
    assert audit.structured_content["source"] == str(dev_server.paths.audit_log)


async def test_a_get_on_the_endpoint_is_refused_with_405(server: RunningServer):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {server.tokens['admin']}"}) as http:
        response = await http.get(server.url, headers={"Accept": "text/event-stream"})
    assert response.status_code == 405
