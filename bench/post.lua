-- wrk script: POST one MCP tools/call request (system.get_info) to /mcp.
--
--   wrk -s bench/post.lua http://127.0.0.1:PORT/mcp -- session SESSION_ID
--       protocol 2025-11-25, inside a session opened by `initialize`
--   wrk -s bench/post.lua http://127.0.0.1:PORT/mcp -- stateless
--       protocol 2026-07-28, no session: version and capabilities travel in _meta
--
-- The request is built once per thread, so every request of a run is identical.

local call_session = '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
  .. '"params":{"name":"system.get_info","arguments":{}}}'

local call_stateless = '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
  .. '"params":{"name":"system.get_info","arguments":{},'
  .. '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
  .. '"io.modelcontextprotocol/clientCapabilities":{}}}}'

function init(args)
  local mode = args[1]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  if mode == "session" and args[2] then
    wrk.headers["Mcp-Session-Id"] = args[2]
    wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
    wrk.body = call_session
  elseif mode == "stateless" then
    wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
    wrk.headers["Mcp-Method"] = "tools/call"
    wrk.headers["Mcp-Name"] = "system.get_info"
    wrk.body = call_stateless
  else
    error("post.lua: pass `-- session SESSION_ID` or `-- stateless`")
  end
end
