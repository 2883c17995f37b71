//! The broker hop: the bridge's own socket sends without Nagle's delay, so a
//! PUBACK (and the ACK it carries) never waits for the broker's delayed ACK of
//! the one before.

mod common;

use common::*;

/// The connected TCP sockets of this process whose peer is 127.0.0.1:`port`.
fn sockets_to(port: u16) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // SAFETY: getpeername writes at most `len` bytes into a buffer we own;
        // a descriptor that is not a socket makes it fail.
        let peer = unsafe {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let ok = libc::getpeername(fd, std::ptr::from_mut(&mut sa).cast(), &mut len) == 0;
            (ok && libc::c_int::from(sa.sin_family) == libc::AF_INET)
                .then(|| (u32::from_be(sa.sin_addr.s_addr), u16::from_be(sa.sin_port)))
        };
        if peer == Some((0x7f00_0001, port)) {
            found.push(fd);
        }
    }
    found
}

fn nodelay(fd: i32) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into `v`, which we own.
    let r = unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, std::ptr::from_mut(&mut v).cast(), &mut len)
    };
    assert_eq!(r, 0, "getsockopt TCP_NODELAY on fd {fd}");
    v != 0
}

#[test]
fn the_bridge_sends_to_the_broker_without_nagles_delay() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, ""));
    // The in-process server's only connection to the broker is the bridge's.
    let fds = sockets_to(broker.port);
    assert_eq!(fds.len(), 1, "one bridge socket to the broker: {fds:?}");
    assert!(nodelay(fds[0]), "TCP_NODELAY on the bridge's socket");
    // And events still flow over it.
    block_on_timeout(10_000, "an event", async {
        let (mut c, _) = subscribed(&server.url(), &["lat/#"]).await;
        let mut p = Publisher::connect(broker.port);
        p.publish("lat/t", "1");
        until(&mut c, 5000, |m| number(m) == Some(1.0)).await;
    });
}
