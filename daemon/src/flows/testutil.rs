//! Test helpers shared by the flow collector's unit tests: a scripted
//! conntrack source, endpoints, entries and a node's flows.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use veil_graph::{Counters, FlowEvent, Protocol};

use super::conntrack::{self, ConntrackSource, CtEntry, Received, Tuple};
use super::resolve::Resolver;
use super::{FlowOptions, Flows};
use crate::datastore::Snapshot;
use crate::endpoints::{Endpoint, EndpointState};

pub(crate) struct Fake {
    pub(crate) script: VecDeque<Received>,
    pub(crate) table: Vec<CtEntry>,
    pub(crate) dumps: usize,
}

impl ConntrackSource for Fake {
    fn recv(&mut self, _t: Duration) -> Result<Received, conntrack::SourceError> {
        Ok(self.script.pop_front().unwrap_or(Received::Timeout))
    }
    fn dump(&mut self) -> Result<Vec<CtEntry>, conntrack::SourceError> {
        self.dumps += 1;
        Ok(self.table.clone())
    }
}

pub(crate) fn ep(ns: &str, name: &str, ip: &str) -> Endpoint {
    Endpoint {
        container_id: name.into(),
        ifname: "eth0".into(),
        netns: String::new(),
        host_ifname: String::new(),
        ips: vec![format!("{ip}/32").parse().unwrap()],
        daemon_ipam: true,
        pod_namespace: Some(ns.into()),
        pod_name: Some(name.into()),
        network: String::new(),
        labels: Default::default(),
        state: EndpointState::Ready,
    }
}

pub(crate) fn entry(
    event: FlowEvent,
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    id: u32,
    bytes: u64,
) -> CtEntry {
    let t = Tuple {
        protocol: Protocol::Tcp,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        src_port: sport,
        dst_port: dport,
    };
    CtEntry {
        event,
        orig: t,
        reply: Tuple {
            protocol: Protocol::Tcp,
            src: t.dst,
            dst: t.src,
            src_port: dport,
            dst_port: sport,
        },
        counters: Counters {
            bytes_sent: bytes,
            packets_sent: 1,
            bytes_received: bytes,
            packets_received: 1,
        },
        id,
        mark: 0,
    }
}

pub(crate) fn flows() -> Arc<Flows> {
    let local = vec![
        ep("shop", "frontend-7d4b9c8f6d-x2x9z", "10.244.1.2"),
        ep("shop", "backend-a-0", "10.244.1.3"),
    ];
    let r = Resolver::new(
        "n1",
        "198.18.0.1".parse().unwrap(),
        &Snapshot::default(),
        &local,
        &["api=203.0.113.0/24".parse().unwrap()],
    );
    Arc::new(Flows::new("n1", 51820, 9590, r, &FlowOptions::default()))
}
