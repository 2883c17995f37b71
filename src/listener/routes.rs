//! What the listener answers beside `/ws`: the embedded dashboard,
//! `/healthz` and `/metrics`.

use std::sync::atomic::Ordering::Relaxed;

use super::{http, Shared};

/// The dashboard, embedded: (path, content type, body). Plain HTML, CSS and
/// JavaScript modules, no build step and no external fetch. `/client/` is the
/// JavaScript client package (`clients/js`), which the dashboard imports.
const DASHBOARD: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../dashboard/index.html")),
    ("/app.mjs", "text/javascript; charset=utf-8", include_str!("../dashboard/app.mjs")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../dashboard/style.css")),
    ("/client/index.mjs", "text/javascript; charset=utf-8", include_str!("../../clients/js/src/index.mjs")),
    ("/client/codec.mjs", "text/javascript; charset=utf-8", include_str!("../../clients/js/src/codec.mjs")),
    ("/client/follower.mjs", "text/javascript; charset=utf-8", include_str!("../../clients/js/src/follower.mjs")),
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

#[cfg(test)]
mod tests {
    use super::DASHBOARD;

    #[test]
    fn the_dashboard_with_its_client_modules_stays_under_48_kib() {
        let total: usize = DASHBOARD.iter().map(|(_, _, body)| body.len()).sum();
        assert!(total < 48 * 1024, "the dashboard's files are {total} bytes");
    }

    #[test]
    fn the_client_modules_are_served_where_their_relative_imports_point() {
        let paths: Vec<&str> = DASHBOARD.iter().map(|(p, _, _)| *p).collect();
        let mut imports = 0;
        for (path, _, body) in DASHBOARD.iter().filter(|(p, _, _)| p.starts_with("/client/")) {
            for import in body.lines().filter_map(|l| l.split(" from './").nth(1)) {
                let target = format!("/client/{}", import.split('\'').next().unwrap());
                assert!(paths.contains(&target.as_str()), "{path} imports {target}, which is not served");
                imports += 1;
            }
        }
        assert!(imports >= 3, "index.mjs imports codec and follower, follower imports codec");
        let app = DASHBOARD.iter().find(|(p, _, _)| *p == "/app.mjs").unwrap().2;
        assert!(app.contains("from '/client/follower.mjs'"));
    }
}
