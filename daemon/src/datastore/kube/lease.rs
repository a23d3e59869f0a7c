//! Election of the one daemon that writes policy status: a
//! `coordination.k8s.io` Lease held by the node whose daemon renewed it
//! last; another node takes it over once it has not been renewed for its
//! duration. Conflicts (two daemons updating at once) are settled by the
//! API server's resourceVersion check: the loser is simply not the holder.
//!
//! It only answers "am I the holder now"; what the holder does is
//! [`super::status`]'s business.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

/// How long a Lease stays held without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and the others check).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// One daemon's view of the Lease.
#[derive(Clone)]
pub struct LeaseElector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl LeaseElector {
    /// An elector for Lease `namespace/name`, as `identity` (the node name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaseElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    fn spec(&self, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes, renews or checks the Lease at time `now`: whether this daemon
    /// holds it afterwards. API errors (a conflict included) mean "not now".
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let duration = spec
            .lease_duration_seconds
            .unwrap_or(LEASE_DURATION.as_secs() as i32);
        let expired = match &spec.renew_time {
            Some(MicroTime(t)) => *t + SignedDuration::from_secs(duration.into()) < now,
            None => true,
        };
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = if holder == self.identity {
            let mut s = spec.clone();
            s.renew_time = Some(MicroTime(now));
            s
        } else if holder.is_empty() || expired {
            self.spec(now, transitions + 1)
        } else {
            return Ok(false);
        };
        lease.spec = Some(next);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
