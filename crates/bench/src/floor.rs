//! `edgepush-bench floor`: the kernel's floor for a fan-out. One thread writes
//! the WebSocket frame edgepush sends for one event (a binary frame holding a
//! postcard `Event` with a number) to each of N loopback sockets, one
//! `send(2)` per message and nothing else: no hub, no queue, no protocol.
//! Readers on other threads drain the far ends, as the load tool's clients do.
//! Its CPU per 100,000 deliveries is what the servers' figures are measured
//! against: on loopback the sender's CPU also runs the receiving socket's TCP
//! input, as it does for a server under the load tool.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgepush_protocol::{ServerMsg, Value};

/// What one floor run measured.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub deliveries: u64,
    /// The sender thread's CPU-seconds (user + kernel) per 100,000 deliveries.
    pub cpu_s_per_100k: f64,
    /// Its kernel share.
    pub kernel_share: f64,
}

/// The frame a server sends for one event: FIN + binary, a short length, the message.
pub fn event_frame(seq: u64) -> Vec<u8> {
    let mut msg = Vec::new();
    let stamp = 1_700_000_000_000_000.0 + seq as f64;
    ServerMsg::Event { topic: 0, seq, ts_ms: 1_700_000_000_000, value: Value::Number(stamp) }.encode_into(&mut msg);
    let mut frame = vec![0x82, msg.len() as u8];
    assert!(msg.len() < 126, "one small event");
    frame.extend_from_slice(&msg);
    frame
}

/// This thread's CPU-seconds: (user, kernel).
fn thread_cpu() -> (f64, f64) {
    // SAFETY: getrusage writes into a struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(u.ru_utime), s(u.ru_stime))
}

/// Sends `rate` events per second for `secs` to `clients` sockets.
///
/// # Errors
/// The sockets could not be made or written.
pub fn run(clients: usize, rate: f64, secs: f64) -> Result<Floor, String> {
    let err = |e: std::io::Error| e.to_string();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let mut far = Vec::with_capacity(clients);
    let mut near = Vec::with_capacity(clients);
    for _ in 0..clients {
        let c = TcpStream::connect(addr).map_err(err)?;
        let (s, _) = listener.accept().map_err(err)?;
        s.set_nodelay(true).map_err(err)?;
        far.push(c);
        near.push(s);
    }
    // Two readers, each draining half of the far ends with poll(2).
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    let half = far.len().div_ceil(2).max(1);
    while !far.is_empty() {
        let mine: Vec<TcpStream> = far.drain(..half.min(far.len())).collect();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || drain(mine, &stop)));
    }
    let total = (rate * secs).round().max(1.0) as u64;
    let start = Instant::now();
    let (u0, k0) = thread_cpu();
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(seq as f64 / rate);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let frame = event_frame(seq);
        for s in &mut near {
            s.write_all(&frame).map_err(err)?;
        }
    }
    let (u1, k1) = thread_cpu();
    stop.store(true, Ordering::Relaxed);
    drop(near);
    for r in readers {
        let _ = r.join();
    }
    let deliveries = total * clients as u64;
    let cpu = (u1 - u0) + (k1 - k0);
    Ok(Floor {
        deliveries,
        cpu_s_per_100k: cpu / deliveries as f64 * 1e5,
        kernel_share: if cpu > 0.0 { (k1 - k0) / cpu } else { f64::NAN },
    })
}

fn drain(mut socks: Vec<TcpStream>, stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> =
        socks.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let mut buf = [0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: poll on descriptors of sockets this thread owns, with their count.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        for (pfd, s) in fds.iter_mut().zip(socks.iter_mut()) {
            if pfd.revents != 0 {
                if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
                    pfd.fd = -1;
                }
                pfd.revents = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_one_binary_websocket_frame_holding_one_event() {
        let f = event_frame(7);
        assert_eq!(f[0], 0x82);
        assert_eq!(usize::from(f[1]), f.len() - 2);
        let msgs = ServerMsg::decode_all(&f[2..]).unwrap();
        assert!(matches!(msgs[..], [ServerMsg::Event { seq: 7, .. }]), "{msgs:?}");
    }

    #[test]
    fn a_small_floor_run_counts_every_delivery() {
        let f = run(4, 200.0, 0.1).unwrap();
        assert_eq!(f.deliveries, 80);
        assert!(f.cpu_s_per_100k.is_finite() && f.cpu_s_per_100k >= 0.0, "{f:?}");
    }
}
