//! Leader election on a coordination.k8s.io Lease: several operator replicas run, one acts. The rule
//! (who may take the lease, when a leader must stop acting) is pure and takes the time as an argument;
//! `Elector` does the API IO around it.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kilowatt_plumbing::errors::error_chain;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// What a replica should do with the lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Absent, ours, released or expired: write it with us as holder.
    Claim,
    /// Held by another replica whose lease has not expired.
    Follow { holder: String },
}

/// Decides from the lease's spec (`None`: no lease yet) whether `identity` may claim it, when this
/// replica has seen that spec unchanged for `unchanged_for` by its own clock.
///
/// Expiry is judged by locally observed time, as client-go does, not by the holder's `renewTime`:
/// that is another machine's clock, and a skew of a few seconds between the two would let this
/// replica take over while the holder still acts.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = spec else {
        return Decision::Claim;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return Decision::Claim;
    }
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    if unchanged_for < duration {
        Decision::Follow {
            holder: holder.to_owned(),
        }
    } else {
        Decision::Claim
    }
}

/// The parts of a lease whose change shows that its holder is alive: a renewal changes
/// `renewTime`, a takeover the holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    duration_seconds: Option<i32>,
}

impl Record {
    fn of(spec: Option<&LeaseSpec>) -> Option<Record> {
        spec.map(|s| Record {
            holder: s.holder_identity.clone(),
            renew_time: s.renew_time.as_ref().map(|t| t.0),
            acquire_time: s.acquire_time.as_ref().map(|t| t.0),
            duration_seconds: s.lease_duration_seconds,
        })
    }
}

/// How long this replica has seen the lease unchanged, by its own monotonic clock.
#[derive(Debug, Clone, Default)]
struct LeaseWatch {
    /// The record last read and when it was first seen; `None` before the first read.
    seen: Option<(Option<Record>, Instant)>,
}

impl LeaseWatch {
    /// Notes the lease read at `now`; returns how long it has been seen unchanged (zero when it
    /// just changed, or on the first read: a replica that starts does not trust a stale-looking
    /// lease before it has watched it for a lease duration).
    fn unchanged_for(&mut self, spec: Option<&LeaseSpec>, now: Instant) -> Duration {
        let record = Record::of(spec);
        match &self.seen {
            Some((seen, since)) if *seen == record => now.saturating_duration_since(*since),
            _ => {
                self.seen = Some((record, now));
                Duration::ZERO
            }
        }
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
    #[error("the lease round on {namespace}/{name} took longer than {limit:?}")]
    TimedOut {
        namespace: String,
        name: String,
        limit: Duration,
    },
}

/// Takes part in the election for one Lease.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: LeaseTiming,
    lease_watch: LeaseWatch,
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
            lease_watch: LeaseWatch::default(),
        }
    }

    /// One round: read the lease, claim or renew it if the rule allows. `Ok(true)`: we hold it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, ElectionError> {
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
        let unchanged_for = self.lease_watch.unchanged_for(spec, Instant::now());
        if let Decision::Follow { .. } = decide(spec, &self.identity, unchanged_for) {
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

    /// Publishes whether this replica may act: it renewed (at `renewed_at`) within the renew
    /// deadline. Forgets a renewal that is too old.
    fn publish_acting(&self, leader: &watch::Sender<bool>, renewed_at: &mut Option<Instant>) {
        let acting = renewed_at.is_some_and(|at| at.elapsed() < self.timing.renew_deadline);
        if !acting {
            *renewed_at = None;
        }
        if *leader.borrow() != acting {
            if !acting {
                tracing::warn!(identity = %self.identity, "stopped acting as leader");
            }
            leader.send_replace(acting);
        }
    }

    /// Runs rounds every retry period until `shutdown` flips, publishing whether this replica may act.
    /// Leadership ends when a renewal has not succeeded within the renew deadline, counted from the
    /// start of the round that renewed (the API server wrote the renewal after that instant, so every
    /// other replica's count of the lease's duration starts later). A round that hangs (a stuck API
    /// connection) is cut off at that deadline, so a leader that cannot renew stops acting on time.
    pub async fn run(mut self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut renewed_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let limit = match renewed_at {
                Some(at) => (at + self.timing.renew_deadline).saturating_duration_since(started),
                None => self.timing.renew_deadline,
            };
            let round = tokio::time::timeout(limit, self.try_acquire_or_renew()).await;
            match round {
                Ok(Ok(true)) => {
                    if !*leader.borrow() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                    }
                    renewed_at = Some(started);
                }
                Ok(Ok(false)) => renewed_at = None,
                Ok(Err(error)) => {
                    tracing::warn!(error = %error_chain(&error), "lease round failed");
                }
                Err(_) => {
                    let error = ElectionError::TimedOut {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        limit,
                    };
                    tracing::warn!(error = %error_chain(&error), "lease round failed");
                }
            }
            self.publish_acting(&leader, &mut renewed_at);
            // NB: the deadline is watched while sleeping too, so acting ends at it, not a period late.
            let deadline = renewed_at.map(|at| at + self.timing.renew_deadline);
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or(started)), if deadline.is_some() => {
                    self.publish_acting(&leader, &mut renewed_at);
                }
                _ = shutdown.changed() => break,
            }
        }
        leader.send_replace(false);
        let release = tokio::time::timeout(self.timing.renew_deadline, self.release());
        match release.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error_chain(&error), "could not release the lease on shutdown");
            }
            Err(_) => {
                tracing::warn!("could not release the lease on shutdown: the API did not answer")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http::{Method, Request, Response};

    use super::*;

    fn spec(holder: Option<&str>, renewed: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: Some(MicroTime(renewed.parse().expect("time"))),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_missing_or_released_lease_may_be_claimed() {
        assert_eq!(decide(None, "a", Duration::ZERO), Decision::Claim);
        let released = spec(None, "2026-11-28T00:00:00Z", 15);
        assert_eq!(
            decide(Some(&released), "a", Duration::ZERO),
            Decision::Claim
        );
    }

    #[test]
    fn another_holders_lease_is_respected_until_seen_unchanged_for_its_duration() {
        let held = spec(Some("b"), "2026-11-28T00:00:00Z", 15);
        assert_eq!(
            decide(Some(&held), "a", 14 * SECOND),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(decide(Some(&held), "a", 15 * SECOND), Decision::Claim);
    }

    #[test]
    fn the_holder_renews_its_own_lease() {
        let held = spec(Some("a"), "2026-11-28T00:00:00Z", 15);
        assert_eq!(decide(Some(&held), "a", Duration::ZERO), Decision::Claim);
    }

    #[test]
    fn a_renew_time_from_a_skewed_clock_does_not_expire_a_lease_seen_renewing() {
        let mut watch = LeaseWatch::default();
        let start = Instant::now();
        // The holder's clock is a year behind: by renewTime the lease expired long ago.
        let first = spec(Some("b"), "2025-11-28T00:00:00Z", 15);
        assert_eq!(watch.unchanged_for(Some(&first), start), Duration::ZERO);
        assert_eq!(
            watch.unchanged_for(Some(&first), start + 10 * SECOND),
            10 * SECOND
        );
        // It renews: the count starts again, however old the new renewTime looks.
        let renewed = spec(Some("b"), "2025-11-28T00:00:10Z", 15);
        let later = start + 12 * SECOND;
        let unchanged = watch.unchanged_for(Some(&renewed), later);
        assert_eq!(unchanged, Duration::ZERO);
        assert_eq!(
            decide(Some(&renewed), "a", unchanged),
            Decision::Follow { holder: "b".into() }
        );
        // It stops renewing: expired a full duration after this replica saw the last renewal.
        let unchanged = watch.unchanged_for(Some(&renewed), later + 15 * SECOND);
        assert_eq!(decide(Some(&renewed), "a", unchanged), Decision::Claim);
    }

    #[test]
    fn a_replica_that_starts_watches_a_lease_for_its_duration_before_claiming_it() {
        let mut watch = LeaseWatch::default();
        let stale = spec(Some("b"), "2020-01-01T00:00:00Z", 15);
        let unchanged = watch.unchanged_for(Some(&stale), Instant::now());
        assert_eq!(
            decide(Some(&stale), "a", unchanged),
            Decision::Follow { holder: "b".into() }
        );
    }

    /// A kube client whose API server creates whatever it is sent (so every round claims the
    /// lease) until `hang` is set, and from then on never answers.
    fn api_that_hangs_when(hang: Arc<AtomicBool>) -> kube::Client {
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let hang = hang.clone();
            async move {
                if hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let response = if request.method() == Method::GET {
                    let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "NotFound", "code": 404});
                    Response::builder()
                        .status(404)
                        .body(kube::client::Body::from(not_found.to_string().into_bytes()))
                } else {
                    let sent = request.into_body().collect_bytes().await?;
                    Response::builder()
                        .status(201)
                        .body(kube::client::Body::from(sent))
                };
                Ok::<_, kube::Error>(response.expect("a response"))
            }
        });
        kube::Client::new(service, "kilowatt-system")
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_api_hangs_stops_acting_within_the_renew_deadline() {
        let timing = LeaseTiming::from_duration(Duration::from_secs(15));
        let hang = Arc::new(AtomicBool::new(false));
        let client = api_that_hangs_when(hang.clone());
        let elector = Elector::new(client, "kilowatt-system", "kilowatt-operator", "a", timing);
        let (leader, mut acting) = watch::channel(false);
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(elector.run(leader, shutdown));
        acting.wait_for(|a| *a).await.expect("becomes leader");
        hang.store(true, Ordering::SeqCst);
        let hung_at = Instant::now();
        // Another replica may take over once it has seen the lease unrenewed for its duration.
        let stopped = tokio::time::timeout(timing.duration, acting.wait_for(|a| !*a)).await;
        assert!(
            stopped.is_ok(),
            "still acting a lease duration after the API hung"
        );
        assert!(
            hung_at.elapsed() <= timing.renew_deadline,
            "{:?}",
            hung_at.elapsed()
        );
    }

    #[test]
    fn a_leader_stops_acting_before_its_lease_can_be_taken() {
        let timing = LeaseTiming::from_duration(Duration::from_secs(15));
        assert!(timing.renew_deadline < timing.duration);
        assert!(timing.retry_period * 3 < timing.renew_deadline);
    }
}
