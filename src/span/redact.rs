//! Redaction. Credentials in what a span stores about URLs (query values of credential-like
//! parameters and URL userinfo become `REDACTED`), credential fields of request bodies, and the
//! user's body rules ([`Redactor`]: JSON paths and regexes from `[[redact]]`), applied during
//! assembly and ingest so nothing unredacted is ever stored.
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

// === user rules: [[redact]] ===

/// The default replacement of a `[[redact]]` rule.
pub const DEFAULT_REPLACEMENT: &str = "[REDACTED]";

/// A JSON path in the supported subset: `$`, then `.key`, `["key"]`, `[n]` and `[*]` (`*` also
/// as `.*`), e.g. `$.messages[*].content`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    /// Every element of an array or every value of an object.
    Any,
}

impl JsonPath {
    /// Parses the subset above; the error says what is wrong.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let rest = text
            .trim()
            .strip_prefix('$')
            .ok_or_else(|| format!("{text:?} must start with `$`"))?;
        let mut steps = Vec::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' => {
                    let mut key = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '.' || c == '[' {
                            break;
                        }
                        key.push(c);
                        chars.next();
                    }
                    match key.as_str() {
                        "" => return Err(format!("{text:?} has an empty key after `.`")),
                        "*" => steps.push(Step::Any),
                        _ => steps.push(Step::Key(key)),
                    }
                }
                '[' => {
                    let mut inner = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == ']' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err(format!("{text:?} has an unclosed `[`"));
                    }
                    let inner = inner.trim();
                    let quoted = inner
                        .strip_prefix('"')
                        .and_then(|i| i.strip_suffix('"'))
                        .or_else(|| inner.strip_prefix('\'').and_then(|i| i.strip_suffix('\'')));
                    if inner == "*" {
                        steps.push(Step::Any);
                    } else if let Some(key) = quoted {
                        steps.push(Step::Key(key.to_string()));
                    } else {
                        let n = inner.parse::<usize>().map_err(|_| {
                            format!("{text:?}: `[{inner}]` is not `[*]`, `[n]` or `[\"key\"]`")
                        })?;
                        steps.push(Step::Index(n));
                    }
                }
                other => {
                    return Err(format!(
                        "{text:?}: unexpected {other:?}; use `.key`, `[n]`, `[*]` or `[\"key\"]`"
                    ))
                }
            }
        }
        if steps.is_empty() {
            return Err(format!(
                "{text:?} names the whole body; name a field (e.g. `$.messages[*].content`)"
            ));
        }
        Ok(JsonPath(steps))
    }

    /// Replaces every value the path matches with `replacement`; returns how many.
    fn replace(&self, value: &mut serde_json::Value, replacement: &str) -> usize {
        fn walk(v: &mut serde_json::Value, steps: &[Step], replacement: &str) -> usize {
            let Some((step, rest)) = steps.split_first() else {
                *v = serde_json::Value::String(replacement.to_string());
                return 1;
            };
            match (step, v) {
                (Step::Key(k), serde_json::Value::Object(o)) => o
                    .get_mut(k)
                    .map_or(0, |child| walk(child, rest, replacement)),
                (Step::Index(i), serde_json::Value::Array(a)) => a
                    .get_mut(*i)
                    .map_or(0, |child| walk(child, rest, replacement)),
                (Step::Any, serde_json::Value::Array(a)) => {
                    a.iter_mut().map(|c| walk(c, rest, replacement)).sum()
                }
                (Step::Any, serde_json::Value::Object(o)) => {
                    o.values_mut().map(|c| walk(c, rest, replacement)).sum()
                }
                _ => 0,
            }
        }
        walk(value, &self.0, replacement)
    }
}

/// What one `[[redact]]` rule matches.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The whole value at a JSON path is replaced.
    Path(JsonPath),
    /// Every match inside every string value is replaced.
    Regex(regex::Regex),
}

/// One `[[redact]]` rule.
#[derive(Debug, Clone)]
pub struct RedactRule {
    pub matcher: Matcher,
    /// Inserted literally (`$1` is not expanded).
    pub replacement: String,
}

/// The user's body redaction rules, applied to every span's `input`, `output` and error message
/// before it is stored (captured calls in assembly, app spans at ingest).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    rules: Vec<RedactRule>,
}

impl Redactor {
    pub fn new(rules: Vec<RedactRule>) -> Redactor {
        Redactor { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies every rule, in order, to the span's input, output, LLM params and error message.
    /// (Token estimates were made on the unredacted text, so they stay right.)
    pub fn apply(&self, span: &mut super::Span) {
        if self.rules.is_empty() {
            return;
        }
        self.apply_value(&mut span.input);
        self.apply_value(&mut span.output);
        // `params` are the request's own top-level keys, so request paths (`$.user`) fit them.
        if let Some(llm) = span.llm.as_mut() {
            let mut params = serde_json::Value::Object(std::mem::take(&mut llm.params));
            self.apply_value(&mut params);
            if let serde_json::Value::Object(map) = params {
                llm.params = map;
            }
        }
        if let Some(err) = span.error.as_mut() {
            for rule in &self.rules {
                if let Matcher::Regex(re) = &rule.matcher {
                    replace_in_string(&mut err.message, re, &rule.replacement);
                }
            }
        }
    }

    /// Applies every rule to one JSON value (a non-JSON body is a string: only regexes apply).
    pub fn apply_value(&self, value: &mut serde_json::Value) {
        for rule in &self.rules {
            match &rule.matcher {
                Matcher::Path(path) => {
                    path.replace(value, &rule.replacement);
                }
                Matcher::Regex(re) => replace_strings(value, re, &rule.replacement),
            }
        }
    }
}

fn replace_strings(value: &mut serde_json::Value, re: &regex::Regex, replacement: &str) {
    // An explicit stack: a deeply nested body must not overflow ours.
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => replace_in_string(s, re, replacement),
            serde_json::Value::Array(a) => stack.extend(a.iter_mut()),
            serde_json::Value::Object(o) => stack.extend(o.values_mut()),
            _ => {}
        }
    }
}

fn replace_in_string(s: &mut String, re: &regex::Regex, replacement: &str) {
    if let std::borrow::Cow::Owned(new) = re.replace_all(s, regex::NoExpand(replacement)) {
        *s = new;
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
    fn json_paths_parse_the_documented_subset() {
        for ok in [
            "$.messages[*].content",
            "$.input",
            "$.a[0].b",
            "$[\"odd key\"].x",
            "$.tools.*.name",
        ] {
            assert!(JsonPath::parse(ok).is_ok(), "{ok} parses");
        }
        for bad in ["messages", "$", "$.", "$.a[", "$.a[x]", "$..a", "$a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn rules_redact_paths_and_regex_matches_everywhere() {
        let redactor = Redactor::new(vec![
            RedactRule {
                matcher: Matcher::Path(JsonPath::parse("$.messages[*].content").unwrap()),
                replacement: DEFAULT_REPLACEMENT.to_string(),
            },
            RedactRule {
                matcher: Matcher::Regex(
                    regex::Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}").unwrap(),
                ),
                replacement: "<email $1>".to_string(),
            },
        ]);
        let mut v = serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": "secret one"}, {"role": "system", "content": [{"type": "text", "text": "x"}]}],
            "metadata": {"deep": [["mail me at bob@example.com or eve@example.org"]]},
            "n": 3
        });
        redactor.apply_value(&mut v);
        assert_eq!(
            v["messages"][0]["content"], "[REDACTED]",
            "a path match is replaced whole"
        );
        assert_eq!(
            v["messages"][1]["content"], "[REDACTED]",
            "whatever its type"
        );
        assert_eq!(v["messages"][0]["role"], "user", "siblings are kept");
        assert_eq!(
            v["metadata"]["deep"][0][0], "mail me at <email $1> or <email $1>",
            "every regex match in nested strings is replaced, literally"
        );
        assert_eq!(v["n"], 3);
        let mut text = serde_json::json!("plain bob@example.com body");
        redactor.apply_value(&mut text);
        assert_eq!(
            text, "plain <email $1> body",
            "a non-JSON body gets the regexes"
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
