//! The status of each WorkloadProfile after a pass: how many pods use it, the curves its workloads'
//! work counters measured (`measured`), and the conditions `Learning` (windows arrive) and
//! `Converged` (every measured workload has planned-on points and no sweep in progress). Pure.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kilowatt_crds::{WorkloadProfile, WorkloadProfileStatus};
use kube::ResourceExt;

use super::{Learning, MIN_WINDOWS};
use crate::plan::status::condition;
use crate::plan::translate::{ProfileSource, Translation};

/// `Learning`: work windows arrive for some workload on the profile.
pub const LEARNING: &str = "Learning";
/// `Converged`: every workload on the profile that reported windows has points the plan uses, and
/// none is being explored.
pub const CONVERGED: &str = "Converged";

/// The status `profile` should have after a pass that produced `translation`.
pub fn profile_status(
    profile: &WorkloadProfile,
    translation: &Translation,
    learning: &Learning,
    now: &Time,
) -> WorkloadProfileStatus {
    let namespace = profile.namespace().unwrap_or_default();
    let name = profile.name_any();
    let pods = translation
        .profile_pods
        .get(&(namespace.clone(), name.clone()))
        .copied()
        .unwrap_or(0);
    let workloads: BTreeSet<&str> = translation
        .pods
        .iter()
        .filter(|p| p.namespace == namespace)
        .filter(|p| match &p.profile {
            Some(
                ProfileSource::Named(n) | ProfileSource::Selected(n) | ProfileSource::ForJob(n),
            ) => *n == name,
            _ => false,
        })
        .filter_map(|p| p.workload.as_deref())
        .collect();
    let measured: Vec<_> = workloads
        .iter()
        .filter_map(|w| Some(learning.learner.curve(w)?.to_status(w)))
        .collect();
    let previous = profile
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    let generation = profile.metadata.generation;
    let windows: u64 = measured
        .iter()
        .map(|c| c.windows_accepted + c.windows_lower_bound)
        .sum();
    let learning_condition = if workloads.is_empty() {
        condition(
            LEARNING,
            false,
            "NotInUse",
            "no managed pod uses this profile".to_owned(),
            generation,
            previous,
            now,
        )
    } else if windows == 0 {
        condition(
            LEARNING,
            false,
            "NoWindows",
            format!(
                "no work windows reported for the {} workload(s) on this profile; name a work \
                 counter on their pods (kilowatt.dev/work-metric or kilowatt.dev/work-query) to \
                 learn the curve",
                workloads.len()
            ),
            generation,
            previous,
            now,
        )
    } else {
        condition(
            LEARNING,
            true,
            "Measuring",
            format!(
                "{windows} work windows from {} of {} workload(s)",
                measured.len(),
                workloads.len()
            ),
            generation,
            previous,
            now,
        )
    };
    let exploring: Vec<&str> = measured
        .iter()
        .map(|c| c.workload.as_str())
        .filter(|w| learning.sweep_in_progress(w))
        .collect();
    let short: Vec<&str> = measured
        .iter()
        .filter(|c| !c.points.iter().any(|p| p.windows >= MIN_WINDOWS))
        .map(|c| c.workload.as_str())
        .collect();
    let converged = if measured.is_empty() {
        condition(
            CONVERGED,
            false,
            "NoWindows",
            "nothing measured yet; the plan uses the declared curve".to_owned(),
            generation,
            previous,
            now,
        )
    } else if !exploring.is_empty() {
        condition(
            CONVERGED,
            false,
            "Exploring",
            format!(
                "sweeping the limit down to measure {}",
                exploring.join(", ")
            ),
            generation,
            previous,
            now,
        )
    } else if !short.is_empty() {
        condition(
            CONVERGED,
            false,
            "TooFewWindows",
            format!(
                "no limit of {} has {MIN_WINDOWS} windows with requests waiting yet",
                short.join(", ")
            ),
            generation,
            previous,
            now,
        )
    } else {
        let points: usize = measured
            .iter()
            .map(|c| c.points.iter().filter(|p| p.windows >= MIN_WINDOWS).count())
            .sum();
        condition(
            CONVERGED,
            true,
            "Measured",
            format!(
                "{points} measured point(s) over {} workload(s) are planned on; the declared curve \
                 fills in elsewhere",
                measured.len()
            ),
            generation,
            previous,
            now,
        )
    };
    WorkloadProfileStatus {
        pods: Some(pods),
        measured,
        conditions: vec![learning_condition, converged],
    }
}
