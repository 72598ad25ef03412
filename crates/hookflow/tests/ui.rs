//! The dashboard at `/ui/`, over real HTTP: its files, their types and security headers, the
//! redirect, and a check of its script against the API it calls (`/openapi.json`).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

/// Status, headers and body of one GET, without following redirects and without an API key.
struct Fetched {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Fetched {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

async fn fetch(server: &Server, path: &str) -> Fetched {
    server.api(); // installs the TLS crypto provider reqwest needs
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap();
    let resp = client
        .get(format!("{}{path}", server.base_url))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    Fetched {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.text().await.unwrap(),
    }
}

/// Asserts a dashboard file: 200, the content type, and the security headers.
async fn asset(server: &Server, path: &str, content_type: &str) -> String {
    let got = fetch(server, path).await;
    assert_eq!(got.status, 200, "{path}: {}", got.body);
    assert_eq!(got.header("content-type"), content_type, "{path}");
    let csp = got.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            csp.contains(directive),
            "{path}: CSP {csp:?} lacks {directive}"
        );
    }
    assert!(!csp.contains("unsafe"), "{path}: CSP {csp:?}");
    assert_eq!(got.header("x-content-type-options"), "nosniff", "{path}");
    got.body
}

/// The values of `attribute="…"` in an HTML text.
fn attribute_values(html: &str, attribute: &str) -> Vec<String> {
    let needle = format!("{attribute}=\"");
    html.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &html[at + needle.len()..];
            rest[..rest.find('"').expect("closing quote")].to_string()
        })
        .collect()
}

#[tokio::test]
async fn the_page_is_served_without_a_key_under_a_strict_csp_with_no_inline_code() {
    let server = Server::start_default().await;
    let html = asset(&server, "/ui/", "text/html; charset=utf-8").await;
    assert!(html.starts_with("<!doctype html>"), "{html}");

    // Every script is a file of its own (the CSP would block inline code anyway).
    let scripts: Vec<&str> = html.split("<script").skip(1).collect();
    assert!(!scripts.is_empty(), "the page loads a script");
    for script in scripts {
        let tag_end = script.find('>').unwrap();
        assert!(
            script[..tag_end].contains(" src=\""),
            "inline script: {script}"
        );
        assert!(
            script[tag_end + 1..].starts_with("</script>"),
            "a script with a src has no body: {script}"
        );
    }
    for inline in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " style=",
        "javascript:",
    ] {
        assert!(!html.contains(inline), "inline code or style: {inline}");
    }

    // What the page loads is served, with its type; nothing comes from elsewhere.
    let mut loaded = attribute_values(&html, "src");
    loaded.extend(
        attribute_values(&html, "href")
            .into_iter()
            .filter(|h| !h.starts_with('#')),
    );
    assert!(loaded.contains(&"app.js".to_string()), "{loaded:?}");
    assert!(loaded.contains(&"style.css".to_string()), "{loaded:?}");
    for file in &loaded {
        assert!(!file.contains("//"), "the page loads {file} from elsewhere");
        let expected = match file.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            other => panic!("unexpected file {file} ({other:?})"),
        };
        asset(&server, &format!("/ui/{file}"), expected).await;
    }
    // The page itself under its own name too.
    asset(&server, "/ui/index.html", "text/html; charset=utf-8").await;
}

#[tokio::test]
async fn ui_without_the_slash_redirects_and_unknown_files_are_404() {
    let server = Server::start_default().await;
    let got = fetch(&server, "/ui").await;
    assert!(
        matches!(got.status, 301 | 308),
        "/ui: {} {}",
        got.status,
        got.body
    );
    let base = url::Url::parse(&format!("{}/ui", server.base_url)).unwrap();
    let target = base.join(got.header("location")).unwrap();
    assert_eq!(target.as_str(), format!("{}/ui/", server.base_url));

    for path in ["/ui/nope.js", "/ui/app.css", "/ui/.env", "/ui/a/app.js"] {
        let got = fetch(&server, path).await;
        assert_eq!(got.status, 404, "{path}: {}", got.body);
        let body: Value = serde_json::from_str(&got.body).unwrap();
        assert_eq!(body["error_code"], "not_found", "{path}: {body}");
    }
}

/// Every quoted string of `js` that starts with `/v1/`.
fn api_paths(js: &str) -> Vec<String> {
    let mut out = Vec::new();
    for quote in ['\'', '"', '`'] {
        let start = format!("{quote}/v1/");
        for (at, _) in js.match_indices(&start) {
            let rest = &js[at + 1..];
            out.push(rest[..rest.find(quote).expect("closing quote")].to_string());
        }
    }
    out
}

/// A quoted string at the start of `text` (after blanks and one optional comma).
fn quoted(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    let text = text.strip_prefix(',').unwrap_or(text).trim_start();
    let quote = text.chars().next().filter(|c| matches!(c, '\'' | '"'))?;
    let rest = &text[1..];
    let end = rest.find(quote)?;
    Some((rest[..end].to_string(), &rest[end + 1..]))
}

#[tokio::test]
async fn the_script_calls_only_api_paths_and_methods_that_exist() {
    let server = Server::start_default().await;
    let js = asset(&server, "/ui/app.js", "text/javascript; charset=utf-8").await;
    let (status, openapi) = server.api().get("/openapi.json").await;
    assert_eq!(status, 200, "{openapi}");
    let paths = openapi["paths"].as_object().expect("openapi paths");

    let mentioned = api_paths(&js);
    for path in &mentioned {
        assert!(
            paths.contains_key(path),
            "app.js names {path}, which /openapi.json does not have"
        );
    }

    // Every API call is `request('METHOD', '/v1/…', …)` with literal method and path, so that
    // each is checked here; no call builds its path any other way.
    let calls: Vec<&str> = js.split("request(").skip(1).collect();
    let mut checked = BTreeSet::new();
    for call in &calls {
        if call.starts_with("method,") {
            continue; // the definition: `async function request(method, path, …)`
        }
        let (method, rest) =
            quoted(call).unwrap_or_else(|| panic!("request( without a literal method: {call:.80}"));
        let (path, _) =
            quoted(rest).unwrap_or_else(|| panic!("request( without a literal path: {call:.80}"));
        let operations = paths
            .get(&path)
            .unwrap_or_else(|| panic!("app.js calls {method} {path}, which does not exist"));
        assert!(
            operations.get(method.to_lowercase()).is_some(),
            "app.js calls {method} {path}; /openapi.json has only {:?}",
            operations.as_object().map(|o| o.keys().collect::<Vec<_>>())
        );
        checked.insert(format!("{method} {path}"));
    }
    // The dashboard's views and actions are all there (so the checks above are not vacuous).
    for expected in [
        "GET /v1/workflow/runs",
        "GET /v1/workflow/runs/{id}",
        "POST /v1/workflow/runs/{id}/cancel",
        "GET /v1/workflow/runs/{id}/deliveries",
        "POST /v1/workflow/runs/{id}/deliveries/retry",
        "GET /v1/workflow/approvals",
        "POST /v1/workflow/approvals/{id}",
        "GET /v1/workflows",
        "GET /v1/workflows/{name}",
        "GET /v1/deployments",
        "GET /v1/deployments/{id}",
    ] {
        assert!(
            checked.contains(expected),
            "app.js never calls {expected}: {checked:?}"
        );
    }
    let distinct_paths: BTreeSet<&String> = mentioned.iter().collect();
    assert!(distinct_paths.len() >= 9, "{distinct_paths:?}");
}

#[tokio::test]
async fn the_script_builds_the_page_from_text_and_never_reads_a_secret() {
    let server = Server::start_default().await;
    let js = asset(&server, "/ui/app.js", "text/javascript; charset=utf-8").await;
    for markup in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "DOMParser",
    ] {
        assert!(!js.contains(markup), "app.js uses {markup}");
    }
    for secret in [
        ".secret",
        "'secret'",
        "\"secret\"",
        "webhook_secret",
        "secret_values",
    ] {
        assert!(!js.contains(secret), "app.js reads {secret}");
    }
    // No external fetches: the API is reached relative to the page.
    assert!(!js.contains("http://") && !js.contains("https://"));
}
