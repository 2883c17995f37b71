//! `GET /access`: what a `/ws` handshake from the same address, with the
//! same credentials and Origin, would decide, as JSON a page can read (a
//! browser never sees the status of a refused WebSocket upgrade, so a page
//! cannot otherwise tell a missing token from a full gateway). It takes no
//! connection slot and takes a token from the address's connection-rate
//! bucket, like any connection attempt. `GET /dashboard.json` is the
//! `[dashboard]` section, for the same credentials.

use std::net::IpAddr;
use std::sync::Arc;

use super::auth::{self, Denied, Identity};
use super::http::{self, Head};
use super::json::Json;
use super::jwt::Rejected;
use super::{Live, Shared};
use crate::config::Dashboard;
use crate::metrics::Refusal;
use edgepush_protocol::{origin, topic, Permissions};

/// What the handshake would decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 101: it would upgrade, with these scopes.
    Ok(Arc<Permissions>),
    /// 503: shutting down.
    ShuttingDown,
    /// 503: `max-connections` reached.
    Full,
    /// 429: the address's connection rate, the address's cap or the token's cap.
    RateLimited(&'static str),
    /// 401: no credential presented.
    TokenRequired,
    /// 401: a credential that matches no token, or a JWT that fails.
    TokenInvalid(&'static str),
    /// 401: a JWT past its `exp` (plus the leeway).
    TokenExpired,
    /// 403.
    OriginNotAllowed,
}

/// Seconds a page waits before it asks again, as `Retry-After` says.
const RETRY_FULL_S: u32 = 5;
const RETRY_RATE_S: u32 = 1;

impl Verdict {
    /// The status `/access` answers with: the handshake's own.
    pub fn status(&self) -> u16 {
        match self {
            Verdict::Ok(_) => 200,
            Verdict::ShuttingDown | Verdict::Full => 503,
            Verdict::RateLimited(_) => 429,
            Verdict::TokenRequired | Verdict::TokenInvalid(_) | Verdict::TokenExpired => 401,
            Verdict::OriginNotAllowed => 403,
        }
    }

    /// The `access` member: what the page keys its message on.
    fn name(&self) -> &'static str {
        match self {
            Verdict::Ok(_) => "ok",
            Verdict::ShuttingDown => "shutting-down",
            Verdict::Full => "full",
            Verdict::RateLimited(_) => "rate-limited",
            Verdict::TokenRequired => "token-required",
            Verdict::TokenInvalid(_) => "token-invalid",
            Verdict::TokenExpired => "token-expired",
            Verdict::OriginNotAllowed => "origin-not-allowed",
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Verdict::Ok(_) => "a WebSocket with these credentials would be accepted now",
            Verdict::ShuttingDown => "the gateway is shutting down",
            Verdict::Full => "the gateway holds all the connections it takes (max-connections)",
            Verdict::RateLimited(why) | Verdict::TokenInvalid(why) => why,
            Verdict::TokenRequired => {
                "a token is required (Authorization: Bearer, ?token= or the edgepush_token cookie)"
            }
            Verdict::TokenExpired => Rejected::Expired.reason(),
            Verdict::OriginNotAllowed => "this page's Origin is not allowed (auth.allowed-origins)",
        }
    }

    fn retry_after_s(&self) -> Option<u32> {
        match self {
            Verdict::ShuttingDown | Verdict::Full => Some(RETRY_FULL_S),
            Verdict::RateLimited(_) => Some(RETRY_RATE_S),
            _ => None,
        }
    }

    /// The JSON body: `access`, `reason`, and `subscribe` and `publish`
    /// (the presented credential's own scopes) when ok, or `retry_after_s`.
    pub fn json(&self) -> String {
        let list = |l: &[String]| Json::Arr(l.iter().map(|f| f.as_str().into()).collect());
        let mut members = vec![("access".into(), self.name().into()), ("reason".into(), self.reason().into())];
        if let Verdict::Ok(p) = self {
            members.push(("subscribe".into(), list(&p.subscribe)));
            members.push(("publish".into(), list(&p.publish)));
        }
        if let Some(s) = self.retry_after_s() {
            members.push(("retry_after_s".into(), Json::Num(f64::from(s))));
        }
        Json::Obj(members).to_string()
    }

    /// The whole HTTP answer.
    pub fn answer(&self) -> Vec<u8> {
        let retry = self.retry_after_s().map(|s| s.to_string());
        let mut extra = Vec::new();
        if let Some(r) = &retry {
            extra.push(("Retry-After", r.as_str()));
        }
        if self.status() == 401 {
            extra.push(("WWW-Authenticate", "Bearer"));
        }
        http::response(self.status(), "application/json", &extra, self.json().as_bytes())
    }
}

/// The credential check of the handshake (§2.5), as a verdict.
fn credentials(head: &Head<'_>, query: Option<&str>, live: &Live) -> Result<Identity, Verdict> {
    let cookies: Vec<&[u8]> = head.all("cookie").collect();
    let token = auth::presented(head.get("authorization"), query, &cookies);
    live.auth.check(token.as_deref()).map_err(|d| match d {
        Denied::Missing => Verdict::TokenRequired,
        Denied::Unknown => Verdict::TokenInvalid("unknown token"),
        Denied::Jwt(Rejected::Expired) => Verdict::TokenExpired,
        Denied::Jwt(r) => Verdict::TokenInvalid(r.reason()),
    })
}

/// One connection attempt's worth of `ip`'s rate, counted like one when refused.
fn rate(shared: &Shared, ip: IpAddr) -> Result<(), Verdict> {
    shared.admission.try_rate(ip).map_err(|r| {
        shared.metrics.refused(r);
        Verdict::RateLimited("too many connection attempts from your address (connections-per-second-per-ip)")
    })
}

/// `GET /access`: the handshake's checks in its order (§2.4), but the rate
/// first, so that the check itself is bounded. The Origin is the request's
/// `Origin` header, else its `origin=` query parameter: a browser sends no
/// Origin on a same-origin `GET`, so the page names its own.
pub(super) fn check(head: &Head<'_>, query: Option<&str>, ip: IpAddr, shared: &Shared, live: &Live) -> Verdict {
    match decide(head, query, ip, shared, live) {
        Ok(v) | Err(v) => v,
    }
}

fn decide(head: &Head<'_>, query: Option<&str>, ip: IpAddr, shared: &Shared, live: &Live) -> Result<Verdict, Verdict> {
    rate(shared, ip)?;
    if shared.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Verdict::ShuttingDown);
    }
    match shared.admission.would_admit(ip) {
        Err(Refusal::Capacity) => return Err(Verdict::Full),
        Err(_) => return Err(Verdict::RateLimited("too many connections from your address (max-connections-per-ip)")),
        Ok(()) => {}
    }
    let who = credentials(head, query, live)?;
    let named = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("origin=")));
    let named = named.map(|v| auth::percent_decode(v.as_bytes()));
    let page_origin = head.get("origin").or(named.as_deref());
    if !origin::permitted(page_origin, head.get("host"), live.origins.as_deref(), live.tls.is_some()) {
        return Err(Verdict::OriginNotAllowed);
    }
    if let (Some(name), Some(max)) = (&who.name, who.max_connections) {
        if shared.admission.would_admit_token(name, max).is_err() {
            return Err(Verdict::RateLimited("this token holds all its connections (its max-connections)"));
        }
    }
    Ok(Verdict::Ok(who.perms))
}

/// `GET /dashboard.json`: the `[dashboard]` section for a request whose
/// credentials `/ws` would take (rate-limited the same way), cut to what
/// those credentials may see; otherwise the `/access` answer that says why not.
pub(super) fn dashboard(head: &Head<'_>, query: Option<&str>, ip: IpAddr, shared: &Shared, live: &Live) -> Vec<u8> {
    match rate(shared, ip).and_then(|()| credentials(head, query, live)) {
        Ok(who) => http::response(200, "application/json", &[], dashboard_json(&live.dashboard, &who.perms).as_bytes()),
        Err(v) => v.answer(),
    }
}

/// A rule's keys that describe its control: left out where the token may not publish.
const CONTROL_KEYS: &[&str] = &["control", "publish-topic", "payload-on", "payload-off"];

/// `[dashboard]` as the page reads it (the file's keys with `_` for `-`), for
/// a token with `perms`: only the rules whose filter overlaps one of its
/// subscribe scopes, a rule's control only where it may publish there, and
/// only the groups those rules name. A read-only token learns no command
/// topic or payload, and no token learns topics `/ws` would not show it.
pub(super) fn dashboard_json(d: &Dashboard, perms: &Permissions) -> String {
    let text = |s: &str| Json::Str(s.to_owned());
    let visible: Vec<_> =
        d.rules.iter().filter(|r| perms.subscribe.iter().any(|p| topic::overlaps(p, &r.filter))).collect();
    let groups = d.groups.iter().filter(|g| visible.iter().any(|r| r.group.as_deref() == Some(g.as_str())));
    let rules = visible.iter().map(|r| {
        let target = r.publish_topic.as_deref().unwrap_or(&r.filter);
        let control = r.control.is_some() && perms.publish.iter().any(|p| topic::overlaps(p, target));
        let mut m = vec![("filter".to_owned(), text(&r.filter))];
        let texts = r.texts().filter(|(k, _)| control || !CONTROL_KEYS.contains(k));
        m.extend(texts.map(|(k, v)| (k.replace('-', "_"), Json::Str(v))));
        if let Some(n) = r.decimals {
            m.push(("decimals".into(), Json::Num(f64::from(n))));
        }
        m.extend(r.numbers().map(|(k, v)| (k.replace('-', "_"), Json::Num(v))));
        Json::Obj(m)
    });
    Json::Obj(vec![
        ("title".into(), text(&d.title)),
        ("groups".into(), Json::Arr(groups.map(|g| text(g)).collect())),
        ("rules".into(), Json::Arr(rules.collect())),
    ])
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::json;

    #[test]
    fn each_verdict_has_its_status_and_json() {
        let perms = Arc::new(Permissions { subscribe: vec!["#".into()], publish: vec!["cmd/+".into()] });
        let ok = json::parse(Verdict::Ok(perms).json().as_bytes()).unwrap();
        assert_eq!(ok.get("access"), Some(&"ok".into()));
        assert_eq!(ok.get("publish"), Some(&Json::Arr(vec!["cmd/+".into()])));
        let cases = [
            (Verdict::ShuttingDown, 503, "shutting-down", Some(5.0)),
            (Verdict::Full, 503, "full", Some(5.0)),
            (Verdict::RateLimited("x"), 429, "rate-limited", Some(1.0)),
            (Verdict::TokenRequired, 401, "token-required", None),
            (Verdict::TokenInvalid("unknown token"), 401, "token-invalid", None),
            (Verdict::TokenExpired, 401, "token-expired", None),
            (Verdict::OriginNotAllowed, 403, "origin-not-allowed", None),
        ];
        for (v, status, name, retry) in cases {
            assert_eq!(v.status(), status);
            let j = json::parse(v.json().as_bytes()).unwrap();
            assert_eq!(j.get("access"), Some(&name.into()), "{v:?}");
            assert!(j.get("subscribe").is_none(), "no scopes but the presenter's own, and only when ok");
            assert_eq!(j.get("retry_after_s"), retry.map(Json::Num).as_ref(), "{v:?}");
            let answer = String::from_utf8(v.answer()).unwrap();
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
            assert_eq!(answer.contains("Retry-After: "), retry.is_some(), "{answer}");
        }
    }

    #[test]
    fn the_dashboard_as_json() {
        let cfg = crate::config::Config::from_toml(
            "[auth]\nmode = \"none\"\n[dashboard]\ntitle = \"Plant \\\"3\\\"\"\n[[dashboard.rule]]\nfilter = \"a/+\"\n\
             unit = \"°C\"\ndecimals = 1\nalarm-above = 30.5\ngroup = \"Hall\"\ncontrol = \"number\"\npublish-topic = \"a/set\"\n",
            "t",
            None,
        )
        .unwrap();
        let all = Permissions { subscribe: vec!["#".into()], publish: vec!["a/#".into()] };
        let text = dashboard_json(&cfg.dashboard, &all);
        assert_eq!(
            text,
            r#"{"title":"Plant \"3\"","groups":["Hall"],"rules":[{"filter":"a/+","unit":"°C","group":"Hall","control":"number","publish_topic":"a/set","decimals":1,"alarm_above":30.5}]}"#
        );
        assert!(json::parse(text.as_bytes()).is_some());
        // Read-only: the rule without its control; outside the scopes: nothing.
        let read_only = Permissions { subscribe: vec!["a/b".into()], publish: vec![] };
        assert_eq!(
            dashboard_json(&cfg.dashboard, &read_only),
            r#"{"title":"Plant \"3\"","groups":["Hall"],"rules":[{"filter":"a/+","unit":"°C","group":"Hall","decimals":1,"alarm_above":30.5}]}"#
        );
        let elsewhere = Permissions { subscribe: vec!["b/#".into(), "$SYS/#".into()], publish: vec!["a/set".into()] };
        assert_eq!(dashboard_json(&cfg.dashboard, &elsewhere), r#"{"title":"Plant \"3\"","groups":[],"rules":[]}"#);
    }
}
