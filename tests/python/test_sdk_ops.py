"""The privileged tools through the official MCP Python SDK: client → server → ops agent
→ simulated hardware, in both protocol eras."""

from __future__ import annotations

import base64
from typing import Any

import anyio
import pytest
from mcp.types import ImageContent

from conftest import RunningServer
from test_sdk import ERAS, Protocol, _use, connect, text_of  # noqa: F401 - fixtures and helpers

pytestmark = pytest.mark.anyio

TEST_TIMEOUT_S = 30


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Protocol:
    from test_sdk import ALL_PROTOCOLS

    return _use(ALL_PROTOCOLS[request.param], monkeypatch)


async def call(client: Any, name: str, arguments: dict[str, Any]) -> Any:
    result = await client.call_tool(name, arguments)
    assert result.is_error is False, f"{name}: {text_of(result)}"
    return result


async def test_pins_buses_and_services_work_through_the_sdk(dev_stack: RunningServer, era: Protocol):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with connect(dev_stack.url, None, era) as client:
            await client.list_tools()
            await call(client, "gpio.set_mode", {"pin": 17, "mode": "output"})
            await call(client, "gpio.write_pin", {"pin": 17, "level": "high"})
            state = (await call(client, "gpio.read_pin", {"pin": 17})).structured_content
            assert state["mode"] == "output" and state["level"] == "high"
            temperature = (await call(client, "i2c.read", {"bus": 1, "address": 0x48, "register": 0, "length": 2}))
            assert temperature.structured_content["bytes"] == [0x15, 0x80]
            restarted = (await call(client, "service.restart", {"unit": "nginx.service"})).structured_content
            assert restarted["state"]["active_state"] == "active"
            refused = await client.call_tool("service.restart", {"unit": "cron.service"})
            assert refused.is_error is True
            assert "services.allowed_units" in text_of(refused)


async def test_a_capture_arrives_as_an_image_the_sdk_understands(dev_stack: RunningServer, era: Protocol):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with connect(dev_stack.url, None, era) as client:
            await client.list_tools()
            result = await call(client, "camera.capture", {"width": 320, "height": 240})
    images = [block for block in result.content if isinstance(block, ImageContent)]
    assert len(images) == 1
    assert images[0].mime_type == "image/jpeg"
    assert base64.b64decode(images[0].data)[:2] == b"\xff\xd8"
    assert result.structured_content["width"] == 320


async def test_the_deprecated_pwm_start_still_works_and_says_it_is_deprecated(dev_stack: RunningServer, era: Protocol):
    with anyio.fail_after(TEST_TIMEOUT_S):
        async with connect(dev_stack.url, None, era) as client:
            await client.list_tools()
            result = await call(client, "gpio.pwm_start", {"pin": 18, "frequency": 100.0, "duty_cycle": 50.0})
    assert "deprecated" in text_of(result)
    assert result.structured_content["pwm"] == {"frequency_hz": 100.0, "duty_cycle": 0.5}
