//! Which rule allowed a connection, written into its conntrack mark.
//!
//! Policy is evaluated on a connection's first packet only (later packets
//! are `ct state established`), so the accept sites stamp the connection
//! once, in two 12-bit fields of `ct mark`: the egress rule's id (bits
//! 0–11) and the ingress rule's id (bits 12–23). Conntrack events and dumps
//! carry the mark to the flow collector, which names the rule through the
//! [`RuleIdTable`] published with the log prefixes.
//!
//! Ids are allocated per (direction, policy, rule index) by [`RuleIds`],
//! kept in the render cache: a rule keeps its id while its policy is
//! rendered, so a cached chain's stamp stays right, and the id of a policy
//! that went away is reused only when no fresh id is left (oldest first), so
//! connections stamped under an earlier policy generation keep their name.
//! The allocation order follows the render order, so a restarted veild with
//! the same policies gives the same ids.
//!
//! Special values: [`ID_END_OF_TIERS`] (every tier passed the packet and
//! nothing denied it: the default allow, Kubernetes' "no policy denies"),
//! [`ID_OVERFLOW`] (more allow rules than ids), and the [`CT_OPEN`] bit (a
//! pod that no policy selects in some direction: Kubernetes' "no policy"
//! allow; the open chain is shared by both directions, the collector tells
//! which from the fields that stayed empty).
//!
//! Bits in use elsewhere: `ct mark` 0x0100_0000 (`tproxy::CT_STEERED`);
//! packet marks (not conntrack marks) 0x0001_0000, 0x0002_0000 (policy
//! ALLOW/PASS), 0x0040_0000, 0x0080_0000 (DNS), 0x0100_0000–0x0800_0000
//! (L7). Nothing copies a packet mark to the conntrack mark.
//!
//! What it does not do: denies (the NFLOG prefixes name them) or anything
//! on the reply direction.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};

use nftables::expr::{BinaryOperation, Expression, NamedExpression, CT};
use nftables::stmt::{Mangle, Statement};
use veil_policy::model::{Direction, ObjectKey};

/// Conntrack mark bits of the egress rule's id.
pub const CT_EGRESS_MASK: u32 = 0x0000_0fff;
/// Conntrack mark bits of the ingress rule's id.
pub const CT_INGRESS_MASK: u32 = 0x00ff_f000;
/// Shift of the ingress field.
pub const CT_INGRESS_SHIFT: u32 = 12;
/// Conntrack mark bit: an endpoint of the connection has no policy in the
/// evaluated direction (the open chain).
pub const CT_OPEN: u32 = 0x0200_0000;
/// Id: no rule decided, every tier passed (allowed by default).
pub const ID_END_OF_TIERS: u16 = 1;
/// Id: an allow rule beyond the table's capacity (not nameable).
pub const ID_OVERFLOW: u16 = 0xfff;
const FIRST_ID: u16 = 2;
const LAST_ID: u16 = 0xffe;

/// An allow rule named by an id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowRule {
    /// Tier name.
    pub tier: String,
    /// The policy.
    pub policy: ObjectKey,
    /// Rule index in the policy's rules of the direction.
    pub rule: usize,
}

/// What allowed one direction of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// An allow rule.
    Rule(AllowRule),
    /// Every tier passed; nothing denied.
    EndOfTiers,
    /// No policy selects the pod in this direction.
    NoPolicy,
    /// A stamped id the table does not name (overflow, or a mark written by
    /// something else).
    Unknown(u16),
}

/// Id → rule, per direction: what the collector reads marks with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleIdTable {
    egress: BTreeMap<u16, AllowRule>,
    ingress: BTreeMap<u16, AllowRule>,
}

impl RuleIdTable {
    /// Names the id of one direction's field.
    pub fn name(&self, dir: Direction, id: u16) -> Option<Allowed> {
        let t = match dir {
            Direction::Egress => &self.egress,
            Direction::Ingress => &self.ingress,
        };
        match id {
            0 => None,
            ID_END_OF_TIERS => Some(Allowed::EndOfTiers),
            _ => Some(
                t.get(&id)
                    .cloned()
                    .map_or(Allowed::Unknown(id), Allowed::Rule),
            ),
        }
    }

    /// What a connection's mark says of each direction (egress, ingress):
    /// `None` for a direction not stamped (not evaluated on this node, or
    /// evaluated by the open chain: see [`open`]).
    pub fn decode(&self, mark: u32) -> (Option<Allowed>, Option<Allowed>) {
        (
            self.name(Direction::Egress, (mark & CT_EGRESS_MASK) as u16),
            self.name(
                Direction::Ingress,
                ((mark & CT_INGRESS_MASK) >> CT_INGRESS_SHIFT) as u16,
            ),
        )
    }

    /// Number of named ids.
    pub fn len(&self) -> usize {
        self.egress.len() + self.ingress.len()
    }

    /// True when no id is named.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a mark says that an endpoint had no policy in a direction.
pub fn open(mark: u32) -> bool {
    mark & CT_OPEN != 0
}

type Key = (Direction, ObjectKey, usize);

/// The id allocator, kept from one render to the next (in the render cache).
#[derive(Debug)]
pub struct RuleIds {
    ids: HashMap<Key, u16>,
    table: RuleIdTable,
    /// Next never-used id per direction (egress, ingress).
    next: [u16; 2],
    /// Ids whose policy went away, oldest first (reused when `next` ran out).
    retired: [VecDeque<(u16, Key)>; 2],
}

impl Default for RuleIds {
    fn default() -> Self {
        RuleIds {
            ids: HashMap::new(),
            table: RuleIdTable::default(),
            next: [FIRST_ID; 2],
            retired: Default::default(),
        }
    }
}

fn slot(d: Direction) -> usize {
    match d {
        Direction::Egress => 0,
        Direction::Ingress => 1,
    }
}

impl RuleIds {
    /// The id of rule `rule` of `policy` (tier `tier`) in direction `dir`,
    /// allocated on first use.
    pub fn id(&mut self, dir: Direction, tier: &str, policy: &ObjectKey, rule: usize) -> u16 {
        let key = (dir, policy.clone(), rule);
        let named = AllowRule {
            tier: tier.to_string(),
            policy: policy.clone(),
            rule,
        };
        let i = slot(dir);
        let id = match self.ids.get(&key) {
            Some(&id) => id,
            None => {
                if let Some(p) = self.retired[i].iter().position(|(_, k)| *k == key) {
                    // Came back before its id was reused.
                    self.retired[i].remove(p).map_or(ID_OVERFLOW, |(id, _)| id)
                } else if self.next[i] <= LAST_ID {
                    self.next[i] += 1;
                    self.next[i] - 1
                } else if let Some((id, _)) = self.retired[i].pop_front() {
                    id
                } else {
                    return ID_OVERFLOW;
                }
            }
        };
        self.ids.insert(key, id);
        let t = match dir {
            Direction::Egress => &mut self.table.egress,
            Direction::Ingress => &mut self.table.ingress,
        };
        t.insert(id, named);
        id
    }

    /// Retires the ids of policies `in_use` does not hold (called once per
    /// render with the policies it rendered). Their names stay in the table
    /// until the id is reused.
    pub fn sweep(&mut self, mut in_use: impl FnMut(Direction, &ObjectKey) -> bool) {
        let gone: Vec<(Key, u16)> = self
            .ids
            .iter()
            .filter(|((d, p, _), _)| !in_use(*d, p))
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        let mut gone = gone;
        gone.sort();
        for (k, id) in gone {
            self.ids.remove(&k);
            self.retired[slot(k.0)].push_back((id, k));
        }
    }

    /// The table naming every id (live and retired).
    pub fn table(&self) -> &RuleIdTable {
        &self.table
    }
}

fn ct_mark() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed("mark"),
        family: None,
        dir: None,
    }))
}

/// `ct mark set ct mark & ~field | id` for direction `dir`: the statement an
/// accept site adds (before its verdict).
pub fn stamp(dir: Direction, id: u16) -> Statement<'static> {
    let (mask, value) = match dir {
        Direction::Egress => (CT_EGRESS_MASK, u32::from(id) & CT_EGRESS_MASK),
        Direction::Ingress => (
            CT_INGRESS_MASK,
            (u32::from(id) << CT_INGRESS_SHIFT) & CT_INGRESS_MASK,
        ),
    };
    Statement::Mangle(Mangle {
        key: ct_mark(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                ct_mark(),
                Expression::Number(!mask),
            ))),
            Expression::Number(value),
        ]))),
    })
}

/// `ct mark set ct mark | CT_OPEN`: the open chain's statement.
pub fn stamp_open() -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: ct_mark(),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            ct_mark(),
            Expression::Number(CT_OPEN),
        ]))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_policy::model::Kind;

    fn gnp(n: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::GlobalNetworkPolicy,
            namespace: None,
            name: n.into(),
        }
    }

    #[test]
    fn a_rule_keeps_its_id_and_both_directions_decode_from_one_mark() {
        let mut ids = RuleIds::default();
        let a = ids.id(Direction::Egress, "security", &gnp("a"), 0);
        let b = ids.id(Direction::Ingress, "security", &gnp("b"), 3);
        assert_eq!(ids.id(Direction::Egress, "security", &gnp("a"), 0), a);
        let mark = u32::from(a) | (u32::from(b) << CT_INGRESS_SHIFT) | 0x0100_0000;
        let (e, i) = ids.table().decode(mark);
        assert_eq!(
            e,
            Some(Allowed::Rule(AllowRule {
                tier: "security".into(),
                policy: gnp("a"),
                rule: 0
            }))
        );
        assert!(matches!(i, Some(Allowed::Rule(r)) if r.policy == gnp("b") && r.rule == 3));
        assert_eq!(ids.table().decode(0), (None, None));
        assert_eq!(
            ids.table()
                .decode(u32::from(ID_END_OF_TIERS) << CT_INGRESS_SHIFT),
            (None, Some(Allowed::EndOfTiers))
        );
        assert_eq!(
            ids.table().decode(0x777),
            (Some(Allowed::Unknown(0x777)), None)
        );
    }

    #[test]
    fn a_gone_policy_keeps_its_name_until_its_id_is_reused_oldest_first() {
        let mut ids = RuleIds::default();
        let a = ids.id(Direction::Egress, "t", &gnp("a"), 0);
        ids.sweep(|_, p| *p != gnp("a"));
        // Still named for connections stamped before.
        assert!(
            matches!(ids.table().name(Direction::Egress, a), Some(Allowed::Rule(r)) if r.policy == gnp("a"))
        );
        // Coming back before reuse: the same id.
        assert_eq!(ids.id(Direction::Egress, "t", &gnp("a"), 0), a);
        ids.sweep(|_, p| *p != gnp("a"));
        // Exhaust the fresh ids: the retired one is reused last.
        let mut last = 0;
        for n in 0..(LAST_ID - FIRST_ID) {
            last = ids.id(Direction::Egress, "t", &gnp("x"), usize::from(n));
            assert_ne!(last, a);
        }
        assert_eq!(last, LAST_ID);
        assert_eq!(ids.id(Direction::Egress, "t", &gnp("y"), 0), a);
        assert_eq!(ids.id(Direction::Egress, "t", &gnp("z"), 0), ID_OVERFLOW);
        // The other direction has its own ids.
        assert_eq!(ids.id(Direction::Ingress, "t", &gnp("z"), 0), FIRST_ID);
    }

    #[test]
    fn the_stamp_keeps_the_other_bits_of_the_mark() {
        let s = serde_json::to_string(&stamp(Direction::Ingress, 5)).unwrap();
        assert!(s.contains(&format!("{}", !CT_INGRESS_MASK)), "{s}");
        assert!(s.contains(&format!("{}", 5u32 << CT_INGRESS_SHIFT)), "{s}");
        assert!(open(CT_OPEN | 0x0100_0000));
        assert!(!open(0x0100_0000));
    }
}
