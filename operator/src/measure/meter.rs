//! Windows of the pods whose work counter the operator reads from Prometheus: each round of samples,
//! with what the pods' GPUs held by their agents' acknowledgements, goes into the agent core's
//! [`WorkMeter`], so these windows are cut and discarded exactly as an agent cuts its own. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kilowatt_agent_core::work::{HeldSettings, WindowTiming, WorkMeter, WorkSample};
use kilowatt_crds::plan::WorkWindow;

use super::{PromqlError, WorkQueries};
use crate::plan::rollout::AgentView;

/// A managed pod whose work counter is a PromQL query, with the GPUs it holds on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueriedPod {
    /// `namespace/name`.
    pub pod: String,
    pub uid: Option<String>,
    /// Indices of its GPUs on its node.
    pub gpus: Vec<u32>,
    pub queries: WorkQueries,
}

/// What `gpus` held by the node's last acknowledgement, while its agent is alive; `None` without a
/// live agent, an acknowledgement or one of the GPUs in it. The node's measured draw is shared
/// among its GPUs by count (Prometheus does not say which GPU drew what).
pub fn held_by_acknowledgement(gpus: &[u32], view: &AgentView) -> Option<HeldSettings> {
    view.inventory.as_ref()?;
    let node_limits = &view.ack.as_ref()?.power_limits_watts;
    let limits: Vec<f64> = gpus
        .iter()
        .map(|&index| node_limits.get(index as usize).copied())
        .collect::<Option<_>>()?;
    let node_watts = view.power.as_ref().map_or(0.0, |p| p.gpu_watts);
    let share = limits.len() as f64 / node_limits.len().max(1) as f64;
    HeldSettings::of_limits(&limits, node_watts * share)
}

/// The windows of every queried pod, between two passes.
#[derive(Debug, Default)]
pub struct QueryMeter {
    meter: WorkMeter,
}

impl QueryMeter {
    pub fn new(timing: WindowTiming) -> Self {
        QueryMeter {
            meter: WorkMeter::new(timing),
        }
    }

    /// Takes one round of `samples` (by pod) at `now`, for `pods` (with their nodes); forgets pods
    /// no longer queried. A pod whose GPUs' limits are not known now is skipped (its window goes on).
    pub fn observe(
        &mut self,
        pods: &[(String, QueriedPod)],
        views: &BTreeMap<String, AgentView>,
        samples: &BTreeMap<String, Result<WorkSample, PromqlError>>,
        now: Duration,
    ) {
        let names: BTreeSet<&str> = pods.iter().map(|(_, p)| p.pod.as_str()).collect();
        self.meter.retain(&names);
        for (node, pod) in pods {
            let Some(held) = views
                .get(node)
                .and_then(|view| held_by_acknowledgement(&pod.gpus, view))
            else {
                continue;
            };
            let Some(sample) = samples.get(&pod.pod) else {
                continue;
            };
            let sample = sample.as_ref().ok().copied();
            self.meter
                .observe(&pod.pod, pod.uid.as_deref(), now, held, sample);
        }
    }

    /// The windows completed and discarded since the last call.
    pub fn take(&mut self) -> (Vec<WorkWindow>, BTreeMap<String, u32>) {
        self.meter.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kilowatt_crds::plan::{Acknowledgement, Inventory, PowerReport};

    fn view(limits: &[f64], alive: bool) -> AgentView {
        AgentView {
            ack: Some(Acknowledgement {
                revision: 3,
                power_limits_watts: limits.to_vec(),
                boot_id: None,
            }),
            inventory: alive.then(|| Inventory {
                backend: "simulated".into(),
                gpus: Vec::new(),
                pods_reported: false,
            }),
            power: Some(PowerReport {
                gpu_watts: 2000.0,
                gpu_energy_joules: 0.0,
                period_seconds: 10.0,
                work_windows: Vec::new(),
                work_windows_rejected: BTreeMap::new(),
            }),
            ..AgentView::default()
        }
    }

    fn chat() -> QueriedPod {
        QueriedPod {
            pod: "ml/chat-0".into(),
            uid: Some("u1".into()),
            gpus: vec![2, 3],
            queries: WorkQueries {
                counter: "sum(vllm:generation_tokens_total)".into(),
                waiting: None,
            },
        }
    }

    #[test]
    fn the_pods_gpus_hold_what_their_live_agent_acknowledged() {
        let held = held_by_acknowledgement(&[2, 3], &view(&[700.0, 700.0, 400.0, 450.0], true))
            .expect("held");
        assert_eq!((held.min_limit_watts, held.max_limit_watts), (400.0, 450.0));
        assert_eq!(held.gpus, 2);
        assert!((held.gpu_watts - 1000.0).abs() < 1e-9);
        assert!(held_by_acknowledgement(&[2], &view(&[700.0; 4], false)).is_none());
        assert!(held_by_acknowledgement(&[5], &view(&[700.0; 4], true)).is_none());
    }

    #[test]
    fn query_samples_become_windows_and_a_failed_query_discards_the_open_one() {
        let mut meter = QueryMeter::new(WindowTiming {
            warm_up: Duration::from_secs(2),
            window: Duration::from_secs(10),
        });
        let pods = vec![("n1".to_owned(), chat())];
        let views = BTreeMap::from([("n1".to_owned(), view(&[700.0, 700.0, 500.0, 500.0], true))]);
        let round =
            |meter: &mut QueryMeter, second: u64, sample: Result<WorkSample, PromqlError>| {
                let samples = BTreeMap::from([("ml/chat-0".to_owned(), sample)]);
                meter.observe(&pods, &views, &samples, Duration::from_secs(second));
            };
        for second in 0..=12 {
            let counter = 80.0 * second as f64;
            round(
                &mut meter,
                second,
                Ok(WorkSample {
                    counter,
                    waiting: None,
                }),
            );
        }
        let (windows, rejected) = meter.take();
        let [window] = windows.as_slice() else {
            panic!("one window: {windows:?}");
        };
        assert_eq!(window.power_limit_watts, 500.0);
        assert!((window.rate_per_gpu - 40.0).abs() < 1e-9, "{window:?}");
        assert!(rejected.is_empty());
        round(
            &mut meter,
            13,
            Ok(WorkSample {
                counter: 1040.0,
                waiting: None,
            }),
        );
        round(
            &mut meter,
            14,
            Err(PromqlError::NoSeries {
                query: "sum(vllm:generation_tokens_total)".into(),
            }),
        );
        assert_eq!(
            meter.take().1,
            BTreeMap::from([("scrapeFailed".to_owned(), 1)])
        );
    }
}
