//! The dashboard in a real headless Chromium, driven over the DevTools
//! protocol, against the real server and a real mosquitto: a published value
//! shows within 1 s; a stopped server shows "not live"; a restarted server is
//! picked up again without a reload. Saves a screenshot under `target/`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;

use async_tungstenite::tungstenite::Message;
use common::*;
use serde_json::{json, Value as Json};
use smol::stream::StreamExt;

fn chromium_path() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Chromium not found: the dashboard test needs the Debian package `chromium` (apt-get install chromium)"
            )
        })
}

struct Browser {
    child: Child,
    ws_url: String,
}

impl Browser {
    fn launch() -> Browser {
        let profile = scratch_dir("chromium-profile");
        let mut child = Command::new(chromium_path())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--window-size=1280,860",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = Lines::read(child.stderr.take().unwrap());
        let line = stderr.until("DevTools listening on ", 30_000);
        let ws_url = line.split("DevTools listening on ").nth(1).unwrap().trim().to_owned();
        Browser { child, ws_url }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol session on one page.
struct Cdp {
    ws: async_tungstenite::WebSocketStream<smol::Async<std::net::TcpStream>>,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let addr = url.strip_prefix("ws://").unwrap().split('/').next().unwrap();
        let stream =
            smol::Async::<std::net::TcpStream>::connect(addr.parse::<std::net::SocketAddr>().unwrap()).await.unwrap();
        let config = async_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let (ws, _) = async_tungstenite::client_async_with_config(url, stream, Some(config)).await.unwrap();
        Cdp { ws, next_id: 1, session: None }
    }

    /// Sends a command without waiting; returns its id.
    async fn send(&mut self, method: &str, params: Json) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut cmd = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            cmd["sessionId"] = json!(s);
        }
        self.ws.send(Message::Text(cmd.to_string().into())).await.unwrap();
        id
    }

    /// Waits for the answer to command `id` (events are skipped).
    async fn answer(&mut self, id: u64) -> Json {
        loop {
            let m = self.ws.next().await.expect("devtools connection open").unwrap();
            let Message::Text(t) = m else { continue };
            let v: Json = serde_json::from_str(&t).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "devtools error: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Json) -> Json {
        let id = self.send(method, params).await;
        timeout(30_000, method, self.answer(id)).await
    }

    async fn eval(&mut self, expr: &str) -> Json {
        let r = self
            .call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }))
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls a JavaScript condition until it is true.
    async fn wait_for(&mut self, limit_ms: u64, what: &str, cond: &str) {
        let expr = format!(
            "new Promise((ok) => {{ const t = setInterval(() => {{ if ({cond}) {{ clearInterval(t); ok(true); }} }}, 10); }})"
        );
        timeout(limit_ms, what, self.eval(&expr)).await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|c| u32::from(val(*c))).collect();
        let n = v.iter().enumerate().fold(0u32, |acc, (i, x)| acc | (x << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decoder() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}

/// Readable sample data: a few rooms with history for the sparklines.
fn publish_sample(p: &mut Publisher, round: u32) {
    let r = f64::from(round);
    let wave = |base: f64, amp: f64, k: f64| base + amp * (r / k).sin();
    p.publish("sensors/living-room/temperature", format!("{:.2}", wave(21.4, 0.6, 3.0)));
    p.publish("sensors/living-room/humidity", format!("{:.1}", wave(45.0, 3.0, 5.0)));
    p.publish("sensors/living-room/co2", format!("{:.0}", wave(640.0, 80.0, 4.0)));
    p.publish("sensors/kitchen/temperature", format!("{:.2}", wave(23.1, 0.9, 2.5)));
    p.publish("sensors/bedroom/temperature", format!("{:.2}", wave(19.6, 0.4, 3.5)));
    p.publish(
        "meters/main/power",
        format!(
            r#"{{"power_w":{:.1},"voltage_v":{:.1},"current_a":{:.2}}}"#,
            wave(820.0, 200.0, 2.0),
            wave(230.0, 1.5, 1.7),
            wave(3.6, 0.9, 2.0)
        ),
    );
    p.publish("doors/front", if round % 7 < 4 { "closed" } else { "open" });
}

#[test]
fn the_dashboard_shows_live_values_notices_an_outage_and_recovers_without_reload() {
    let broker = Broker::start();
    // Token auth as on a gateway: the page passes its ?token= on, and the
    // browser's own Origin (the server's host and port) passes the default check.
    let hash = edgepush::internals::hex::encode(&edgepush::internals::sha256(b"t0ken-1"));
    let cfg = config(
        broker.port,
        &format!(
            "[heartbeat]\ninterval-ms = 1000\ntimeout-ms = 1000\n\
             [[auth.tokens]]\nname = \"wall\"\nsha256 = \"{hash}\"\nsubscribe = [\"#\"]\n"
        ),
    );
    let mut server = Server::start_linked(&cfg);
    let addr = server.addr;
    let mut publisher = Publisher::connect(broker.port);
    for round in 0..30 {
        publish_sample(&mut publisher, round);
    }
    publisher.flush();
    let browser = Browser::launch();
    let page_url = format!("http://{addr}/?token=t0ken-1");
    let shot = block_on_timeout(120_000, "browser test", async {
        let mut cdp = Cdp::connect(&browser.ws_url).await;
        let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" })).await;
        let attached =
            cdp.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true })).await;
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        cdp.call("Page.enable", json!({})).await;
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        cdp.call("Page.navigate", json!({ "url": page_url })).await;
        cdp.wait_for(10_000, "the page to go live", "document.getElementById('conn')?.dataset.state === 'live'").await;
        cdp.wait_for(5000, "the snapshot tiles", "document.querySelectorAll('.tile').length === 7").await;
        cdp.eval("window.__sameDocument = 42").await;
        // The page's ?token= goes on to /ws.
        assert_eq!(cdp.eval("window.edgepush.ws.url.endsWith('/ws?token=t0ken-1')").await, json!(true));
        // Without it, the browser's WebSocket is refused (401 before the upgrade).
        let bare = "new Promise((ok) => { const w = new WebSocket(location.origin.replace('http', 'ws') + '/ws'); \
                    w.onopen = () => ok('open'); w.onerror = () => ok('refused'); })";
        assert_eq!(cdp.eval(bare).await, json!("refused"));
        // The filter box re-subscribes.
        cdp.eval("document.getElementById('filter').value = 'sensors/living-room/+'; document.getElementById('filter-form').requestSubmit(); true").await;
        cdp.wait_for(5000, "the filtered tiles", "document.querySelectorAll('.tile').length === 3").await;
        cdp.eval("document.getElementById('filter').value = '#'; document.getElementById('filter-form').requestSubmit(); true").await;
        cdp.wait_for(5000, "all tiles again", "document.querySelectorAll('.tile').length === 7").await;

        // 1. A value published over MQTT is on screen within 1 s. The watcher
        // is installed (its answer says so) before the value is published.
        let probe = "document.querySelector('[data-topic=\"lab/probe\"] .value')?.textContent === '23.456'";
        cdp.eval(&format!("window.__probeShown = new Promise((ok) => {{ const t = setInterval(() => {{ if ({probe}) {{ clearInterval(t); ok(Date.now()); }} }}, 2); }}); true")).await;
        let published_at = edgepush::internals::now_ms();
        publisher.publish("lab/probe", "23.456");
        let shown_at =
            timeout(5000, "the probe value on screen", cdp.eval("window.__probeShown")).await.as_u64().unwrap();
        let latency = shown_at.saturating_sub(published_at);
        eprintln!("publish-to-screen latency: {latency} ms");
        assert!(latency < 1000, "{latency} ms");

        // The sparklines need a few more points; then the screenshot, once the
        // page has shown the last of them (its seq is the server's event count).
        for round in 30..40 {
            publish_sample(&mut publisher, round);
        }
        publisher.flush();
        let m = server.metrics();
        let total = 40 * 7 + 1;
        wait_until_async(5000, "the server to take every sample", || m.events_in.load(Relaxed) >= total).await;
        cdp.wait_for(5000, "the last sample", "document.querySelectorAll('.tile').length === 8").await;
        cdp.wait_for(5000, "the last sample on the page", &format!("Number(window.edgepush.lastSeq) >= {total}")).await;
        let png = cdp.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let shot = base64_decode(png["data"].as_str().unwrap());

        // 2. The server stops: the page says the data is not live.
        server.shutdown();
        cdp.wait_for(5000, "the not-live banner", "document.getElementById('banner').hidden === false").await;
        let state = cdp.eval("document.getElementById('conn').dataset.state").await;
        assert!(state == "reconnecting" || state == "connecting", "{state}");

        // 3. It comes back on the same address: the page resumes, no reload.
        let mut cfg2 = cfg.clone();
        cfg2.listen = addr;
        server = Server::start_linked(&cfg2);
        cdp.wait_for(40_000, "the page to go live again", "document.getElementById('conn').dataset.state === 'live'")
            .await;
        publisher.publish("lab/probe", "99.5");
        cdp.wait_for(
            5000,
            "a new value after the restart",
            "document.querySelector('[data-topic=\"lab/probe\"] .value')?.textContent === '99.5'",
        )
        .await;
        assert_eq!(cdp.eval("window.__sameDocument").await, json!(42), "the page was not reloaded");
        assert_eq!(cdp.eval("document.getElementById('banner').hidden").await, json!(true));
        shot
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("dashboard.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    if std::env::var_os("EDGEPUSH_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png"), &shot).unwrap();
    }
    drop(server);
}

/// History on first paint: values published before the page opened fill a
/// sparkline from the server's history ring, with no live event since.
#[test]
fn the_dashboard_paints_sparklines_from_history_at_first_load() {
    let broker = Broker::start();
    let cfg = config(broker.port, "");
    let server = Server::start_linked(&cfg);
    let addr = server.addr;
    let mut publisher = Publisher::connect(broker.port);
    for round in 0..12 {
        publisher.publish("hist/t", format!("{}", 20 + round % 5));
        publisher.publish("hist/door", if round % 2 == 0 { "open" } else { "closed" });
    }
    publisher.flush();
    let m = server.metrics();
    wait_until(5000, "the server to take every value", || m.events_in.load(Relaxed) >= 24);
    let browser = Browser::launch();
    let page_url = format!("http://{addr}/?filter=hist/%23");
    block_on_timeout(60_000, "browser test", async {
        let mut cdp = Cdp::connect(&browser.ws_url).await;
        let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" })).await;
        let attached =
            cdp.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true })).await;
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        cdp.call("Page.enable", json!({})).await;
        cdp.call("Page.navigate", json!({ "url": page_url })).await;
        cdp.wait_for(10_000, "the page to go live", "document.getElementById('conn')?.dataset.state === 'live'").await;
        let spark = "document.querySelector('[data-topic=\"hist/t\"]')";
        cdp.wait_for(5000, "twelve points in the sparkline", &format!("{spark}?.dataset.points === '12'")).await;
        // Drawn: the canvas has ink, from history alone (the snapshot is one value).
        let ink = format!(
            "(() => {{ const c = {spark}.querySelector('canvas'); \
             return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((x, i) => i % 4 === 3 && x > 0); }})()"
        );
        assert_eq!(cdp.eval(&ink).await, json!(true));
        // No live event has arrived: the resume point is the snapshot's Synced, 24.
        assert_eq!(cdp.eval("Number(window.edgepush.lastSeq)").await, json!(24));
        // A Text topic gets no sparkline and no error.
        assert_eq!(
            cdp.eval("document.querySelector('[data-topic=\"hist/door\"]').dataset.points ?? 'none'").await,
            json!("none")
        );
        assert_eq!(cdp.eval("document.getElementById('notice').hidden").await, json!(true));
    });
    drop(server);
}
