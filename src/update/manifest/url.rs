//! Where an artifact is fetched from: [`artifact_url`] resolves the URL a manifest lists
//! against the URL the manifest came from (RFC 3986 §5.2), and [`check_url_text`] refuses
//! what no well-formed URL holds, for the manifest's own validation too.

use super::ManifestError;

const MAX_URL_LEN: usize = 2048;

/// Resolves an artifact's URL against the URL its manifest was fetched from, as RFC 3986
/// §5.2 resolves references: `x.deb` and `../pool/x.deb` are taken from the manifest's
/// directory, `/pool/x.deb` from its host, `//host/x.deb` keeps its scheme, and an
/// absolute URL stands as it is. Both URLs must be http or https; the fragment, which no
/// HTTP client sends, is dropped.
pub fn artifact_url(manifest_url: &str, artifact_url: &str) -> Result<String, ManifestError> {
    let invalid = |url: &str, reason: String| ManifestError::InvalidUrl { url: url.to_string(), reason };
    check_url_text(manifest_url).map_err(|r| invalid(manifest_url, r))?;
    check_url_text(artifact_url).map_err(|r| invalid(artifact_url, r))?;
    let base = UrlParts::parse(manifest_url).map_err(|r| invalid(manifest_url, r))?;
    let Some(base_scheme) = base.scheme else {
        return Err(invalid(manifest_url, "the manifest's URL must be absolute (http:// or https://)".to_string()));
    };
    check_scheme(base_scheme).map_err(|r| invalid(manifest_url, r))?;
    if base.authority.is_none_or(str::is_empty) {
        return Err(invalid(manifest_url, "the URL names no host".to_string()));
    }
    let reference = UrlParts::parse(artifact_url).map_err(|r| invalid(artifact_url, r))?;

    let (scheme, authority, path, query);
    if let Some(ref_scheme) = reference.scheme {
        check_scheme(ref_scheme).map_err(|r| invalid(artifact_url, r))?;
        scheme = ref_scheme;
        authority = reference.authority;
        path = remove_dot_segments(reference.path);
        query = reference.query;
    } else {
        scheme = base_scheme;
        if reference.authority.is_some() {
            authority = reference.authority;
            path = remove_dot_segments(reference.path);
            query = reference.query;
        } else {
            authority = base.authority;
            if reference.path.is_empty() {
                path = base.path.to_string();
                query = reference.query.or(base.query);
            } else {
                path = if reference.path.starts_with('/') {
                    remove_dot_segments(reference.path)
                } else {
                    remove_dot_segments(&merge_paths(&base, reference.path))
                };
                query = reference.query;
            }
        }
    }
    let Some(authority) = authority.filter(|a| !a.is_empty()) else {
        return Err(invalid(artifact_url, "the URL names no host".to_string()));
    };
    let mut resolved = format!("{}://{authority}{path}", scheme.to_ascii_lowercase());
    if let Some(query) = query {
        resolved.push('?');
        resolved.push_str(query);
    }
    Ok(resolved)
}

/// A URL reference split as RFC 3986 appendix B splits it.
struct UrlParts<'a> {
    scheme: Option<&'a str>,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn parse(url: &'a str) -> Result<UrlParts<'a>, String> {
        let mut rest = url.split_once('#').map_or(url, |(before, _)| before);
        let mut scheme = None;
        if let Some(colon) = rest.find(':') {
            if !rest[..colon].contains(['/', '?']) {
                let candidate = &rest[..colon];
                let valid = candidate.starts_with(|c: char| c.is_ascii_alphabetic())
                    && candidate.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
                if !valid {
                    return Err("a relative path whose first segment holds ':' must start with './'".to_string());
                }
                scheme = Some(candidate);
                rest = &rest[colon + 1..];
            }
        }
        let mut authority = None;
        if let Some(after) = rest.strip_prefix("//") {
            let end = after.find(['/', '?']).unwrap_or(after.len());
            authority = Some(&after[..end]);
            rest = &after[end..];
        }
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        Ok(UrlParts { scheme, authority, path, query })
    }
}

fn check_scheme(scheme: &str) -> Result<(), String> {
    if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
        Ok(())
    } else {
        Err(format!("scheme {scheme:?} is not supported; use http or https"))
    }
}

/// Refuses what is never part of a well-formed URL, which is also what could make one
/// mean different things to different readers.
pub(crate) fn check_url_text(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("it is empty".to_string());
    }
    if url.len() > MAX_URL_LEN {
        return Err(format!("it is longer than {MAX_URL_LEN} characters"));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Err("it holds spaces, control, non-ASCII or backslash characters; percent-encode them".to_string());
    }
    Ok(())
}

/// RFC 3986 §5.2.3: the reference's path appended to the base's directory.
fn merge_paths(base: &UrlParts<'_>, reference: &str) -> String {
    if base.authority.is_some() && base.path.is_empty() {
        return format!("/{reference}");
    }
    match base.path.rfind('/') {
        Some(slash) => format!("{}{reference}", &base.path[..=slash]),
        None => reference.to_string(),
    }
}

/// RFC 3986 §5.2.4: `.` and `..` segments resolved; `..` never climbs above the root.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    let pop_segment = |output: &mut String| {
        let cut = output.rfind('/').unwrap_or(0);
        output.truncate(cut);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../").or_else(|| input.strip_prefix("./")) {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop_segment(&mut output);
        } else if input == "/.." {
            input = "/";
            pop_segment(&mut output);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MANIFEST_URL: &str = "https://releases.example.org/mcp-raspi/stable/manifest.json";

    #[test]
    fn relative_artifact_urls_resolve_against_the_manifests_url() {
        let cases = [
            (
                "../pool/mcp-raspi_0.2.0_arm64.deb",
                "https://releases.example.org/mcp-raspi/pool/mcp-raspi_0.2.0_arm64.deb",
            ),
            ("mcp-raspi.deb", "https://releases.example.org/mcp-raspi/stable/mcp-raspi.deb"),
            ("./a/./b/../c.deb", "https://releases.example.org/mcp-raspi/stable/a/c.deb"),
            ("../../../../../x.deb", "https://releases.example.org/x.deb"),
            ("/pool/x.deb", "https://releases.example.org/pool/x.deb"),
            ("/pool/../x.deb", "https://releases.example.org/x.deb"),
            ("//cdn.example.net/x.deb", "https://cdn.example.net/x.deb"),
            ("http://cdn.example.net/a/../x.deb?v=2", "http://cdn.example.net/x.deb?v=2"),
            ("HTTPS://cdn.example.net/x.deb#part", "https://cdn.example.net/x.deb"),
            ("pool/a:b.deb", "https://releases.example.org/mcp-raspi/stable/pool/a:b.deb"),
            ("x.deb?token=1", "https://releases.example.org/mcp-raspi/stable/x.deb?token=1"),
            ("..", "https://releases.example.org/mcp-raspi/"),
        ];
        for (reference, expected) in cases {
            assert_eq!(artifact_url(MANIFEST_URL, reference).unwrap(), expected, "{reference}");
        }
        assert_eq!(
            artifact_url("https://h.example:8443/m.json?sig=1", "x.deb").unwrap(),
            "https://h.example:8443/x.deb"
        );
        assert_eq!(artifact_url("http://h.example", "x.deb").unwrap(), "http://h.example/x.deb");
    }

    #[test]
    fn urls_that_are_not_http_or_are_malformed_are_refused() {
        let refused = [
            (MANIFEST_URL, "ftp://example.org/x.deb"),
            (MANIFEST_URL, "file:///tmp/x.deb"),
            (MANIFEST_URL, "x y.deb"),
            (MANIFEST_URL, "caf\u{e9}.deb"),
            (MANIFEST_URL, ""),
            (MANIFEST_URL, "a_b:c.deb"),
            (MANIFEST_URL, "https:///x.deb"),
            (MANIFEST_URL, "\\\\host\\x.deb"),
            ("file:///srv/manifest.json", "x.deb"),
            ("/srv/manifest.json", "x.deb"),
            ("https:///manifest.json", "x.deb"),
        ];
        for (base, reference) in refused {
            let err = artifact_url(base, reference).unwrap_err();
            assert!(matches!(err, ManifestError::InvalidUrl { .. }), "{base} {reference}: {err}");
        }
    }
}
