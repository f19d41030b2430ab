//! The dashboard of `tollgate serve`, as HTML: every page rendered on the server from
//! the admin API's JSON answers (askama templates, [`pages`]), charts drawn as SVG on
//! the server ([`chart`]), sessions and CSRF tokens ([`session`]), and the one CSS
//! file and small progressive-enhancement script compiled into the binary
//! ([`assets`]).
//!
//! This crate knows no HTTP framework and does no I/O: the server's
//! `routes/dashboard.rs` reads requests, calls the admin API's own handlers in
//! process under the session's admin token (so scoping is exactly the API's), and
//! hands the answers here.

pub mod assets;
pub mod chart;
pub mod export;
pub mod format;
pub mod pages;
pub mod session;

/// Whether an `Accept` header prefers HTML to JSON: a browser asking for `/` is sent
/// to the dashboard, an API client keeps the JSON answer. Q-values count; an
/// absent type has q 0, `*/*` gives JSON and HTML alike (JSON wins ties).
pub fn accept_prefers_html(accept: &str) -> bool {
    let mut html = 0.0f32;
    let mut json = 0.0f32;
    for part in accept.split(',') {
        let mut pieces = part.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = pieces
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "application/json" => json = json.max(q),
            "*/*" => json = json.max(q * 0.99),
            _ => {}
        }
    }
    html > 0.0 && html > json
}

#[cfg(test)]
mod tests {
    use super::accept_prefers_html;

    #[test]
    fn browsers_prefer_html_and_api_clients_do_not() {
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";
        assert!(accept_prefers_html(chrome));
        assert!(!accept_prefers_html("application/json"));
        assert!(!accept_prefers_html("*/*"));
        assert!(!accept_prefers_html(""));
        assert!(!accept_prefers_html("application/json, text/html;q=0.5"));
        assert!(accept_prefers_html("text/html;q=0.9, application/json;q=0.5"));
        assert!(!accept_prefers_html("text/html;q=0"));
    }
}
