//! The request headers `/mcp` and `/metrics` read, and the host names in them.

use std::borrow::Cow;

use warp::http::HeaderMap;

/// The request headers this transport reads, found in one pass over the request's
/// headers. Each is the first value of its name, `None` when absent or not visible ASCII.
#[derive(Default)]
pub(super) struct Headers<'a> {
    pub(super) host: Option<&'a str>,
    pub(super) origin: Option<&'a str>,
    pub(super) authorization: Option<&'a str>,
    pub(super) content_type: Option<&'a str>,
    pub(super) accept: Option<&'a str>,
    pub(super) session_id: Option<&'a str>,
    pub(super) protocol_version: Option<&'a str>,
    pub(super) method: Option<&'a str>,
    pub(super) name: Option<&'a str>,
    pub(super) access_assertion: Option<&'a str>,
    pub(super) cookie: Option<&'a str>,
    pub(super) cf_ray: Option<&'a str>,
}

impl<'a> Headers<'a> {
    pub(super) fn read(map: &'a HeaderMap) -> Headers<'a> {
        let mut h = Headers::default();
        let mut seen = 0u16;
        for (name, value) in map {
            let (bit, slot) = match name.as_str() {
                "host" => (1, &mut h.host),
                "origin" => (2, &mut h.origin),
                "authorization" => (4, &mut h.authorization),
                "content-type" => (8, &mut h.content_type),
                "accept" => (16, &mut h.accept),
                "mcp-session-id" => (32, &mut h.session_id),
                "mcp-protocol-version" => (64, &mut h.protocol_version),
                "mcp-method" => (128, &mut h.method),
                "mcp-name" => (256, &mut h.name),
                "cf-access-jwt-assertion" => (512, &mut h.access_assertion),
                "cookie" => (1024, &mut h.cookie),
                "cf-ray" => (2048, &mut h.cf_ray),
                _ => continue,
            };
            if seen & bit == 0 {
                seen |= bit;
                *slot = value.to_str().ok();
            }
        }
        h
    }
}

/// The host part of a `Host` header or origin authority, without port.
pub(super) fn host_of(authority: &str) -> &str {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    a.rsplit_once(':').filter(|(_, p)| p.bytes().all(|c| c.is_ascii_digit())).map_or(a, |(h, _)| h)
}

/// [`host_of`], lower case.
pub(super) fn host_part(authority: &str) -> String {
    host_of(authority).to_ascii_lowercase()
}

pub(super) fn is_loopback_name(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Header values that are not plain ASCII arrive as `=?base64?...?=`.
pub(super) fn decode_header_value(v: &str) -> Option<Cow<'_, str>> {
    match v.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        Some(b64) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(bytes).ok().map(Cow::Owned)
        }
        None => Some(Cow::Borrowed(v)),
    }
}

#[cfg(test)]
mod tests {
    use warp::http::HeaderValue;

    use super::*;

    #[test]
    fn host_parts_drop_ports_and_brackets() {
        assert_eq!(host_part("LocalHost:8000"), "localhost");
        assert_eq!(host_part("[::1]:8000"), "::1");
        assert_eq!(host_part("evil.example"), "evil.example");
        assert!(is_loopback_name("127.0.0.2"));
        assert!(!is_loopback_name("evil.example"));
    }

    #[test]
    fn each_header_read_is_the_first_value_of_its_name() {
        let mut map = HeaderMap::new();
        map.append("Host", HeaderValue::from_bytes(b"caf\xe9").unwrap_or_else(|_| unreachable!()));
        map.append("host", HeaderValue::from_static("localhost"));
        map.append("MCP-Protocol-Version", HeaderValue::from_static("2025-11-25"));
        map.append("mcp-protocol-version", HeaderValue::from_static("2026-07-28"));
        map.append("Mcp-Name", HeaderValue::from_static("system.get_info"));
        map.append("x-other", HeaderValue::from_static("ignored"));
        let h = Headers::read(&map);
        assert_eq!(h.host, None, "the first Host is not ASCII: the second is not read instead");
        assert_eq!(h.protocol_version, Some("2025-11-25"));
        assert_eq!(h.name, Some("system.get_info"));
        assert_eq!((h.origin, h.method, h.session_id), (None, None, None));
    }

    #[test]
    fn encoded_header_values_are_decoded() {
        assert_eq!(decode_header_value("=?base64?w6lsw6k=?=").as_deref(), Some("élé"));
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
    }
}
