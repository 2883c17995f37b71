//! Just enough MQTT 3.1.1 for the load tool: CONNECT, SUBSCRIBE and QoS 0
//! PUBLISH out, CONNACK, SUBACK and PUBLISH in. The tool's clients speak it
//! over WebSocket to mosquitto's `protocol websockets` listener, and its
//! publisher over TCP to any broker.

use std::io::{self, Read, Write};
use std::net::TcpStream;

fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_remaining_length(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// CONNECT with a clean session and no keepalive (the broker never drops an idle client).
pub fn connect(client_id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + client_id.len());
    put_str(&mut body, "MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 0]);
    put_str(&mut body, client_id);
    packet(0x10, &body)
}

/// SUBSCRIBE to one filter at QoS 0.
pub fn subscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + filter.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    put_str(&mut body, filter);
    body.push(0);
    packet(0x82, &body)
}

/// Appends a QoS 0 PUBLISH.
pub fn publish_into(out: &mut Vec<u8>, topic: &str, payload: &[u8]) {
    out.push(0x30);
    put_remaining_length(out, 2 + topic.len() + payload.len());
    put_str(out, topic);
    out.extend_from_slice(payload);
}

/// One packet from the broker.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck { code: u8 },
    SubAck,
    Publish { topic: &'a [u8], payload: &'a [u8] },
    Other(u8),
}

/// Splits the first whole packet off `buf`: the packet and its length, or
/// `Ok(None)` when more bytes are needed.
///
/// # Errors
/// A malformed remaining length or PUBLISH.
pub fn parse(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, String> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err("remaining length longer than 4 bytes".into());
        }
    }
    let Some(body) = buf.get(i..i + len) else { return Ok(None) };
    let p = match first >> 4 {
        2 => Packet::ConnAck { code: body.get(1).copied().unwrap_or(0xff) },
        9 => Packet::SubAck,
        3 => {
            let qos = (first >> 1) & 3;
            let tlen = body.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))).ok_or("short PUBLISH")?;
            let topic = body.get(2..2 + tlen).ok_or("PUBLISH topic past its end")?;
            let start = 2 + tlen + if qos > 0 { 2 } else { 0 };
            Packet::Publish { topic, payload: body.get(start..).ok_or("PUBLISH payload past its end")? }
        }
        t => Packet::Other(t),
    };
    Ok(Some((p, i + len)))
}

/// A blocking MQTT publisher over TCP (QoS 0), for the load tool's own thread.
pub struct Publisher {
    stream: TcpStream,
}

impl Publisher {
    /// Connects and waits for CONNACK.
    ///
    /// # Errors
    /// The broker cannot be reached or refuses the connection.
    pub fn connect(broker: &str, client_id: &str) -> io::Result<Publisher> {
        let mut stream = TcpStream::connect(broker)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        stream.write_all(&connect(client_id))?;
        let mut ack = [0u8; 4];
        stream.read_exact(&mut ack)?;
        match parse(&ack) {
            Ok(Some((Packet::ConnAck { code: 0 }, _))) => Ok(Publisher { stream }),
            other => Err(io::Error::other(format!("broker {broker} refused the publisher: {other:?}"))),
        }
    }

    /// Writes already encoded packets.
    ///
    /// # Errors
    /// The connection failed.
    pub fn write(&mut self, packets: &[u8]) -> io::Result<()> {
        self.stream.write_all(packets)
    }

    /// Sends DISCONNECT.
    pub fn disconnect(mut self) {
        let _ = self.stream.write_all(&[0xe0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_and_partial_packets_wait_for_more() {
        let mut buf = Vec::new();
        publish_into(&mut buf, "bench/3", &[b'7'; 200]);
        publish_into(&mut buf, "a", b"1");
        let (p, n) = parse(&buf).unwrap().unwrap();
        assert_eq!(p, Packet::Publish { topic: b"bench/3", payload: &[b'7'; 200] });
        assert_eq!(buf[1..3], [0x80 | (209 % 128) as u8, 1], "two-byte remaining length");
        let (p, m) = parse(&buf[n..]).unwrap().unwrap();
        assert_eq!(p, Packet::Publish { topic: b"a", payload: b"1" });
        assert_eq!(n + m, buf.len());
        for cut in 0..n {
            assert_eq!(parse(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn qos1_publish_skips_the_packet_id_and_acks_parse() {
        let buf = [0x32, 7, 0, 1, b't', 0, 9, b'4', b'2'];
        assert_eq!(parse(&buf).unwrap().unwrap().0, Packet::Publish { topic: b"t", payload: b"42" });
        assert_eq!(parse(&[0x20, 2, 0, 5]).unwrap().unwrap().0, Packet::ConnAck { code: 5 });
        assert_eq!(parse(&[0x90, 3, 0, 1, 0]).unwrap().unwrap().0, Packet::SubAck);
        assert!(parse(&[0x30, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
        assert!(parse(&[0x30, 1, 0]).is_err(), "topic length past the end");
        let c = connect("x");
        assert_eq!(c, [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0, 0, 1, b'x']);
        assert_eq!(subscribe(1, "b/#"), [0x82, 8, 0, 1, 0, 3, b'b', b'/', b'#', 0]);
    }
}
