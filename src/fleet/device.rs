//! Calling a device's tools: its credential found where the fleet file says, and one MCP
//! call over HTTP(S) with one client (and its connections) shared by all devices.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;

use super::file::{Credential, Device, Fleet};
use crate::cli::call::{self, CallFailure, ToolAnswer};

/// How a request to one device authenticates. Secrets are never printed: `Debug` hides them.
#[derive(Clone)]
pub enum Auth {
    /// `Authorization: Bearer`: a token of the server, or an access token of its issuer.
    Bearer(String),
    /// Cloudflare Access service token headers, which Cloudflare turns into its assertion.
    ServiceToken { client_id: String, client_secret: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(…)"),
            Auth::ServiceToken { client_id, .. } => write!(f, "ServiceToken({client_id}, …)"),
        }
    }
}

/// Reads the secrets a credential names: `env` looks variables up.
pub fn resolve(credential: &Credential, env: &dyn Fn(&str) -> Option<String>) -> Result<Auth, String> {
    let from_env = |name: &str| {
        env(name).filter(|v| !v.trim().is_empty()).map(|v| v.trim().to_string()).ok_or_else(|| {
            format!("the credential's environment variable {name} is not set; export it before running mcp-fleet")
        })
    };
    if let Some(name) = &credential.token_env {
        return from_env(name).map(Auth::Bearer);
    }
    if let Some(path) = &credential.token_file {
        return secret_file(path).map(Auth::Bearer);
    }
    if let Some(service) = &credential.cloudflare_service_token {
        let client_secret = match (&service.client_secret_env, &service.client_secret_file) {
            (Some(name), _) => from_env(name)?,
            (None, Some(path)) => secret_file(path)?,
            (None, None) => return Err("the service token names no secret".into()),
        };
        return Ok(Auth::ServiceToken { client_id: service.client_id.clone(), client_secret });
    }
    Err("the credential names no secret".into())
}

/// Checks that only its owner may read the file at `path` (as ssh requires of keys); `what`
/// names it in errors.
pub fn check_private(path: &std::path::Path, what: &str) -> Result<(), String> {
    let shown = path.display();
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("cannot read {what} {shown}: {}", crate::cli::io_message(&e)))?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!("{what} {shown} may be read by others (mode {:o}); chmod 600 {shown}", mode & 0o777));
    }
    Ok(())
}

/// A file holding one secret, which only its owner may read.
fn secret_file(path: &std::path::Path) -> Result<String, String> {
    let shown = path.display();
    check_private(path, "the credential file")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the credential file {shown}: {}", crate::cli::io_message(&e)))?;
    let secret = text.trim();
    if secret.is_empty() || secret.contains('\n') {
        return Err(format!("the credential file {shown} must hold the secret alone, on one line"));
    }
    Ok(secret.to_string())
}

/// A device ready to be called.
#[derive(Debug)]
pub struct Target {
    pub id: String,
    pub url: String,
    auth: Result<Auth, String>,
}

impl Target {
    /// The target of `device`; a credential that cannot be read is reported on each call,
    /// so that one device's missing secret does not stop the others.
    pub fn of(fleet: &Fleet, device: &Device, env: &dyn Fn(&str) -> Option<String>) -> Target {
        let auth = resolve(&fleet.credential_of(device), env);
        Target { id: device.id.clone(), url: fleet.url_of(device), auth }
    }
}

/// Why a call to a device did not give the tool's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The credential could not be read here.
    Credential(String),
    /// No answer: refused, unreachable, too slow.
    Unreachable(String),
    /// The device refused the credential (HTTP 401 or 403).
    Refused(String),
    /// The device answered with an error (of MCP, or of the tool).
    Failed(String),
}

impl DeviceError {
    /// Whether the device answered at all.
    pub fn reachable(&self) -> bool {
        matches!(self, DeviceError::Refused(_) | DeviceError::Failed(_))
    }
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::Credential(m) => write!(f, "credential: {m}"),
            DeviceError::Unreachable(m) => write!(f, "unreachable: {m}"),
            DeviceError::Refused(m) => write!(f, "refused the credential: {m}"),
            DeviceError::Failed(m) => f.write_str(m),
        }
    }
}

/// The HTTP client of a run, shared by every device.
#[derive(Clone, Debug)]
pub struct Caller {
    client: reqwest::Client,
    timeout: Duration,
}

impl Caller {
    pub fn new(timeout: Duration) -> Result<Caller, String> {
        let client = crate::update::download::http_client()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(format!("mcp-fleet/{}", crate::base::VERSION))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", crate::cli::error_chain(&e)))?;
        Ok(Caller { client, timeout })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Calls `tool` on `target`; a tool's error result is an error here.
    pub async fn call(&self, target: &Target, tool: &str, arguments: Value) -> Result<Value, DeviceError> {
        let answer = self.call_answer(target, tool, arguments).await?;
        if answer.is_error {
            return Err(DeviceError::Failed(answer.text));
        }
        Ok(answer.structured.unwrap_or(Value::String(answer.text)))
    }

    /// Calls `tool` on `target` and returns the answer as it is, error results included.
    pub async fn call_answer(&self, target: &Target, tool: &str, arguments: Value) -> Result<ToolAnswer, DeviceError> {
        self.call_answer_within(target, tool, arguments, self.timeout).await
    }

    /// [`Self::call`] given `timeout` instead of the fleet's, for a tool that works long
    /// before it answers (an update downloads its package first).
    pub async fn call_within(
        &self,
        target: &Target,
        tool: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, DeviceError> {
        let answer = self.call_answer_within(target, tool, arguments, timeout).await?;
        if answer.is_error {
            return Err(DeviceError::Failed(answer.text));
        }
        Ok(answer.structured.unwrap_or(Value::String(answer.text)))
    }

    async fn call_answer_within(
        &self,
        target: &Target,
        tool: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<ToolAnswer, DeviceError> {
        let auth = target.auth.as_ref().map_err(|e| DeviceError::Credential(e.clone()))?;
        let mut request = self.client.post(&target.url).timeout(timeout);
        request = match auth {
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::ServiceToken { client_id, client_secret } => {
                let mut secret = reqwest::header::HeaderValue::from_str(client_secret)
                    .map_err(|_| DeviceError::Credential("the service token's secret is not a header value".into()))?;
                secret.set_sensitive(true);
                request.header("CF-Access-Client-Id", client_id).header("CF-Access-Client-Secret", secret)
            }
        };
        let call = call::tool_call(request, "mcp-fleet", tool, arguments, None);
        // The client's timeout covers each request; this covers a stream that trickles.
        let answer = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| DeviceError::Unreachable(format!("no answer within {} s", timeout.as_secs())))?;
        answer.map_err(|e| match e {
            CallFailure::Unreachable(e) if e.is_timeout() => {
                DeviceError::Unreachable(format!("no answer within {} s", timeout.as_secs()))
            }
            CallFailure::Unreachable(e) => DeviceError::Unreachable(unreachable_reason(&e)),
            CallFailure::Answered { status: status @ (401 | 403), message } => {
                DeviceError::Refused(format!("HTTP {status}: {message}"))
            }
            CallFailure::Answered { message, .. } => DeviceError::Failed(message),
            CallFailure::NoResult => DeviceError::Failed("the answer ended without a result".into()),
        })
    }
}

/// The innermost cause of a failed request, which says it plainly (connection refused,
/// no route to host, a certificate not trusted).
fn unreachable_reason(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return crate::cli::io_message(io);
        }
        last = s.to_string();
        source = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn credentials_come_from_the_environment_or_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let by_env: Credential = serde_saphyr::from_str("token_env: T").unwrap();
        assert!(matches!(resolve(&by_env, &env(&[("T", "env-secret")])), Ok(Auth::Bearer(t)) if t == "env-secret"));
        let e = resolve(&by_env, &env(&[])).unwrap_err();
        assert!(e.contains("T is not set"), "{e}");
        let by_file: Credential = serde_saphyr::from_str(&format!("token_file: {}", file.display())).unwrap();
        assert!(matches!(resolve(&by_file, &env(&[])), Ok(Auth::Bearer(t)) if t == "file-secret"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve(&by_file, &env(&[])).unwrap_err();
        assert!(e.contains("chmod 600") && !e.contains("file-secret"), "{e}");
        let service: Credential =
            serde_saphyr::from_str("cloudflare_service_token: { client_id: id.access, client_secret_env: CF }")
                .unwrap();
        let auth = resolve(&service, &env(&[("CF", "cf-secret")])).unwrap();
        assert!(matches!(&auth, Auth::ServiceToken { client_id, client_secret }
            if client_id == "id.access" && client_secret == "cf-secret"));
        assert!(!format!("{auth:?}").contains("cf-secret"));
    }
}
