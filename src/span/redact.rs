//! Credential redaction for what a span stores about URLs: query values of credential-like
//! parameters and URL userinfo become `REDACTED`.
//!
//! Headers are never stored at all, so `authorization`, `api-key`, `x-api-key`, `cookie` and
//! `proxy-authorization` cannot leak; this module covers the credentials apps put in URLs
//! (Azure's `?api-key=`, Gemini's `?key=`, signed URLs' `sig=`).

/// Query parameter names whose values are credentials, compared case-insensitively after
/// percent-decoding.
const CREDENTIAL_PARAMS: &[&str] = &[
    "key",
    "api-key",
    "api_key",
    "apikey",
    "access_token",
    "token",
    "sig",
    "signature",
];

pub(super) const REDACTED: &str = "REDACTED";

/// `path?query#fragment` with credential values replaced; everything else byte for byte.
pub(super) fn redact_path(path: &str) -> String {
    let (before_fragment, fragment) = match path.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (path, None),
    };
    let mut out = match before_fragment.split_once('?') {
        Some((p, q)) => format!("{p}?{}", redact_query(q)),
        None => before_fragment.to_string(),
    };
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// A full URL: userinfo (`user:pass@`) and credential query values redacted.
pub(super) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => authority.to_string(),
    };
    let scheme = scheme.map(|s| format!("{s}://")).unwrap_or_default();
    format!("{scheme}{authority}{}", redact_path(tail))
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_credential(key) => format!("{key}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn is_credential(raw_key: &str) -> bool {
    let decoded = form_urlencoded::parse(raw_key.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default();
    CREDENTIAL_PARAMS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(decoded.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_query_values_are_redacted() {
        let cases = [
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/x?api-key=sk-1&a=b", "/x?api-key=REDACTED&a=b"),
            ("/x?a=1&KEY=abc", "/x?a=1&KEY=REDACTED"),
            ("/x?Api_Key=1&apikey=2&access_token=3&token=4&sig=5&Signature=6", "/x?Api_Key=REDACTED&apikey=REDACTED&access_token=REDACTED&token=REDACTED&sig=REDACTED&Signature=REDACTED"),
            ("/x?api%2Dkey=secret", "/x?api%2Dkey=REDACTED"),
            ("/x?keyword=fine&monkey=fine&key", "/x?keyword=fine&monkey=fine&key"),
            ("/x?api-version=2024-06-01&api-key=s#frag", "/x?api-version=2024-06-01&api-key=REDACTED#frag"),
            ("/x?token=a=b=c", "/x?token=REDACTED"),
            ("/x?", "/x?"),
        ];
        for (input, want) in cases {
            assert_eq!(
                redact_path(input),
                want,
                "only the values of credential-like parameters are replaced in {input:?}"
            );
        }
    }

    #[test]
    fn url_userinfo_and_query_credentials_are_redacted() {
        assert_eq!(
            redact_url("https://user:pw@gw.example.com/openai?api-key=s"),
            "https://REDACTED@gw.example.com/openai?api-key=REDACTED",
            "userinfo and credential query values never reach the store"
        );
        assert_eq!(
            redact_url("https://api.openai.com"),
            "https://api.openai.com",
            "a plain base URL is unchanged"
        );
        assert_eq!(
            redact_url("not a url@all"),
            "REDACTED@all",
            "odd input never panics"
        );
    }
}
