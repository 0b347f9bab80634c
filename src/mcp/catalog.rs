//! What the server lists: tools (paginated), resources and prompts.

use std::sync::Arc;

use serde_json::{json, Value};

use super::json::{self as wire, Json};
use super::{Call, RpcError, Version};
use crate::config::Role;
use crate::logs::LogFilter;
use crate::tools::App;
use crate::tools::Cx;

/// Cursors are opaque to clients; ours are an offset into the catalogue.
fn parse_cursor(params: &Value) -> Result<usize, RpcError> {
    match params.get("cursor") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(c)) => c.strip_prefix("offset:").and_then(|n| n.parse().ok()).ok_or_else(|| {
            RpcError::invalid_params(format!("Invalid params: cursor {c:?} was not issued by this server"))
        }),
        Some(_) => Err(RpcError::invalid_params("Invalid params: cursor must be a string")),
    }
}

/// One page of the tools the caller's configuration enables, written from the listings
/// the catalogue keeps serialized.
pub fn list_tools(app: &Arc<App>, version: Version, params: &Value) -> Result<Json, RpcError> {
    let offset = parse_cursor(params)?;
    let page = app.config.server.page_size;
    let visible: Vec<&Json> =
        app.catalogue.entries().iter().filter(|e| app.tool_enabled(e.tool.spec())).map(|e| &e.listed).collect();
    if offset > visible.len() {
        return Err(RpcError::invalid_params("Invalid params: cursor is past the end of the list"));
    }
    let end = (offset + page).min(visible.len());
    let mut result = wire::Object::with_capacity(visible[offset..end].iter().map(|t| t.len() + 1).sum::<usize>() + 256);
    // The members in the order of every other answer's, which are sorted.
    let stateless = version.is_stateless();
    if stateless {
        result.json("_meta", super::stateless_meta_json()).value("cacheScope", "private");
    }
    if end < visible.len() {
        result.value("nextCursor", &format!("offset:{end}"));
    }
    if stateless {
        result.value("resultType", "complete");
    }
    result.json("tools", &wire::array(&visible[offset..end]));
    if stateless {
        result.value("ttlMs", &super::LISTING_TTL_MS);
    }
    Ok(result.finish())
}

struct ResourceDef {
    uri: &'static str,
    name: &'static str,
    title: &'static str,
    description: &'static str,
    min_role: Role,
}

const RESOURCES: [ResourceDef; 5] = [
    ResourceDef {
        uri: "raspi://system/info",
        name: "system-info",
        title: "System information",
        description: "The result of system.get_info: board, OS, kernel, CPU, memory, uptime, backend.",
        min_role: Role::Viewer,
    },
    ResourceDef {
        uri: "raspi://metrics/snapshot",
        name: "metrics-snapshot",
        title: "Metrics snapshot",
        description: "Current CPU, memory, disk, temperature and network values (metrics.get_snapshot).",
        min_role: Role::Viewer,
    },
    ResourceDef {
        uri: "raspi://metrics/last-24h",
        name: "metrics-last-24h",
        title: "Last 24 hours at a glance",
        description: "Each recorded series' minimum, average, maximum and last value over the last 24 hours, from the metrics history.",
        min_role: Role::Viewer,
    },
    ResourceDef {
        uri: "raspi://logs/app",
        name: "app-log-tail",
        title: "Application log tail",
        description: "The newest 100 entries of the server's application log, newest first.",
        min_role: Role::Viewer,
    },
    ResourceDef {
        uri: "raspi://logs/audit",
        name: "audit-log-tail",
        title: "Audit log tail",
        description: "The newest 100 audit records, newest first. Admin only.",
        min_role: Role::Admin,
    },
];

pub fn list_resources(call: &Call) -> Result<Value, RpcError> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| call.identity.role >= r.min_role)
        .map(|r| {
            json!({"uri": r.uri, "name": r.name, "title": r.title, "description": r.description, "mimeType": "application/json"})
        })
        .collect();
    Ok(json!({ "resources": resources }))
}

pub fn list_resource_templates() -> Result<Value, RpcError> {
    Ok(json!({"resourceTemplates": [{
        "uriTemplate": "raspi://process/{pid}",
        "name": "process",
        "title": "Process details",
        "description": "process.get_info for one process id.",
        "mimeType": "application/json",
    }]}))
}

fn not_found(uri: &str, version: Version) -> RpcError {
    let message =
        format!("Resource not found: {uri}. Call resources/list and resources/templates/list for what exists.");
    if version.is_stateless() {
        RpcError::invalid_params(message).data(json!({"uri": uri}))
    } else {
        RpcError::new(rmcp::model::ErrorCode::RESOURCE_NOT_FOUND, message).data(json!({"uri": uri}))
    }
}

pub async fn read_resource(app: &Arc<App>, call: &Call, params: &Value) -> Result<Value, RpcError> {
    let uri = params
        .get("uri")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("Invalid params: resources/read needs \"uri\""))?;
    let cx = Cx { app: app.clone(), identity: call.identity.clone(), progress: call.progress.clone() };
    let def = RESOURCES.iter().find(|r| r.uri == uri);
    if let Some(def) = def {
        if call.identity.role < def.min_role {
            let message = format!("{uri} needs the {} role; you have {}", def.min_role, call.identity.role);
            // Audited as a denied tool call is: who asked for what, and that it was refused.
            app.audit.write(&crate::audit::Record {
                time: std::time::SystemTime::now(),
                request_id: &call.request_id,
                identity: &call.identity.name,
                role: Some(call.identity.role),
                transport: call.transport,
                tool: "resources/read",
                arguments: json!({ "uri": uri }),
                outcome: crate::audit::Outcome::Denied,
                error_code: Some("permission_denied"),
                error: Some(&message),
                duration_ms: 0.0,
                deprecated: false,
                peer: None,
            });
            return Err(RpcError::invalid_params(message));
        }
    }
    let content = resource_content(&cx, uri, call.version).await?;
    let text = serde_json::to_string_pretty(&content).unwrap_or_default();
    Ok(json!({"contents": [{"uri": uri, "mimeType": "application/json", "text": text}]}))
}

/// The content of the resource `uri` (a known one, whose role was checked). Reading /proc
/// and the log files is blocking work, done on the blocking pool.
async fn resource_content(cx: &Cx, uri: &str, version: Version) -> Result<Value, RpcError> {
    use crate::tools::off_worker;
    let tool_error = |e: crate::tools::ToolError| RpcError::internal(format!("cannot read {uri}: {}", e.message));
    let cx = cx.clone();
    match uri {
        "raspi://system/info" => {
            serde_json::to_value(off_worker(move || crate::tools::system_info(&cx)).await.map_err(tool_error)?)
        }
        "raspi://metrics/snapshot" => {
            let args = crate::tools::SampleArguments { sample_ms: 0 };
            serde_json::to_value(crate::tools::metrics_snapshot(&cx, args).await.map_err(tool_error)?)
        }
        "raspi://metrics/last-24h" => {
            let summary = off_worker(move || {
                cx.app.metrics.summary(86_400).map_err(|e| match e {
                    crate::metrics::QueryError::Invalid(m) | crate::metrics::QueryError::Unavailable(m) => {
                        crate::tools::ToolError::unavailable(m)
                    }
                })
            })
            .await
            .map_err(tool_error)?;
            Ok(json!({"range": "24h", "series": summary}))
        }
        "raspi://logs/app" => serde_json::to_value(
            off_worker(move || crate::tools::app_entries(&cx, &LogFilter::default(), 100)).await.map_err(tool_error)?,
        ),
        "raspi://logs/audit" => serde_json::to_value(
            off_worker(move || crate::tools::audit_entries(&cx, &LogFilter::default(), 100))
                .await
                .map_err(tool_error)?,
        ),
        other => match other.strip_prefix("raspi://process/").and_then(|p| p.parse::<u32>().ok()) {
            Some(pid) => {
                let detail = off_worker(move || crate::tools::process_detail(&cx, pid)).await.map_err(|e| {
                    if e.code == "not_found" {
                        not_found(uri, version)
                    } else {
                        tool_error(e)
                    }
                })?;
                serde_json::to_value(detail)
            }
            None => return Err(not_found(uri, version)),
        },
    }
    .map_err(|e| RpcError::internal(format!("cannot encode {uri}: {e}")))
}

struct PromptDef {
    name: &'static str,
    title: &'static str,
    description: &'static str,
    /// (name, description, required)
    arguments: &'static [(&'static str, &'static str, bool)],
    template: &'static str,
}

const PROMPTS: [PromptDef; 3] = [
    PromptDef {
        name: "daily_health_check",
        title: "Daily health check",
        description: "The operator's daily check of a Raspberry Pi: health, temperature and power, disk, services, recent errors, server status.",
        arguments: &[],
        template: "Run the daily health check of this Raspberry Pi and report in a short table with a verdict per line.\n\
1. Call system.get_health_snapshot: report the verdict and every reason; flag under-voltage or throttling (check the power supply) and any temperature above 70 °C.\n\
2. Check disk use per mount: anything above 80% needs attention (logs, metrics retention, old releases).\n\
3. Call metrics.get_status: confirm the sampler records (state sampling, a recent last_round, no last_error); read raspi://metrics/last-24h for the day's peaks of temperature, CPU and memory.\n\
4. Call logs.get_recent_app_logs with level \"warn\" and since \"24h\": summarise the errors and warnings, grouped by cause.\n\
5. Call manage.get_server_status: report the version, the last update result and whether the ops agent is connected.\n\
6. Finish with the actions you recommend, most urgent first. Do not change anything.",
    },
    PromptDef {
        name: "troubleshoot_service",
        title: "Troubleshoot a service",
        description: "A step-by-step investigation of a systemd service that is failing or misbehaving.",
        arguments: &[("unit", "The systemd unit, e.g. nginx.service", true)],
        template: "Investigate why the systemd unit {unit} is failing or misbehaving on this Raspberry Pi.\n\
1. Call system.get_health_snapshot: is the machine itself healthy (memory, disk full, throttling)?\n\
2. Call process.list sorted by memory and by cpu: is {unit}'s process running, and is something starving it?\n\
3. Check the unit's state (service.get_status where available) and recent journal lines (logs.query_journal where available and allowed).\n\
4. Call logs.get_recent_app_logs with text \"{unit}\" for anything mcp-raspi saw.\n\
5. Give the most likely cause with the evidence, and the fix. Ask before restarting anything.",
    },
    PromptDef {
        name: "troubleshoot_update",
        title: "Troubleshoot an update",
        description: "Why the last self-update failed or rolled back, and what to do next.",
        arguments: &[],
        template: "Find out why the last mcp-raspi update failed or was rolled back.\n\
1. Call manage.get_server_status: note the version, current_release, previous_good_version, last_update (status, from, to, phase, reason) and reconciled.\n\
2. Call manage.list_versions: which releases are installed, which is current and which a rollback would go to.\n\
3. Call manage.update_server with dry_run true: whether the channel's manifest still verifies and what it offers.\n\
4. Call logs.get_recent_app_logs with text \"update\" and since \"7d\", then with level \"error\" and since \"24h\".\n\
5. Call system.get_health_snapshot: disk space and memory are common causes.\n\
6. Explain the cause and recommend either retrying, pinning a version (target_version), rolling back (manage.rollback) or staying on the current one. Change nothing yourself.",
    },
];

pub fn list_prompts() -> Result<Value, RpcError> {
    let prompts: Vec<Value> = PROMPTS
        .iter()
        .map(|p| {
            let args: Vec<Value> =
                p.arguments.iter().map(|(n, d, r)| json!({"name": n, "description": d, "required": r})).collect();
            json!({"name": p.name, "title": p.title, "description": p.description, "arguments": args})
        })
        .collect();
    Ok(json!({ "prompts": prompts }))
}

/// A prompt argument as it goes into the prompt text, checked as the tool it is meant for
/// checks it: `unit` is a systemd unit name (normalised: `nginx` is `nginx.service`), like
/// service.get_status's; anything else is 1 to 256 printable characters.
fn check_prompt_argument(name: &str, value: &str) -> Result<String, String> {
    if name == "unit" {
        return crate::platform::UnitName::parse(&crate::base::clip(value, 300)).map(|u| u.as_str().to_string());
    }
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err("must be 1 to 256 printable characters".into());
    }
    Ok(value.to_string())
}

pub fn get_prompt(params: &Value) -> Result<Value, RpcError> {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("Invalid params: prompts/get needs \"name\""))?;
    let prompt = PROMPTS.iter().find(|p| p.name == name).ok_or_else(|| {
        RpcError::invalid_params(format!("Invalid params: no prompt named {name:?}; call prompts/list"))
    })?;
    let given = params.get("arguments").and_then(Value::as_object);
    let mut text = prompt.template.to_string();
    for (arg, _, required) in prompt.arguments {
        let value = given.and_then(|g| g.get(*arg)).and_then(Value::as_str);
        match value {
            Some(v) => {
                let checked = check_prompt_argument(arg, v)
                    .map_err(|e| RpcError::invalid_params(format!("Invalid params: argument {arg:?}: {e}")))?;
                text = text.replace(&format!("{{{arg}}}"), &checked);
            }
            None if *required => {
                return Err(RpcError::invalid_params(format!(
                    "Invalid params: prompt {name} needs the argument {arg:?}"
                )))
            }
            None => {}
        }
    }
    Ok(json!({
        "description": prompt.description,
        "messages": [{"role": "user", "content": {"type": "text", "text": text}}],
    }))
}
