//! What the listener answers beside `/ws`: the embedded dashboard,
//! `/healthz` and `/metrics`.

use std::sync::atomic::Ordering::Relaxed;

use super::{http, Shared};

/// The dashboard, embedded: (path, content type, body). Plain HTML, CSS and
/// JavaScript modules, no build step and no external fetch.
const DASHBOARD: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../dashboard/index.html")),
    ("/app.mjs", "text/javascript; charset=utf-8", include_str!("../dashboard/app.mjs")),
    ("/postcard.mjs", "text/javascript; charset=utf-8", include_str!("../dashboard/postcard.mjs")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../dashboard/style.css")),
];

/// The answer to `GET path` (anything but `/ws`).
pub(super) fn get(path: &str, shared: &Shared) -> Vec<u8> {
    match path {
        "/healthz" => healthz(shared),
        "/metrics" => http::response(200, "text/plain; version=0.0.4", &[], shared.metrics.render().as_bytes()),
        _ => match DASHBOARD.iter().find(|(p, _, _)| *p == path) {
            Some((_, kind, body)) => http::response(200, kind, &[], body.as_bytes()),
            None => http::error_response(404, "not found", &[]),
        },
    }
}

fn healthz(shared: &Shared) -> Vec<u8> {
    let up = shared.metrics.broker_up.load(Relaxed);
    let stopping = shared.shutting_down.load(Relaxed);
    let status = if stopping {
        "shutting_down"
    } else if up {
        "ok"
    } else {
        "broker_down"
    };
    let body = format!(
        "{{\"status\":\"{status}\",\"broker_up\":{up},\"connections\":{}}}\n",
        shared.metrics.connections.load(Relaxed)
    );
    let code = if status == "ok" { 200 } else { 503 };
    http::response(code, "application/json", &[], body.as_bytes())
}
