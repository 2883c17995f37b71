//! What the listener answers beside `/ws`: the embedded dashboard,
//! `/healthz` (plain, and as a WebSocket upgrade) and `/metrics`.

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

/// `GET /healthz`: 200 with the health JSON while healthy, else 503 with it.
fn healthz(shared: &Shared) -> Vec<u8> {
    let report = shared.health();
    let code = if report.healthy() { 200 } else { 503 };
    http::response(code, "application/json", &[], report.json().as_bytes())
}

/// `GET /healthz` with `Upgrade: websocket` (docs/PROTOCOL.md §2.8): while
/// healthy, 101, the health JSON as one binary message, and a close 1000, all
/// in one write; otherwise the same 503 as a plain `GET /healthz`.
pub(super) fn healthz_upgrade(upgrade: &http::Upgrade, shared: &Shared) -> Vec<u8> {
    let report = shared.health();
    if !report.healthy() {
        return healthz(shared);
    }
    let mut out = http::switching_protocols(upgrade);
    push_frame(&mut out, 0x2, report.json().as_bytes());
    push_frame(&mut out, 0x8, &1000u16.to_be_bytes());
    out
}

/// One unmasked, final server frame (RFC 6455 §5.2) of at most 64 KiB.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match u16::try_from(payload.len()) {
        Ok(n) if n < 126 => out.push(n as u8),
        Ok(n) => {
            out.push(126);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => unreachable!("health messages are small"),
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_final_unmasked_with_their_length() {
        let mut out = Vec::new();
        push_frame(&mut out, 0x8, &1000u16.to_be_bytes());
        assert_eq!(out, [0x88, 2, 0x03, 0xe8]);
        let mut out = Vec::new();
        push_frame(&mut out, 0x2, &[7; 200]);
        assert_eq!(&out[..4], &[0x82, 126, 0, 200]);
        assert_eq!(out.len(), 4 + 200);
    }

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
