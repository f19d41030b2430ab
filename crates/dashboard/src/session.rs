//! Dashboard sessions: an admin token exchanged at sign-in for a random session id
//! (the cookie's value), held here in memory with its CSRF token and expiry. The
//! token itself never leaves the server: the cookie carries only the id, and pages
//! carry only the CSRF token. Sessions end on sign-out, on expiry, or when the
//! process stops (signing in again is the recovery).

use std::collections::HashMap;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_session";
/// The sign-in form's CSRF cookie (a double-submit value: there is no session yet).
pub const LOGIN_COOKIE: &str = "tollgate_login";
/// The path both cookies are sent on.
pub const COOKIE_PATH: &str = "/dashboard";
/// The most sessions held at once; the one closest to expiry makes room.
const MAX_SESSIONS: usize = 10_000;

/// Who is signed in: the admin token (kept only in memory, never printed) and what
/// the dashboard shows about it.
#[derive(Clone)]
pub struct Session {
    token: String,
    /// The project a scoped token is limited to; `None` for the operator.
    pub project: Option<String>,
    pub csrf: String,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("project", &self.project).field("expires_at_ms", &self.expires_at_ms).finish()
    }
}

impl Session {
    /// The admin token, for calls to the admin API made on this session's behalf.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn is_operator(&self) -> bool {
        self.project.is_none()
    }

    /// Whether a submitted form's CSRF token is this session's (constant time).
    pub fn csrf_matches(&self, submitted: Option<&str>) -> bool {
        submitted.is_some_and(|s| tokens_equal(s, &self.csrf))
    }
}

/// Two secrets compared in constant time (empty never matches).
pub fn tokens_equal(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// 32 random bytes as 64 hex digits: a session id, a CSRF token.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The sessions of this process.
pub struct Sessions {
    ttl_ms: i64,
    inner: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(ttl_ms: i64) -> Self {
        Self { ttl_ms, inner: Mutex::new(HashMap::new()) }
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_ms / 1000
    }

    /// Starts a session for a checked admin token; returns its id (the cookie value),
    /// or `None` when the system has no randomness.
    pub fn create(&self, token: &str, project: Option<String>, now_ms: i64) -> Option<(String, Session)> {
        let id = random_token()?;
        let session =
            Session { token: token.to_owned(), project, csrf: random_token()?, expires_at_ms: now_ms + self.ttl_ms };
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires_at_ms > now_ms);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires_at_ms).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The live session of a cookie value, if any (an expired one is dropped).
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.expires_at_ms > now_ms => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of one cookie in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, on the dashboard's path, for
/// `max_age_secs` (0 clears it), Secure when the page was served over TLS.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={COOKIE_PATH}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_until_it_expires_or_is_removed() {
        let sessions = Sessions::new(1000);
        let (id, s) = sessions.create("tga_secret", Some("acme".into()), 0).expect("session");
        assert_eq!(id.len(), 64);
        assert_ne!(id, s.csrf);
        assert!(!id.contains("tga_secret"));
        assert_eq!(sessions.get(&id, 999).map(|s| s.project), Some(Some("acme".into())));
        assert!(sessions.get(&id, 1000).is_none(), "expired");
        let (id, _) = sessions.create("t", None, 0).expect("session");
        sessions.remove(&id);
        assert!(sessions.get(&id, 1).is_none());
        assert!(sessions.get("nonsense", 1).is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let sessions = Sessions::new(1000);
        let (_, s) = sessions.create("tga_very_secret", None, 0).expect("session");
        assert!(s.csrf_matches(Some(&s.csrf.clone())));
        assert!(!s.csrf_matches(None));
        assert!(!s.csrf_matches(Some("")));
        assert!(!s.csrf_matches(Some(&s.csrf[1..])));
        assert!(!format!("{s:?}").contains("tga_very_secret"), "the token is never printed");
    }

    #[test]
    fn cookies_are_read_and_written_with_their_flags() {
        assert_eq!(cookie_value("a=1; tollgate_session=abc ; b=2", COOKIE), Some("abc"));
        assert_eq!(cookie_value("a=1", COOKIE), None);
        let c = set_cookie(COOKIE, "abc", 60, true);
        assert_eq!(c, "tollgate_session=abc; Path=/dashboard; Max-Age=60; HttpOnly; SameSite=Strict; Secure");
        assert!(!set_cookie(COOKIE, "", 0, false).contains("Secure"));
    }
}
