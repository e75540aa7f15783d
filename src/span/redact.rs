//! Credential redaction for what a span stores about URLs: query values of credential-like
//! parameters and URL userinfo become `REDACTED`.
//!
//! Headers are never stored at all, so `authorization`, `api-key`, `x-api-key`, `cookie` and
//! `proxy-authorization` cannot leak; this module covers the credentials apps put in URLs
//! (Azure's `?api-key=`, Gemini's `?key=`, signed URLs' `sig=`).

/// Query parameter names whose values are credentials, compared case-insensitively after
/// percent-decoding. Short names match exactly; the fragments below match anywhere in the name
/// (`X-Amz-Signature`, `client_secret`, `refresh_token`, …). Over-redacting a harmless value is
/// the safe mistake.
const CREDENTIAL_PARAMS: &[&str] = &["key", "sig", "code", "pwd", "pass"];
const CREDENTIAL_FRAGMENTS: &[&str] = &[
    "apikey",
    "api-key",
    "api_key",
    "token",
    "secret",
    "signature",
    "credential",
    "password",
    "passwd",
    "auth",
    "session",
];
/// Top-level request-body keys that carry credentials (some gateways accept `api_key` in the
/// JSON body), compared case-insensitively with `-` and `_` ignored.
const BODY_CREDENTIAL_KEYS: &[&str] = &[
    "apikey",
    "accesstoken",
    "authorization",
    "clientsecret",
    "password",
    "secret",
    "token",
    "awssecretaccesskey",
    "awssessiontoken",
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
    let name = decoded.trim().to_ascii_lowercase();
    CREDENTIAL_PARAMS.contains(&name.as_str())
        || CREDENTIAL_FRAGMENTS.iter().any(|f| name.contains(f))
}

/// Replaces the values of credential-like top-level keys of a JSON request body.
pub(super) fn redact_body_credentials(body: &mut serde_json::Value) {
    let Some(obj) = body.as_object_mut() else {
        return;
    };
    for (key, value) in obj.iter_mut() {
        let normalised: String = key
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        if BODY_CREDENTIAL_KEYS.contains(&normalised.as_str()) && !value.is_null() {
            *value = serde_json::Value::String(REDACTED.to_string());
        }
    }
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

    #[test]
    fn signed_url_and_oauth_parameters_are_redacted() {
        let path = "/v1/x?X-Amz-Signature=S1&X-Amz-Credential=C1&X-Amz-Security-Token=T1&client_secret=CS&auth=A&code=OC&model=gpt-4o";
        let out = redact_path(path);
        for secret in ["S1", "C1", "T1", "CS", "=A&", "OC"] {
            assert!(!out.contains(secret), "{secret} is redacted from {out}");
        }
        assert!(
            out.ends_with("model=gpt-4o"),
            "harmless params are kept: {out}"
        );
    }

    #[test]
    fn credential_fields_in_a_request_body_are_redacted() {
        let mut body = serde_json::json!({"model": "m", "api_key": "sk-1", "apiKey": "sk-2", "Client-Secret": "s", "prompt_cache_key": "pc", "messages": []});
        redact_body_credentials(&mut body);
        assert_eq!(body["api_key"], REDACTED);
        assert_eq!(body["apiKey"], REDACTED);
        assert_eq!(body["Client-Secret"], REDACTED);
        assert_eq!(
            body["prompt_cache_key"], "pc",
            "a parameter that merely contains 'key' is not a credential"
        );
        assert_eq!(body["model"], "m");
    }
}
