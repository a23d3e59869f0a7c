//! The desired state of the `inet veil` table, as plain data: the fail-closed
//! base, the flow-logging rules and the policy objects (named sets, verdict
//! maps, regular chains, jumps from the hook chains).
//!
//! It renders nothing to the kernel: [`super::plan`] turns it into an `nft -j`
//! batch. Every rule carries a comment ending in `[veil:<hash>]` (a stable hash
//! of the rule's statements), so that reading the table back tells which rules
//! are in place without parsing nft's normalised expressions.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{SetFlag, SetTypeValue};
use nftables::stmt::{Counter, JumpTarget, Log, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};

/// Name of Veil's nftables table (family `inet`).
pub const TABLE: &str = "veil";

/// Name of the counter of pod packets refused on the underlay.
pub const FAIL_CLOSED_COUNTER: &str = "fail_closed";

/// Name of the counter of policy log entries the per-rule rate limit
/// suppressed (every log chain's second rule counts into it).
pub const LOG_SUPPRESSED_COUNTER: &str = "log_suppressed";

/// The named counters of the table.
pub const COUNTERS: [&str; 2] = [FAIL_CLOSED_COUNTER, LOG_SUPPRESSED_COUNTER];

/// Inputs of the fail-closed base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseFilter {
    /// The underlay interface.
    pub underlay_interface: String,
    /// The cluster pod CIDR.
    pub cluster_cidr: IpNetwork,
    /// This node's pod CIDR.
    pub pod_cidr: IpNetwork,
}

/// The flow collector's rules: `ct state new counter` in prerouting and output
/// (conntrack is off in a namespace nobody asks it of) and DNS answers
/// (UDP source port 53) copied to an NFLOG group, except those to the DNS
/// proxy's own sockets (the proxy names their addresses itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLogging {
    /// NFLOG group of DNS answers.
    pub dns_nflog_group: u16,
}

/// A hook chain of the base table that policy rules are appended to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyHook {
    /// Forwarded packets (pod to pod, pod to outside, from WireGuard).
    Forward,
    /// Packets to the node itself.
    Input,
    /// Packets from the node itself.
    Output,
    /// Packets arriving, before routing (filter, priority mangle; no
    /// `ct state established` shortcut in front of its rules): the DNS
    /// proxy's and the L7 proxy's steering.
    Prerouting,
}

impl PolicyHook {
    /// The base chain's name.
    pub fn chain(self) -> &'static str {
        match self {
            PolicyHook::Forward => "forward",
            PolicyHook::Input => "input",
            PolicyHook::Output => "output",
            PolicyHook::Prerouting => "prerouting",
        }
    }
}

/// One rule: statements in order and an optional human comment (the manager
/// appends the rule's hash to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// The statements (matches, counters, log, verdict).
    pub statements: Vec<Statement<'static>>,
    /// What the rule is for (at most ~100 characters are kept).
    pub comment: Option<String>,
}

/// A named set of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedSet {
    /// Element type (e.g. `ipv4_addr`, or a concatenation).
    pub set_type: SetTypeValue<'static>,
    /// Flags (`interval`, `timeout`, ...).
    pub flags: Vec<SetFlag>,
    /// Default element timeout in seconds (sets with the `timeout` flag).
    pub timeout: Option<u32>,
    /// The elements: addresses, prefixes (`Prefix`), ranges, ports, names.
    pub elements: Vec<Expression<'static>>,
}

/// A named verdict map of the table (e.g. `iifname` → `jump <endpoint chain>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedVerdictMap {
    /// Key type (e.g. `ifname`).
    pub key_type: SetTypeValue<'static>,
    /// Flags (`interval` for prefix keys).
    pub flags: Vec<SetFlag>,
    /// Key → verdict (`Expression::Verdict`, usually a jump to a chain of
    /// [`PolicyObjects::chains`]).
    pub elements: Vec<(Expression<'static>, Expression<'static>)>,
}

/// Everything policy adds to the `inet veil` table. Empty by default; the
/// policy renderer fills it, the manager applies it:
/// - an element change of a set or map is an element add or delete;
/// - a chain whose rules changed is flushed and refilled in the same
///   transaction (a packet never sees it empty);
/// - a chain, set or map no longer desired is deleted in the same transaction,
///   after the rules and elements that refer to it;
/// - a set or map whose declaration (type, flags, timeout) changed makes the
///   manager replace the whole table in one transaction.
///
/// Names must not collide with the base chains (`forward`, `input`, `output`,
/// `postrouting`, `flows-prerouting`, `flows-output`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyObjects {
    /// Named sets by name.
    pub sets: BTreeMap<String, NamedSet>,
    /// Verdict maps by name.
    pub maps: BTreeMap<String, NamedVerdictMap>,
    /// Regular chains by name, each with its rules in order (shared: an
    /// unchanged chain is the same allocation from one render to the next).
    pub chains: BTreeMap<String, PolicyChain>,
    /// Rules appended to a hook chain, after the base rules and after
    /// `ct state established,related accept` (which is added when a hook has
    /// policy rules).
    pub hooks: BTreeMap<PolicyHook, Vec<PolicyRule>>,
}

/// The whole desired `inet veil` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTable {
    /// The fail-closed base.
    pub base: BaseFilter,
    /// The flow collector's rules, if the collector runs here.
    pub flow_logging: Option<FlowLogging>,
    /// Policy.
    pub policy: PolicyObjects,
    /// Host endpoint protection (see [`super::host`]), when veild asks for it.
    pub host: Option<super::host::HostProtection>,
}

impl DesiredTable {
    /// The base alone.
    pub fn new(base: BaseFilter) -> Self {
        DesiredTable {
            base,
            flow_logging: None,
            policy: PolicyObjects::default(),
            host: None,
        }
    }
}

/// A regular chain's rules with their final comments, computed once when
/// the chain is built and shared afterwards (cloning is a reference count).
/// Two chains are equal when their comments are: each ends in the hash of
/// its rule's statements, which is also how the kernel's copy is compared.
#[derive(Debug, Clone, Default)]
pub struct PolicyChain(Arc<Vec<RenderedRule>>);

impl PolicyChain {
    /// The chain of `rules`, hashing each rule once.
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        PolicyChain(Arc::new(rules.iter().map(render_rule).collect()))
    }

    /// A chain of rules whose comments are already final.
    pub fn from_rendered(rules: Vec<RenderedRule>) -> Self {
        PolicyChain(Arc::new(rules))
    }

    /// The rules in order.
    pub fn rules(&self) -> &[RenderedRule] {
        &self.0
    }

    /// Whether both are the same allocation (then certainly equal).
    pub fn same(&self, other: &PolicyChain) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the chain has no rules.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the kernel's rule comments `have` are this chain's.
    pub fn matches(&self, have: &[Option<String>]) -> bool {
        have.len() == self.0.len()
            && self
                .0
                .iter()
                .zip(have)
                .all(|(r, h)| h.as_deref() == Some(r.comment.as_str()))
    }
}

impl PartialEq for PolicyChain {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
            || (self.0.len() == other.0.len()
                && self
                    .0
                    .iter()
                    .zip(other.0.iter())
                    .all(|(a, b)| a.comment == b.comment))
    }
}

impl Eq for PolicyChain {}

/// As the list of its rules' statements.
impl serde::Serialize for PolicyChain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| &r.statements))
    }
}

impl From<Vec<PolicyRule>> for PolicyChain {
    fn from(rules: Vec<PolicyRule>) -> Self {
        PolicyChain::new(rules)
    }
}

/// A chain as the kernel will hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// Hook, type and priority for base chains; `None` for regular chains.
    pub hook: Option<(NfChainType, NfHook, i32)>,
    /// The rules, in order.
    pub rules: PolicyChain,
}

/// A rule with its final comment (human text and hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedRule {
    /// Statements.
    pub statements: Vec<Statement<'static>>,
    /// Final comment, `<text> [veil:<hash>]`.
    pub comment: String,
}

/// The chains of `desired` (base, flow logging, policy) by name.
pub fn chains(desired: &DesiredTable) -> BTreeMap<String, ChainSpec> {
    let mut out = base_chains(desired);
    for (name, rules) in &desired.policy.chains {
        out.insert(
            name.clone(),
            ChainSpec {
                hook: None,
                rules: rules.clone(),
            },
        );
    }
    out
}

/// The base chains of `desired` (fail-closed base, flow logging, the hook
/// chains with their policy rules) by name: a handful, cheap to build.
pub fn base_chains(desired: &DesiredTable) -> BTreeMap<String, ChainSpec> {
    let mut out = BTreeMap::new();
    let b = &desired.base;
    let filter = |hook, prio| Some((NfChainType::Filter, hook, prio));
    let base_rules = base_rules(b);
    for (name, hook, prio) in [
        ("forward", NfHook::Forward, 0),
        ("output", NfHook::Output, 0),
        ("input", NfHook::Input, 0),
    ] {
        let mut rules = base_rules.get(name).cloned().unwrap_or_default();
        if let (Some(h), "input") = (&desired.host, name) {
            // Host endpoint protection: a small hook, rules in super::host.
            let host: Vec<RenderedRule> = super::host::input_rules(h)
                .iter()
                .map(render_rule)
                .collect();
            rules.splice(0..0, host);
        }
        let hook_kind = match name {
            "forward" => PolicyHook::Forward,
            "input" => PolicyHook::Input,
            _ => PolicyHook::Output,
        };
        if let Some(extra) = desired
            .policy
            .hooks
            .get(&hook_kind)
            .filter(|r| !r.is_empty())
        {
            rules.push(rule(
                vec![
                    match_(
                        ct("state"),
                        Expression::List(vec![str_("established"), str_("related")]),
                        Operator::IN,
                    ),
                    Statement::Accept(None),
                ],
                "established and related connections before policy",
            ));
            rules.extend(extra.iter().map(render_rule));
        }
        out.insert(
            name.to_string(),
            ChainSpec {
                hook: filter(hook, prio),
                rules: PolicyChain::from_rendered(rules),
            },
        );
    }
    if let Some(pre) = desired
        .policy
        .hooks
        .get(&PolicyHook::Prerouting)
        .filter(|r| !r.is_empty())
    {
        out.insert(
            "prerouting".to_string(),
            ChainSpec {
                hook: filter(NfHook::Prerouting, -150),
                rules: PolicyChain::from_rendered(pre.iter().map(render_rule).collect()),
            },
        );
    }
    out.insert(
        "postrouting".to_string(),
        ChainSpec {
            hook: Some((NfChainType::NAT, NfHook::Postrouting, 100)),
            rules: PolicyChain::from_rendered(
                base_rules.get("postrouting").cloned().unwrap_or_default(),
            ),
        },
    );
    if let Some(f) = &desired.flow_logging {
        let new_counter = || {
            vec![
                match_(ct("state"), str_("new"), Operator::IN),
                Statement::Counter(Counter::Anonymous(None)),
            ]
        };
        let mut pre = vec![rule(new_counter(), "make the kernel track new connections")];
        // Answers to the DNS proxy's own (transparent) upstream sockets are
        // not copied: the proxy parses them and names their addresses itself.
        pre.push(rule(
            vec![
                match_(
                    payload("udp", "sport"),
                    Expression::Number(53),
                    Operator::EQ,
                ),
                match_(
                    Expression::Named(NamedExpression::Socket(nftables::expr::Socket {
                        key: std::borrow::Cow::Owned(nftables::expr::SocketAttr::Transparent),
                    })),
                    Expression::Number(1),
                    Operator::EQ,
                ),
                Statement::Accept(None),
            ],
            "DNS answers the DNS proxy sees: it names them",
        ));
        pre.push(rule(
            vec![
                match_(
                    payload("udp", "sport"),
                    Expression::Number(53),
                    Operator::EQ,
                ),
                Statement::Log(Some(Log::new(Some(u32::from(f.dns_nflog_group))))),
            ],
            "DNS answers to the flow collector",
        ));
        out.insert(
            "flows-prerouting".to_string(),
            ChainSpec {
                hook: filter(NfHook::Prerouting, -150),
                rules: PolicyChain::from_rendered(pre),
            },
        );
        out.insert(
            "flows-output".to_string(),
            ChainSpec {
                hook: filter(NfHook::Output, -150),
                rules: PolicyChain::from_rendered(vec![rule(
                    new_counter(),
                    "make the kernel track new connections",
                )]),
            },
        );
    }
    if desired.host.is_some() {
        out.insert(
            super::host::HOST_CHAIN.to_string(),
            ChainSpec {
                hook: None,
                rules: PolicyChain::from_rendered(
                    super::host::chain_rules(&desired.policy)
                        .iter()
                        .map(render_rule)
                        .collect(),
                ),
            },
        );
    }
    out
}

/// The names the base and flow logging use (policy must not reuse them).
pub const RESERVED_CHAINS: [&str; 8] = [
    super::host::HOST_CHAIN,
    "forward",
    "prerouting",
    "input",
    "output",
    "postrouting",
    "flows-prerouting",
    "flows-output",
];

fn base_rules(b: &BaseFilter) -> BTreeMap<&'static str, Vec<RenderedRule>> {
    let ip = if b.cluster_cidr.is_ipv4() {
        "ip"
    } else {
        "ip6"
    };
    let under = || {
        match_(
            meta(MetaKey::Oifname),
            str_(&b.underlay_interface),
            Operator::EQ,
        )
    };
    let from_under = || {
        match_(
            meta(MetaKey::Iifname),
            str_(&b.underlay_interface),
            Operator::EQ,
        )
    };
    let addr = |field: &str, net: IpNetwork, op| match_(payload(ip, field), prefix(net), op);
    let fail_closed = || Statement::Counter(Counter::Named(FAIL_CLOSED_COUNTER.into()));
    let drop = || Statement::Drop(None);
    BTreeMap::from([
        (
            "forward",
            vec![
                rule(
                    vec![
                        under(),
                        addr("daddr", b.cluster_cidr, Operator::EQ),
                        fail_closed(),
                        drop(),
                    ],
                    "pod traffic between nodes only through veil-wg",
                ),
                rule(
                    vec![
                        from_under(),
                        match_(ct("direction"), str_("reply"), Operator::EQ),
                        match_(ct("status"), str_("snat"), Operator::IN),
                        Statement::Accept(None),
                    ],
                    "replies to pods' masqueraded connections",
                ),
                rule(
                    vec![
                        from_under(),
                        addr("daddr", b.cluster_cidr, Operator::EQ),
                        fail_closed(),
                        drop(),
                    ],
                    "no clear pod traffic from the underlay",
                ),
            ],
        ),
        (
            "output",
            vec![rule(
                vec![
                    under(),
                    addr("daddr", b.cluster_cidr, Operator::EQ),
                    fail_closed(),
                    drop(),
                ],
                "node to remote pods only through veil-wg",
            )],
        ),
        (
            "input",
            vec![rule(
                vec![
                    from_under(),
                    addr("saddr", b.cluster_cidr, Operator::EQ),
                    fail_closed(),
                    drop(),
                ],
                "no clear pod traffic from the underlay",
            )],
        ),
        (
            "postrouting",
            vec![rule(
                vec![
                    under(),
                    addr("saddr", b.pod_cidr, Operator::EQ),
                    addr("daddr", b.cluster_cidr, Operator::NEQ),
                    Statement::Masquerade(None),
                ],
                "pods to the outside",
            )],
        ),
    ])
}

fn render_rule(r: &PolicyRule) -> RenderedRule {
    let mut out = rule(r.statements.clone(), r.comment.as_deref().unwrap_or(""));
    if r.comment.is_none() {
        out.comment = out.comment.trim_start().to_string();
    }
    out
}

/// A rule whose comment is `text` followed by the hash of its statements.
fn rule(statements: Vec<Statement<'static>>, text: &str) -> RenderedRule {
    let json = serde_json::to_string(&statements).unwrap_or_default();
    let text: String = text.chars().take(100).collect();
    let comment = format!("{text} [veil:{:016x}]", fnv1a(json.as_bytes()));
    RenderedRule {
        statements,
        comment,
    }
}

/// FNV-1a, 64 bits: stable across Rust releases (unlike `DefaultHasher`), so
/// golden files and tables written by an older veild stay comparable.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The set flags as the crate wants them.
pub fn flag_set(flags: &[SetFlag]) -> Option<HashSet<SetFlag>> {
    (!flags.is_empty()).then(|| flags.iter().copied().collect())
}

fn match_(
    left: Expression<'static>,
    right: Expression<'static>,
    op: Operator,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn str_(s: &str) -> Expression<'static> {
    Expression::String(s.to_string().into())
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.to_string().into(),
            field: field.to_string().into(),
        },
    )))
}

fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.to_string().into(),
        family: None,
        dir: None,
    }))
}

/// A prefix expression for `net` (its network address).
pub fn prefix(net: IpNetwork) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(str_(&net.network().to_string())),
        len: u32::from(net.prefix()),
    }))
}

/// A jump statement to `chain`.
pub fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: chain.to_string().into(),
    })
}

/// The chain policy of every base chain.
pub const BASE_POLICY: NfChainPolicy = NfChainPolicy::Accept;
