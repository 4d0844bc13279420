//! Leader election on a coordination.k8s.io Lease: several operator replicas run, one acts. The rule
//! (who may take the lease, when a leader must stop acting) is pure and takes the time as an argument;
//! `Elector` does the API IO around it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kilowatt_plumbing::errors::error_chain;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// What a replica should do with the lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Absent, ours, released or expired: write it with us as holder.
    Claim,
    /// Held by another replica whose lease has not expired.
    Follow { holder: String },
}

/// Decides from the lease's spec (`None`: no lease yet) whether `identity` may claim it at `now`.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Claim;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return Decision::Claim;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed.and_then(|t| t.checked_add(duration).ok()) {
        Some(expiry) if expiry > now => Decision::Follow {
            holder: holder.to_owned(),
        },
        _ => Decision::Claim,
    }
}

/// Timing of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease stays valid after its last renewal.
    pub duration: Duration,
    /// How often the holder renews, and others retry.
    pub retry_period: Duration,
    /// A leader that has not renewed for this long stops acting; shorter than `duration`, so it has
    /// stopped before anyone else may take over.
    pub renew_deadline: Duration,
}

impl LeaseTiming {
    /// The usual 15 s / 2 s / 10 s split of client-go's leader election, scaled to `duration`.
    pub fn from_duration(duration: Duration) -> LeaseTiming {
        LeaseTiming {
            duration,
            retry_period: duration.mul_f64(2.0 / 15.0),
            renew_deadline: duration.mul_f64(10.0 / 15.0),
        }
    }
}

/// Why a lease round failed; the elector retries on the next period.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("reading lease {namespace}/{name}")]
    Read {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("writing lease {namespace}/{name}")]
    Write {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Takes part in the election for one Lease.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: LeaseTiming,
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
        }
    }

    /// One round: read the lease, claim or renew it if the rule allows. `Ok(true)`: we hold it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, ElectionError> {
        let read_error = |source| ElectionError::Read {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        };
        let write_error = |source| ElectionError::Write {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        };
        let current = self.api.get_opt(&self.name).await.map_err(read_error)?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        if let Decision::Follow { .. } = decide(spec, &self.identity, Timestamp::now()) {
            return Ok(false);
        }
        let was_ours =
            spec.and_then(|s| s.holder_identity.as_deref()) == Some(self.identity.as_str());
        let now = micro_now();
        let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
        let new_spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: if was_ours {
                spec.and_then(|s| s.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if was_ours || current.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..LeaseSpec::default()
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // NB: replace carries the resourceVersion we read, so two replicas claiming an expired
                // lease at once cannot both succeed: the API server rejects the second with 409.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(write_error(e)),
        }
    }

    /// Gives the lease up so another replica can take over at once (on shutdown).
    pub async fn release(&self) -> Result<(), ElectionError> {
        let write_error = |source| ElectionError::Write {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        };
        let Some(mut lease) =
            self.api
                .get_opt(&self.name)
                .await
                .map_err(|source| ElectionError::Read {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    source,
                })?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(write_error)
    }

    /// Runs rounds every retry period until `shutdown` flips, publishing whether this replica may act.
    /// Leadership ends when a renewal has not succeeded within the renew deadline.
    pub async fn run(self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    if !*leader.borrow() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    }
                    last_renewal = Some(tokio::time::Instant::now());
                }
                Ok(false) => last_renewal = None,
                Err(error) => tracing::warn!(error = %error_chain(&error), "lease round failed"),
            }
            let acting = last_renewal.is_some_and(|t| t.elapsed() < self.timing.renew_deadline);
            if *leader.borrow() != acting {
                if !acting {
                    tracing::warn!(identity = %self.identity, "stopped acting as leader");
                }
                leader.send_replace(acting);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = shutdown.changed() => break,
            }
        }
        leader.send_replace(false);
        if let Err(error) = self.release().await {
            tracing::warn!(error = %error_chain(&error), "could not release the lease on shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: Some(MicroTime(renewed.parse().expect("time"))),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    #[test]
    fn a_missing_or_released_lease_may_be_claimed() {
        assert_eq!(
            decide(None, "a", at("2026-11-28T00:00:00Z")),
            Decision::Claim
        );
        let released = spec(None, "2026-11-28T00:00:00Z", 15);
        assert_eq!(
            decide(Some(&released), "a", at("2026-11-28T00:00:01Z")),
            Decision::Claim
        );
    }

    #[test]
    fn another_holders_lease_is_respected_until_it_expires() {
        let held = spec(Some("b"), "2026-11-28T00:00:00Z", 15);
        assert_eq!(
            decide(Some(&held), "a", at("2026-11-28T00:00:14Z")),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&held), "a", at("2026-11-28T00:00:15Z")),
            Decision::Claim
        );
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        let held = spec(Some("a"), "2026-11-28T00:00:00Z", 15);
        assert_eq!(
            decide(Some(&held), "a", at("2026-11-28T00:00:05Z")),
            Decision::Claim
        );
    }

    #[test]
    fn a_leader_stops_acting_before_its_lease_can_be_taken() {
        let timing = LeaseTiming::from_duration(Duration::from_secs(15));
        assert!(timing.renew_deadline < timing.duration);
        assert!(timing.retry_period * 3 < timing.renew_deadline);
    }
}
