//! One end-to-end check of a server, as `edgepush probe` runs it: connect
//! (TCP, TLS, the upgrade and the Hello), subscribe and wait for `Synced`,
//! then a `Ping`/`Pong` round trip through the server's hub, each step timed
//! and the whole under one deadline.

use std::fmt;
use std::time::{Duration, Instant};

use edgepush_protocol::{ClientMsg, ServerMsg};
use smol::future::FutureExt as _;

use crate::{Client, ClientError, ConnectOptions};

/// A step of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// TCP, TLS, the upgrade and the server's Hello.
    Connect,
    /// The Subscribe until its `Synced`.
    Synced,
    /// A `Ping` until its `Pong`.
    Ping,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect",
            Step::Synced => "synced",
            Step::Ping => "ping",
        })
    }
}

/// What a probe found: the time of each step that completed, in order, the
/// server's broker link as it last said, and the failure, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeReport {
    /// Each completed step and how long it took.
    pub steps: Vec<(Step, Duration)>,
    /// The server's broker link (from its Hello and any `Broker` message);
    /// None before the Hello.
    pub broker_up: Option<bool>,
    /// The step that failed, and why.
    pub failure: Option<(Step, String)>,
}

impl ProbeReport {
    /// The time of every completed step together.
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|(_, d)| *d).sum()
    }
}

/// Runs the probe against `url` (a `ws://` or `wss://` URL, the token already
/// in it if needed), subscribing to `filter`, all within `timeout`. The
/// connection is closed with 1000 at the end.
pub async fn probe(url: &str, filter: &str, opts: &ConnectOptions, timeout: Duration) -> ProbeReport {
    let deadline = Instant::now() + timeout;
    let mut report = ProbeReport::default();
    let started = Instant::now();
    let client = within(deadline, Box::pin(Client::connect_with(url, opts))).await;
    let mut client = match client {
        Ok(c) => c,
        Err(why) => {
            report.failure = Some((Step::Connect, why));
            return report;
        }
    };
    report.steps.push((Step::Connect, started.elapsed()));
    report.broker_up = Some(client.hello().broker_up);

    let started = Instant::now();
    let synced = within(
        deadline,
        Box::pin(async {
            client.subscribe(1, &[filter], None).await?;
            loop {
                match client.next().await? {
                    ServerMsg::Synced { id: 1, .. } => return Ok(()),
                    ServerMsg::Error { code, req: 1, message } => {
                        return Err(ClientError::Protocol(format!("the Subscribe was refused: {code} {message}")))
                    }
                    _ => {}
                }
            }
        }),
    )
    .await;
    if let Err(why) = synced {
        report.broker_up = Some(client.hello().broker_up);
        report.failure = Some((Step::Synced, why));
        return report;
    }
    report.steps.push((Step::Synced, started.elapsed()));

    let started = Instant::now();
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let nonce = clock.subsec_nanos() ^ std::process::id();
    let pong = within(
        deadline,
        Box::pin(async {
            client.send(&ClientMsg::Ping { nonce }).await?;
            loop {
                if let ServerMsg::Pong { nonce: n } = client.next().await? {
                    if n == nonce {
                        return Ok(());
                    }
                }
            }
        }),
    )
    .await;
    report.broker_up = Some(client.hello().broker_up);
    match pong {
        Ok(()) => report.steps.push((Step::Ping, started.elapsed())),
        Err(why) => {
            report.failure = Some((Step::Ping, why));
            return report;
        }
    }
    // The close handshake is not a step: bounded, and its outcome ignored.
    let close = async {
        client.close().await;
        Some(())
    };
    let _ = close
        .or(async {
            smol::Timer::after(Duration::from_millis(500)).await;
            None
        })
        .await;
    report
}

/// A step's future, boxed: the client's futures are then polled through
/// their own code instead of being inlined here (11 KB of the aarch64 binary).
type StepFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ClientError>> + 'a>>;

/// `f` or "timed out" at `deadline`, its error as text.
async fn within<T>(deadline: Instant, f: StepFuture<'_, T>) -> Result<T, String> {
    async { f.await.map_err(|e| e.to_string()) }
        .or(async {
            smol::Timer::at(deadline).await;
            Err("timed out (the probe's time is up)".to_owned())
        })
        .await
}
