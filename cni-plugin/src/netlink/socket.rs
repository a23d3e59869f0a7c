//! The request plumbing of [`Nl`]: opening a socket (in this or another
//! namespace), sending a message and collecting its acknowledgement or dump.
//! It knows nothing of links, addresses or routes.

use super::*;

impl Nl {
    /// Opens a socket in the calling thread's namespace.
    pub(super) fn open() -> io::Result<Nl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Nl { sock, seq: 0 })
    }

    /// Opens a socket in the namespace at `path`, from a short-lived thread.
    /// The plugin's own namespace is refused: a container end created there
    /// would land in the node's namespace.
    pub(super) fn open_in(path: &str) -> Result<Nl, LinkError> {
        let ns = File::open(path).map_err(|source| LinkError::NetnsOpen {
            path: path.to_string(),
            source,
        })?;
        if is_own_netns(&ns) {
            return Err(LinkError::NetnsOpen {
                path: path.to_string(),
                source: io::Error::other(
                    "it is the plugin's own network namespace, not a container's",
                ),
            });
        }
        let joined = std::thread::scope(|s| {
            s.spawn(|| -> io::Result<Nl> {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Nl::open()
            })
            .join()
        });
        match joined {
            Ok(Ok(nl)) => Ok(nl),
            Ok(Err(source)) => Err(LinkError::NetnsOpen {
                path: path.to_string(),
                source,
            }),
            Err(_) => Err(LinkError::NetnsOpen {
                path: path.to_string(),
                source: io::Error::other("the namespace thread panicked"),
            }),
        }
    }

    /// Sends `msg` and collects the answers: for dumps every message up to
    /// NLMSG_DONE (retried when the kernel flags the dump as interrupted), for
    /// other requests the answer (if any) and the acknowledgement.
    pub(super) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
            let seq = self.send(msg.clone(), flags)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            self.receive(seq, |m| {
                if m.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => acknowledged(e.code),
                    NetlinkPayload::Done(_) => Ok(ControlFlow::Break(())),
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        Ok(ControlFlow::Continue(()))
                    }
                    _ => Ok(ControlFlow::Continue(())),
                }
            })?;
            if interrupted && attempt < DUMP_RETRIES {
                continue;
            }
            return Ok(out);
        }
    }

    /// Sends a modifying request (REQUEST|ACK plus `extra_flags`, e.g.
    /// CREATE|EXCL) and waits for the kernel's acknowledgement.
    pub(super) fn change(&mut self, msg: RouteNetlinkMessage, extra_flags: u16) -> io::Result<()> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags)?;
        self.receive(seq, |m| match m.payload {
            NetlinkPayload::Error(e) => acknowledged(e.code),
            _ => Ok(ControlFlow::Continue(())),
        })
    }

    /// Sends `msg` with header `flags` under a fresh sequence number, which
    /// it returns.
    pub(super) fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Reads the kernel's messages, skipping those of other sequence numbers,
    /// and hands each answer to request `seq` to `f` until it breaks (or
    /// fails).
    pub(super) fn receive(
        &mut self,
        seq: u32,
        mut f: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> io::Result<ControlFlow<()>>,
    ) -> io::Result<()> {
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                if f(m)?.is_break() {
                    return Ok(());
                }
            }
        }
    }
}
