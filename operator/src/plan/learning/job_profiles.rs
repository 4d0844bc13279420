//! WorkloadProfiles the operator makes for jobs it learns and that have none: one per job, named
//! after it, with `spec.job` set so that the job's pods use it, starting from the default curve the
//! job was planned on, and owned by the job's controller (else by its pods) so that it goes away with
//! the job. Its status then keeps the learned curve where the next leader finds it. Pure.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kilowatt_crds::WorkloadProfile;
use kube::ResourceExt;

use super::Learning;
use crate::plan::gpu_models;
use crate::plan::translate::Translation;

/// The label on the profiles the operator made; its value is always `true`.
pub const MADE_FOR_JOB_LABEL: &str = "kilowatt.dev/made-for-job";

/// What the pass found about jobs without a profile.
#[derive(Debug, Default)]
pub struct JobProfiles {
    /// Profiles to create.
    pub create: Vec<WorkloadProfile>,
    /// Workloads whose profile's name another WorkloadProfile (not made for the job) already takes,
    /// with that name.
    pub name_taken: Vec<(String, String)>,
}

/// The profiles to make for the jobs of `translation` that are planned on a default curve and whose
/// work counters have reported windows, among `existing` profiles and with the owners `pods` give.
pub fn job_profiles(
    translation: &Translation,
    learning: &Learning,
    pods: &[Arc<Pod>],
    existing: &[Arc<WorkloadProfile>],
) -> JobProfiles {
    let pods_by_ref: BTreeMap<(String, String), &Pod> = pods
        .iter()
        .map(|p| {
            (
                (p.namespace().unwrap_or_default(), p.name_any()),
                p.as_ref(),
            )
        })
        .collect();
    let mut found = JobProfiles::default();
    for (workload, job) in &translation.unprofiled {
        if learning.learner.curve(workload).is_none() {
            continue;
        }
        let name = profile_name(&job.job);
        let taken = existing.iter().any(|p| {
            p.namespace().as_deref() == Some(job.namespace.as_str()) && p.name_any() == name
        });
        if taken {
            found.name_taken.push((workload.clone(), name));
            continue;
        }
        let members: Vec<&Pod> = translation
            .workload_pods
            .get(workload)
            .into_iter()
            .flatten()
            .filter_map(|pod_ref| {
                let (namespace, name) = pod_ref.split_once('/')?;
                pods_by_ref
                    .get(&(namespace.to_owned(), name.to_owned()))
                    .copied()
            })
            .collect();
        let owners = owners(&members);
        if owners.is_empty() {
            continue;
        }
        found.create.push(WorkloadProfile {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(job.namespace.clone()),
                labels: Some(
                    [
                        (MADE_FOR_JOB_LABEL.to_owned(), "true".to_owned()),
                        (
                            "app.kubernetes.io/managed-by".to_owned(),
                            "kilowatt".to_owned(),
                        ),
                    ]
                    .into(),
                ),
                owner_references: Some(owners),
                ..ObjectMeta::default()
            },
            spec: gpu_models::default_profile_spec(job.kind, &job.model, Some(job.job.clone())),
            status: None,
        });
    }
    found
}

/// The controller all `pods` share; else the pods themselves, so that the profile outlives none of
/// them. Neither blocks deletion: the garbage collector deletes the profile after its owners.
fn owners(pods: &[&Pod]) -> Vec<OwnerReference> {
    let controllers: Vec<Option<&OwnerReference>> = pods
        .iter()
        .map(|p| {
            p.owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
        })
        .collect();
    let shared = match controllers.first() {
        Some(Some(first))
            if controllers
                .iter()
                .all(|c| c.map(|c| &c.uid) == Some(&first.uid)) =>
        {
            Some(*first)
        }
        _ => None,
    };
    if let Some(controller) = shared {
        return vec![OwnerReference {
            api_version: controller.api_version.clone(),
            kind: controller.kind.clone(),
            name: controller.name.clone(),
            uid: controller.uid.clone(),
            controller: None,
            block_owner_deletion: None,
        }];
    }
    pods.iter()
        .filter_map(|p| {
            Some(OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Pod".to_owned(),
                name: p.name_any(),
                uid: p.uid()?,
                controller: None,
                block_owner_deletion: None,
            })
        })
        .collect()
}

/// `<job>-learned` when that is a valid object name; otherwise the job made into one (lower case,
/// other characters as `-`, shortened) with a hash of the job appended, so that two jobs whose names
/// differ only in what was replaced still get two profiles.
pub fn profile_name(job: &str) -> String {
    const SUFFIX: &str = "-learned";
    const MAX: usize = 253;
    let plain = format!("{job}{SUFFIX}");
    if plain.len() <= MAX && is_subdomain(&plain) {
        return plain;
    }
    let mut cleaned: String = job
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    cleaned.truncate(MAX - SUFFIX.len() - 10);
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut hasher = DefaultHasher::new();
    job.hash(&mut hasher);
    let hash = format!("{:08x}", hasher.finish() & 0xffff_ffff);
    if cleaned.is_empty() {
        format!("job-{hash}{SUFFIX}")
    } else {
        format!("{cleaned}-{hash}{SUFFIX}")
    }
}

/// Whether `name` is a DNS-1123 subdomain, the rule for most object names.
fn is_subdomain(name: &str) -> bool {
    name.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}
