//! Gangs: managed pods joined into solver workloads — the pods of one job in a namespace run at one
//! limit, on the curve, kind, weight and floor of the first of them — with the diagnostics of pods
//! that cannot be planned. Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use kilowatt_crds::WorkloadProfile;
use kilowatt_solver::model::{self, ProfilePoint, WorkloadKind};

use super::pods::{PlacedPod, pod_intent};
use super::profiles::resolve_profile;
use super::{NodeFacts, PodFacts, PodWarning, ProfileSource, UnprofiledJob};
use crate::plan::reasons;

/// A gang being assembled from its pods.
struct Gang {
    kind: WorkloadKind,
    weight: f64,
    min_fraction: Option<f64>,
    profile: ProfileSource,
    points: Vec<ProfilePoint>,
    gpus: Vec<String>,
    pods: Vec<String>,
    /// Where a profile made for the job would live and what it would start from.
    unprofiled: UnprofiledJob,
}

/// Gangs as their pods join them, and every pod's facts in the order they came.
#[derive(Default)]
pub(super) struct Gangs {
    gangs: BTreeMap<String, Gang>,
    pods: Vec<PodFacts>,
    profile_pods: BTreeMap<(String, String), u32>,
}

/// The workloads and pods of a translation.
pub(super) struct Joined {
    pub workloads: Vec<model::Workload>,
    pub workload_pods: BTreeMap<String, Vec<String>>,
    pub pods: Vec<PodFacts>,
    pub unprofiled: BTreeMap<String, UnprofiledJob>,
    pub profile_pods: BTreeMap<(String, String), u32>,
}

impl Gangs {
    /// A placed pod on `node` joins its job's gang, if its annotations and profile allow.
    pub fn join(
        &mut self,
        placed: PlacedPod<'_>,
        node: &NodeFacts,
        profiles: &[Arc<WorkloadProfile>],
    ) {
        let PlacedPod {
            pod,
            pod_ref,
            node: node_name,
            slot_ids,
            mut facts,
        } = placed;
        let namespace = facts.namespace.clone();
        let pinned = node.pinned;
        let hold = node.hold.clone();
        let model = node.model;

        let intent = match pod_intent(pod) {
            Ok(Some(intent)) => intent,
            Ok(None) => {
                self.pods.push(facts);
                return;
            }
            Err(warning) => {
                facts.warnings.push(warning);
                self.pods.push(facts);
                return;
            }
        };
        let (source, points) = match resolve_profile(profiles, pod, &intent, &model) {
            Ok(resolved) => resolved,
            Err(warning) => {
                facts.warnings.push(warning);
                self.pods.push(facts);
                return;
            }
        };
        if let ProfileSource::Named(name)
        | ProfileSource::Selected(name)
        | ProfileSource::ForJob(name) = &source
        {
            *self
                .profile_pods
                .entry((namespace.clone(), name.clone()))
                .or_default() += 1;
        }
        facts.profile = Some(source.clone());
        if pinned {
            facts.warnings.push(match hold {
                Some(hold) => PodWarning {
                    reason: hold.reason,
                    message: format!(
                        "{}; the pod's GPUs are planned at their minimum power limit meanwhile",
                        hold.message
                    ),
                },
                None => PodWarning {
                    reason: reasons::NODE_IN_CONFLICTING_BUDGETS,
                    message: format!(
                        "node {node_name} is selected by PowerBudgets that are not ancestor and \
                         descendant; the pod's GPUs are held at their minimum power limit until the \
                         selectors are fixed"
                    ),
                },
            });
            self.pods.push(facts);
            return;
        }
        let workload = format!("{namespace}/{}", intent.job);
        let gang = self.gangs.entry(workload.clone()).or_insert_with(|| Gang {
            kind: intent.kind,
            weight: intent.weight,
            min_fraction: intent.min_fraction,
            profile: source.clone(),
            points,
            gpus: Vec::new(),
            pods: Vec::new(),
            unprofiled: UnprofiledJob {
                namespace: namespace.clone(),
                job: intent.job.clone(),
                kind: intent.kind,
                model,
            },
        });
        let agrees = gang.kind == intent.kind
            && gang.weight == intent.weight
            && gang.min_fraction == intent.min_fraction
            && gang.profile == source;
        if !agrees {
            facts.warnings.push(PodWarning {
                reason: reasons::GANG_MISMATCH,
                message: format!(
                    "the pod's workload kind, profile, weight or minimum throughput fraction differ from \
                     those of the first pod of job {workload} ({}, {:?}, weight {}, min fraction {:?}); \
                     the job runs at one limit with the first pod's settings",
                    kind_name(gang.kind),
                    gang.profile,
                    gang.weight,
                    gang.min_fraction
                ),
            });
        }
        gang.gpus.extend(slot_ids);
        gang.pods.push(pod_ref);
        facts.workload = Some(workload);
        self.pods.push(facts);
    }

    /// The gangs with GPUs as solver workloads; a pod whose gang has none is unmanaged.
    pub fn finish(mut self) -> Joined {
        let mut workload_pods = BTreeMap::new();
        let mut unprofiled = BTreeMap::new();
        let workloads = self
            .gangs
            .into_iter()
            .filter(|(_, g)| !g.gpus.is_empty())
            .map(|(name, gang)| {
                workload_pods.insert(name.clone(), gang.pods);
                if matches!(gang.profile, ProfileSource::Default(_)) {
                    unprofiled.insert(name.clone(), gang.unprofiled);
                }
                model::Workload {
                    name,
                    kind: gang.kind,
                    weight: gang.weight,
                    gpus: gang.gpus,
                    min_throughput_fraction: gang.min_fraction,
                    profile: gang.points,
                }
            })
            .collect();
        for pod in &mut self.pods {
            if pod
                .workload
                .as_ref()
                .is_some_and(|w| !workload_pods.contains_key(w))
            {
                pod.workload = None;
            }
        }
        Joined {
            workloads,
            workload_pods,
            pods: self.pods,
            profile_pods: self.profile_pods,
            unprofiled,
        }
    }
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Training => "training",
        WorkloadKind::Inference => "inference",
    }
}
