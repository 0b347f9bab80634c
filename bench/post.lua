-- wrk script: POST one MCP tools/call request to /mcp.
--
--   wrk -s bench/post.lua http://127.0.0.1:PORT/mcp -- session SESSION_ID [TOOL [ARGUMENTS]]
--       protocol 2025-11-25, inside a session opened by `initialize`
--   wrk -s bench/post.lua http://127.0.0.1:PORT/mcp -- stateless [TOOL [ARGUMENTS]]
--       protocol 2026-07-28, no session: version and capabilities travel in _meta,
--       the tool's name in the Mcp-Name header
--
-- TOOL is the tool's name (default system.get_info); ARGUMENTS its arguments as one JSON
-- object (default {}), e.g. `-- stateless gpio.read_pin '{"pin":17}'`. The arguments are
-- copied into the body as given, so they must be valid JSON.
--
-- The request is built once per thread, so every request of a run is identical.

local function quote(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

local function call_body(tool, arguments, meta)
  return '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    .. '"params":{"name":' .. quote(tool) .. ',"arguments":' .. arguments
    .. (meta and (',"_meta":' .. meta) or '') .. '}}'
end

local stateless_meta = '{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
  .. '"io.modelcontextprotocol/clientCapabilities":{}}'

function init(args)
  local mode = args[1]
  local rest
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  if mode == "session" and args[2] then
    rest = 3
  elseif mode == "stateless" then
    rest = 2
  else
    error("post.lua: pass `-- session SESSION_ID [TOOL [ARGUMENTS]]` or `-- stateless [TOOL [ARGUMENTS]]`")
  end
  local tool = args[rest] or "system.get_info"
  local arguments = args[rest + 1] or "{}"
  if not arguments:match("^%s*{.*}%s*$") then
    error("post.lua: ARGUMENTS must be one JSON object, got " .. arguments)
  end
  if mode == "session" then
    wrk.headers["Mcp-Session-Id"] = args[2]
    wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
    wrk.body = call_body(tool, arguments, nil)
  else
    wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
    wrk.headers["Mcp-Method"] = "tools/call"
    wrk.headers["Mcp-Name"] = tool
    wrk.body = call_body(tool, arguments, stateless_meta)
  end
end
