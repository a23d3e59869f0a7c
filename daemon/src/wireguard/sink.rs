//! Where the datapath's outgoing datagrams go ([`Sink`]): `Tunn` writes each
//! one straight into the sink's buffer. The datapath core only ever talks to
//! a sink, never to a socket, so it runs in unit tests with [`VecSink`]; the
//! threads use `io::BatchSink` (one `sendmmsg` batch per lane socket).

use std::net::SocketAddr;

/// Where outgoing datagrams go: appended to a buffer by `Tunn` directly.
pub trait Sink {
    /// A buffer with at least `room` free bytes, for a datagram leaving from
    /// `lane`'s socket; the caller writes there and then calls [`Sink::commit`].
    fn reserve(&mut self, lane: usize, room: usize) -> &mut [u8];
    /// The first `len` reserved bytes are one datagram to `to`.
    fn commit(&mut self, len: usize, to: SocketAddr);
}

/// A [`Sink`] collecting datagrams in memory (tests, control paths). The
/// lane of a datagram is the one its destination port names.
#[derive(Debug, Default)]
pub struct VecSink {
    /// Datagrams and their destinations.
    pub out: Vec<(Vec<u8>, SocketAddr)>,
    buf: Vec<u8>,
}

impl Sink for VecSink {
    fn reserve(&mut self, _lane: usize, room: usize) -> &mut [u8] {
        self.buf.resize(room, 0);
        &mut self.buf
    }
    fn commit(&mut self, len: usize, to: SocketAddr) {
        self.out.push((self.buf[..len].to_vec(), to));
    }
}
