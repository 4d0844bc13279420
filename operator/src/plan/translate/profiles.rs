//! Profile selection: which curve a managed pod runs on — the WorkloadProfile it names, else the first
//! whose selector matches it, else the first made for its job, else the built-in default for its kind
//! and GPU model. Pure.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kilowatt_crds::WorkloadProfile;
use kilowatt_solver::model::ProfilePoint;
use kube::ResourceExt;

use super::budgets::selector_matches;
use super::pods::PodIntent;
use super::{PROFILE_ANNOTATION, PodWarning, ProfileSource, object_name};
use crate::plan::gpu_models::{self, GpuModel};
use crate::plan::reasons;

/// The curve a managed pod runs on: the profile it names, else the first (by name) whose selector
/// matches it, else the first (by name) whose `job` is the pod's, else the default for its kind and
/// GPU model.
pub(super) fn resolve_profile(
    profiles: &[Arc<WorkloadProfile>],
    pod: &Pod,
    intent: &PodIntent,
    model: &GpuModel,
) -> Result<(ProfileSource, Vec<ProfilePoint>), PodWarning> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut in_namespace: Vec<&WorkloadProfile> = profiles
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(Arc::as_ref)
        .collect();
    in_namespace.sort_by(|a, b| object_name(&a.metadata).cmp(object_name(&b.metadata)));
    let points_of = |profile: &WorkloadProfile| gpu_models::solver_points(&profile.spec.points);
    if let Some(name) = &intent.profile_name {
        return match in_namespace.iter().find(|p| p.name_any() == *name) {
            Some(profile) => Ok((ProfileSource::Named(name.clone()), points_of(profile))),
            None => Err(PodWarning {
                reason: reasons::PROFILE_NOT_FOUND,
                message: format!(
                    "annotation {PROFILE_ANNOTATION}={name:?} names no WorkloadProfile in namespace \
                     {namespace}; the pod's GPUs are held at their minimum power limit until it exists"
                ),
            }),
        };
    }
    let selected = in_namespace.iter().find(|p| {
        p.spec
            .selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, pod.labels()).unwrap_or(false))
    });
    if let Some(profile) = selected {
        return Ok((
            ProfileSource::Selected(profile.name_any()),
            points_of(profile),
        ));
    }
    let for_job = in_namespace
        .iter()
        .find(|p| p.spec.job.as_deref() == Some(intent.job.as_str()));
    Ok(match for_job {
        Some(profile) => (
            ProfileSource::ForJob(profile.name_any()),
            points_of(profile),
        ),
        None => {
            let (name, points) = gpu_models::default_profile(intent.kind, model);
            (ProfileSource::Default(name), points)
        }
    })
}
