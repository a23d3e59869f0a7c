//! `veilctl policy status`: per node, the policies in force (from
//! `policy.list`) with the generation of the program they belong to, the
//! generation the node's dataplane holds ("in sync" or "applying"), the
//! policy errors (object, field, reason) and the dataplane error (from
//! `node.status`). Text table or `-o json`. It only reads; it changes nothing.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use veil_api::{call, method, Issue, NodeStatus, PolicyEntry, PolicyList};

use super::target::Target;

/// Arguments of `veilctl policy status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = super::common::Output::Text)]
    output: super::common::Output,
}

/// What one node reports of its policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePolicyStatus {
    /// Node name.
    pub node: String,
    /// Generation of the node's compiled program.
    pub generation: u64,
    /// Generation the node's dataplane holds.
    pub applied_generation: u64,
    /// Whether the dataplane holds the current program.
    pub in_sync: bool,
    /// The policies in force, in evaluation order.
    pub policies: Vec<PolicyEntry>,
    /// Why policies are not in force as written.
    pub policy_errors: Vec<Issue>,
    /// The last error applying the dataplane.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane_error: Option<String>,
}

impl NodePolicyStatus {
    /// Combines a node's `node.status` and `policy.list` answers. The
    /// generation is the newer of the two (they are read one after the other).
    pub fn new(status: NodeStatus, list: PolicyList) -> Self {
        let generation = status.policy_generation.max(list.generation);
        let applied = status.policy_applied_generation;
        NodePolicyStatus {
            node: status.node,
            generation,
            applied_generation: applied,
            in_sync: applied >= generation,
            policies: list.policies,
            policy_errors: status.policy_errors,
            dataplane_error: status.dataplane_error,
        }
    }
}

/// The text form of one node's policy status.
pub fn format_node(s: &NodePolicyStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}  generation {}  applied {}  {}",
        s.node,
        s.generation,
        s.applied_generation,
        if s.in_sync { "in sync" } else { "applying" }
    );
    if s.policies.is_empty() {
        let _ = writeln!(out, "  no policies in force");
    } else {
        let rows: Vec<[String; 7]> = s
            .policies
            .iter()
            .map(|p| {
                [
                    p.tier.clone(),
                    p.tier_order.to_string(),
                    p.kind.clone(),
                    p.full_name(),
                    p.ingress_rules.to_string(),
                    p.egress_rules.to_string(),
                    p.local_endpoints.to_string(),
                ]
            })
            .collect();
        let header = [
            "TIER",
            "ORDER",
            "KIND",
            "POLICY",
            "INGRESS",
            "EGRESS",
            "ENDPOINTS",
        ];
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| -> String {
            let mut l = String::from(" ");
            for (c, w) in cells.iter().zip(&widths) {
                let _ = write!(l, " {c:<w$}");
            }
            l.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(header.to_vec()));
        for r in &rows {
            let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
        }
    }
    for e in &s.policy_errors {
        let _ = writeln!(out, "  policy error: {e}");
    }
    if let Some(e) = &s.dataplane_error {
        let _ = writeln!(out, "  dataplane error: {e}");
    }
    out
}

/// Runs the command; returns the exit code (1 when a daemon did not answer).
pub fn run(args: StatusArgs) -> i32 {
    let sockets = match args.target.sockets() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("veilctl policy status: {e}");
            return 2;
        }
    };
    let mut all = Vec::new();
    let mut failed = false;
    for (name, socket) in sockets {
        let timeout = Duration::from_secs(5);
        let answer =
            call::<_, NodeStatus>(&socket, method::NODE_STATUS, &(), timeout).and_then(|status| {
                call::<_, PolicyList>(&socket, method::POLICY_LIST, &(), timeout)
                    .map(|list| NodePolicyStatus::new(status, list))
            });
        match answer {
            Ok(s) => all.push(s),
            Err(e) => {
                let who = if name.is_empty() {
                    socket.display().to_string()
                } else {
                    name
                };
                eprintln!("veilctl policy status: {who}: {e}");
                failed = true;
            }
        }
    }
    if args.output == super::common::Output::Json {
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else {
        for s in &all {
            print!("{}", format_node(s));
        }
    }
    i32::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(generation: u64, applied: u64) -> NodeStatus {
        NodeStatus {
            node: "node-a".into(),
            address: "198.18.0.10".into(),
            pod_cidr: "10.244.0.0/24".into(),
            mtu: 1420,
            ready: true,
            endpoints: vec![],
            datastore_errors: vec![],
            policy_generation: generation,
            policy_applied_generation: applied,
            policy_errors: vec![Issue {
                object: "policies/bad.yaml#0".into(),
                field: "spec.policyTypes[0]".into(),
                reason: "unknown policy type Sideways".into(),
            }],
            dataplane_error: Some("nft: transaction refused".into()),
        }
    }

    fn list(generation: u64) -> PolicyList {
        PolicyList {
            node: "node-a".into(),
            generation,
            tiers: vec![],
            policies: vec![PolicyEntry {
                tier: "default".into(),
                tier_order: 1000,
                position: 0,
                kind: "NetworkPolicy".into(),
                group: "networking.k8s.io".into(),
                namespace: Some("shop".into()),
                name: "allow-client".into(),
                ingress_rules: 2,
                egress_rules: 0,
                local_endpoints: 3,
            }],
        }
    }

    #[test]
    fn a_node_whose_dataplane_holds_the_generation_is_in_sync() {
        let s = NodePolicyStatus::new(status(4, 4), list(4));
        assert!(s.in_sync);
        let text = format_node(&s);
        assert!(
            text.starts_with("node node-a  generation 4  applied 4  in sync\n"),
            "{text}"
        );
    }

    #[test]
    fn a_node_behind_is_applying_and_the_newer_generation_wins() {
        let s = NodePolicyStatus::new(status(4, 3), list(5));
        assert_eq!((s.generation, s.applied_generation), (5, 3));
        assert!(!s.in_sync);
        assert!(format_node(&s).contains("generation 5  applied 3  applying"));
    }

    #[test]
    fn the_table_lists_each_policy_and_the_errors() {
        let text = format_node(&NodePolicyStatus::new(status(4, 4), list(4)));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "TIER",
                "ORDER",
                "KIND",
                "POLICY",
                "INGRESS",
                "EGRESS",
                "ENDPOINTS"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "default",
                "1000",
                "NetworkPolicy",
                "shop/allow-client",
                "2",
                "0",
                "3"
            ]
        );
        // Columns line up: POLICY starts where shop/allow-client starts.
        assert_eq!(lines[1].find("POLICY"), lines[2].find("shop/allow-client"));
        assert_eq!(
            lines[3],
            "  policy error: policies/bad.yaml#0: spec.policyTypes[0]: unknown policy type Sideways"
        );
        assert_eq!(lines[4], "  dataplane error: nft: transaction refused");
    }

    #[test]
    fn a_node_without_policies_says_so() {
        let mut l = list(1);
        l.policies.clear();
        let mut st = status(1, 1);
        st.policy_errors.clear();
        st.dataplane_error = None;
        let text = format_node(&NodePolicyStatus::new(st, l));
        assert_eq!(
            text,
            "node node-a  generation 1  applied 1  in sync\n  no policies in force\n"
        );
    }

    #[test]
    fn json_is_camel_case_with_the_policies() {
        let v = serde_json::to_value(NodePolicyStatus::new(status(4, 4), list(4))).unwrap();
        assert_eq!(v["appliedGeneration"], 4);
        assert_eq!(v["inSync"], true);
        assert_eq!(v["policies"][0]["name"], "allow-client");
        assert_eq!(v["policyErrors"][0]["field"], "spec.policyTypes[0]");
        assert_eq!(v["dataplaneError"], "nft: transaction refused");
    }
}
