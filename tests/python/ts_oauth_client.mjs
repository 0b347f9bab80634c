// The official MCP TypeScript SDK's OAuth client against mcp-raspi-server: given only the MCP
// URL and client credentials, it must find the authorization server through the server's
// 401 and protected-resource metadata, get a token, and call a tool. Prints the caller that
// system.get_capabilities reports, as JSON.
//
//   node ts_oauth_client.mjs SDK_DIR MCP_URL CLIENT_ID CLIENT_SECRET ISSUER
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const [sdk, url, clientId, clientSecret, issuer] = process.argv.slice(2);
const load = (path) => import(pathToFileURL(join(sdk, "dist/esm", path)).href);
const { Client } = await load("client/index.js");
const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");
const { ClientCredentialsProvider } = await load("client/auth-extensions.js");

const authProvider = new ClientCredentialsProvider({ clientId, clientSecret, scope: "mcp", expectedIssuer: issuer });
const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider });
const client = new Client({ name: "ts-oauth-test", version: "1" });
await client.connect(transport);
const result = await client.callTool({ name: "system.get_capabilities", arguments: {} });
console.log(JSON.stringify(result.structuredContent.caller));
await client.close();
