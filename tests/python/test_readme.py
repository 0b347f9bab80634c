"""README's "first five minutes": its shell block, run as pasted against the development
setup of `make run` (only the address differs: a free port instead of 8000)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, RunningServer

MARKER = "<!-- first-five-minutes:"


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    after = text[text.index(MARKER) :]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, "README has no shell block after the first-five-minutes marker"
    return match.group(1)


def test_the_readme_first_five_minutes_work_as_pasted(fresh_dev_stack: RunningServer) -> None:
    block = readme_block()
    assert "http://127.0.0.1:8000" in block
    base = fresh_dev_stack.url.removesuffix("/mcp")
    script = block.replace("http://127.0.0.1:8000", base)
    # `python3` in the block is whatever python3 the user has; here, the one running the tests.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    out = run.stdout
    assert run.returncode == 0, f"{run.stderr}\n{out}"
    assert '"status":"ok"' in out, out
    assert re.search(r"^session [0-9a-f]{32}$", out, re.M), out
    for tool in ("gpio.list_pins", "gpio.write_pin", "logs.get_recent_audit_logs"):
        assert f'"name": "{tool}"' in out, f"tools/list lacks {tool}: {out}"
    assert '"isError": true' not in out, out
    # The pin was set high, and the audit trail says who did it.
    assert re.search(r'"level": "high"', out), out
    audit_part = out[out.rindex('"entries"') :]
    assert '"tool": "gpio.write_pin"' in audit_part and '"tool": "gpio.set_mode"' in audit_part, audit_part
