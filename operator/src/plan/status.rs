//! PowerBudget status and conditions from a translation and the published plan, and the Events that
//! a status change deserves (transitions only, never every pass). Pure: the time is an argument.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kilowatt_crds::{EfficiencyStatus, PowerBudgetStatus, SignalsStatus};

use crate::plan::published::PublishedPlan;
use crate::plan::reasons;
use crate::plan::rollout::AgentView;
use crate::plan::translate::BudgetFacts;
use crate::signals::Availability;
use crate::signals::openadr::Connection;
use k8s_openapi::jiff::Timestamp;

/// An Event to record on a PowerBudget or Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    /// CamelCase.
    pub reason: String,
    pub note: String,
}

pub(crate) fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    // Kubernetes convention: the transition time moves only when the status flips.
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// `t` as Kubernetes stores a `metav1.Time`: whole seconds. A status holding sub-second times would
/// never equal the one read back, and every pass would patch it again.
pub(crate) fn kube_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// The status of budget `name` after a pass. `plan` is the plan in force (`None` before the first
/// publish); `solve_time` is when that plan was solved; `measured_watts` what the agents under the
/// budget last reported (see [`measured_per_budget`]); `possible_watts` the most the limits under it
/// may enforce after the pass's writes.
#[allow(clippy::too_many_arguments)]
pub fn budget_status(
    name: &str,
    facts: &BudgetFacts,
    plan: Option<&PublishedPlan>,
    solve_time: Option<&Time>,
    measured_watts: Option<f64>,
    possible_watts: Option<f64>,
    previous: Option<&PowerBudgetStatus>,
    now: &Time,
) -> PowerBudgetStatus {
    let old: &[Condition] = previous.map_or(&[], |p| p.conditions.as_slice());
    let generation = facts.generation;
    let summary = plan.and_then(|p| p.budgets.iter().find(|b| b.name == name));
    let infeasible = plan.is_some_and(|p| p.infeasible_budgets.iter().any(|b| b == name));
    let conflicted = !facts.conflicts.is_empty();

    // Every condition of this pass has the same generation, previous conditions and time.
    let condition_now = |type_: &str, status: bool, reason: &str, message: String| {
        condition(type_, status, reason, message, generation, old, now)
    };
    let infeasible_condition = if infeasible {
        let floors = summary.map_or(0.0, |s| s.allocated_watts);
        condition_now(
            reasons::INFEASIBLE,
            true,
            reasons::FLOORS_EXCEED_CAP,
            format!(
                "the minimum limits and overheads under this budget need {floors:.0} W but its \
                 effective cap minus safety margin is {:.0} W; every GPU in the plan is held at its \
                 minimum limit. Raise the cap, lower the safety margin, or move nodes out",
                facts.planning_cap_watts
            ),
        )
    } else {
        condition_now(
            reasons::INFEASIBLE,
            false,
            reasons::FEASIBLE,
            "the minimum limits and overheads fit under the cap".to_owned(),
        )
    };
    let conflict_condition = if conflicted {
        condition_now(
            reasons::CONFLICT,
            true,
            reasons::NODE_IN_UNRELATED_BUDGETS,
            facts.conflicts.join("; "),
        )
    } else {
        condition_now(
            reasons::CONFLICT,
            false,
            reasons::NO_CONFLICT,
            "no node is shared with an unrelated budget".to_owned(),
        )
    };
    let degraded_condition = match facts.issues.first() {
        Some(first) => condition_now(
            reasons::DEGRADED,
            true,
            first.reason,
            facts
                .issues
                .iter()
                .map(|i| i.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => condition_now(
            reasons::DEGRADED,
            false,
            reasons::INPUTS_VALID,
            "parent, selector, GPU inventory and annotations are valid".to_owned(),
        ),
    };
    // Whether the cap can be brought about: nodes that do not lower at what they hold, every other
    // GPU at its floor.
    let cap = facts.effective.cap_watts;
    let cap_enforced_condition = if facts.floor_watts <= cap + 1e-6 {
        condition_now(
            reasons::CAP_ENFORCED,
            true,
            reasons::ABSORBED,
            if facts.held.is_empty() {
                "every node under this budget lowers when told".to_owned()
            } else {
                format!(
                    "the other nodes are lowered to absorb the nodes that do not lower: {}",
                    facts.held.join("; ")
                )
            },
        )
    } else {
        condition_now(
            reasons::CAP_ENFORCED,
            false,
            reasons::NODES_NOT_LOWERING,
            format!(
                "even with every other GPU at its floor the limits under this budget may reach \
                 {:.0} W, over its {cap:.0} W cap{}{}",
                facts.floor_watts,
                if facts.held.is_empty() { "" } else { ": " },
                facts.held.join("; ")
            ),
        )
    };
    let ready_condition = match (summary, infeasible, conflicted) {
        (None, _, _) => condition_now(
            reasons::READY,
            false,
            reasons::NOT_PLANNED,
            "no plan has been published for this budget yet".to_owned(),
        ),
        (Some(_), true, _) => condition_now(
            reasons::READY,
            false,
            reasons::INFEASIBLE,
            "the plan holds every GPU at its minimum limit (see Infeasible)".to_owned(),
        ),
        (Some(_), false, true) => condition_now(
            reasons::READY,
            false,
            reasons::CONFLICT,
            "some nodes are held at their minimum limits (see Conflict)".to_owned(),
        ),
        (Some(s), false, false) => condition_now(
            reasons::READY,
            true,
            reasons::PLANNED,
            format!(
                "{:.0} W of {:.0} W allocated across {} nodes and {} GPUs",
                s.allocated_watts, s.effective_cap_watts, s.nodes, s.gpus
            ),
        ),
    };

    let signals_condition = facts.signals.as_ref().map(|reading| {
        condition_now(
            reasons::SIGNALS_AVAILABLE,
            reading.availability == Availability::Current,
            reading.availability.reason(),
            reading.message.clone(),
        )
    });
    let demand_response_condition = facts.demand_response.as_ref().map(|reading| {
        condition_now(
            reasons::DEMAND_RESPONSE_CONNECTED,
            reading.connection == Connection::Current,
            reading.connection.reason(),
            reading.message.clone(),
        )
    });
    let signals = facts.signals.as_ref().map(|reading| SignalsStatus {
        carbon_intensity_grams_per_kwh: reading
            .grams_per_kwh
            .map(|g| (g * 1000.0).round() / 1000.0),
        band_max_slowdown: reading.band_slowdown,
        max_slowdown: reading.max_slowdown,
        forecast_generated_at: reading.generated_at.map(kube_time),
        forecast_fetched_at: reading.fetched_at.map(kube_time),
    });

    PowerBudgetStatus {
        effective_cap_watts: Some(milliwatt_precision(facts.effective.cap_watts)),
        allocated_watts: summary.map(|s| milliwatt_precision(s.allocated_watts)),
        measured_watts: measured_watts.map(milliwatt_precision),
        headroom_watts: summary.map(|s| milliwatt_precision(s.headroom_watts)),
        possible_watts: possible_watts.map(milliwatt_precision),
        nodes: Some(facts.nodes),
        gpus: Some(facts.gpus),
        normalized_throughput: summary.map(|s| (s.normalized_throughput * 1e6).round() / 1e6),
        efficiency: summary
            .and_then(|s| s.efficiency.as_ref())
            .map(|e| EfficiencyStatus {
                max_slowdown: e.max_slowdown,
                saved_watts: milliwatt_precision(e.saved_watts),
                throughput_cost: (e.throughput_cost * 1e6).round() / 1e6,
            }),
        signals,
        demand_response: facts.demand_response.as_ref().map(|r| r.status.clone()),
        last_plan_revision: plan.and_then(|p| i64::try_from(p.revision).ok()),
        last_solve_time: solve_time.cloned(),
        observed_generation: generation,
        conditions: [
            ready_condition,
            infeasible_condition,
            conflict_condition,
            degraded_condition,
            cap_enforced_condition,
        ]
        .into_iter()
        .chain(signals_condition)
        .chain(demand_response_condition)
        .collect(),
    }
}

/// Measured draw per budget: the GPU power each node's agent last reported plus the node's configured
/// overhead, summed over the reporting nodes under each budget (`budgets_of`: each node's budgets),
/// rounded to 10 W so that noise alone does not rewrite statuses. Budgets with no reporting node are
/// absent.
pub fn measured_per_budget(
    views: &BTreeMap<String, AgentView>,
    budgets_of: &BTreeMap<String, Vec<String>>,
    overhead_of: impl Fn(&str) -> f64,
) -> BTreeMap<String, f64> {
    let mut measured: BTreeMap<String, f64> = BTreeMap::new();
    for (node, budgets) in budgets_of {
        let Some(report) = views.get(node).and_then(|v| v.power.as_ref()) else {
            continue;
        };
        let watts = report.gpu_watts + overhead_of(node);
        for budget in budgets {
            *measured.entry(budget.clone()).or_default() += watts;
        }
    }
    for watts in measured.values_mut() {
        *watts = (*watts / 10.0).round() * 10.0;
    }
    measured
}

/// Watts to the milliwatt. The API server keeps 15 significant digits of a custom resource's numbers;
/// a status with more would never equal the one read back, and every pass would patch it again.
/// (Throughput fractions are kept to 6 decimals for the same reason.)
fn milliwatt_precision(watts: f64) -> f64 {
    (watts * 1000.0).round() / 1000.0
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Events for what changed between two statuses of one budget: conditions that flipped (or changed
/// reason while true) and a changed effective cap, with the open windows named.
pub fn budget_events(
    previous: Option<&PowerBudgetStatus>,
    next: &PowerBudgetStatus,
    open_windows: &[String],
) -> Vec<EventNote> {
    let old: &[Condition] = previous.map_or(&[], |p| p.conditions.as_slice());
    let mut events = Vec::new();
    for new in &next.conditions {
        let before = find(old, &new.type_);
        let flipped = before.is_none_or(|b| b.status != new.status);
        let reason_changed = before.is_some_and(|b| b.reason != new.reason) && new.status == "True";
        if !(flipped || reason_changed) {
            continue;
        }
        let is_true = new.status == "True";
        let event = match (new.type_.as_str(), is_true) {
            (reasons::READY, true) => Some((false, reasons::PLANNED.to_owned())),
            (reasons::READY, false) => None,
            // True is the good state of this one: a recovery, or nothing new for a fresh budget.
            (reasons::CAP_ENFORCED, true) if before.is_none() => None,
            (reasons::CAP_ENFORCED, true) => Some((false, reasons::ABSORBED.to_owned())),
            (reasons::CAP_ENFORCED, false) => Some((true, reasons::NODES_NOT_LOWERING.to_owned())),
            (reasons::SIGNALS_AVAILABLE, true) => Some((false, new.reason.clone())),
            // A budget waits for its first fetch: not news until it had a forecast.
            (reasons::SIGNALS_AVAILABLE, false)
                if before.is_none_or(|b| b.reason == reasons::FORECAST_PENDING) =>
            {
                None
            }
            (reasons::SIGNALS_AVAILABLE, false) => Some((true, new.reason.clone())),
            (reasons::DEMAND_RESPONSE_CONNECTED, true) => Some((false, new.reason.clone())),
            (reasons::DEMAND_RESPONSE_CONNECTED, false)
                if before.is_none_or(|b| b.reason == reasons::VTN_PENDING) =>
            {
                None
            }
            (reasons::DEMAND_RESPONSE_CONNECTED, false) => Some((true, new.reason.clone())),
            // A fresh budget starts with these false; only a recovery from true is news.
            (_, false) if before.is_none() => None,
            (reasons::INFEASIBLE, false) => Some((false, reasons::FEASIBLE.to_owned())),
            (reasons::CONFLICT, false) => Some((false, reasons::CONFLICT_RESOLVED.to_owned())),
            (reasons::DEGRADED, false) => Some((false, reasons::INPUTS_VALID.to_owned())),
            (reasons::DEGRADED, true) => Some((true, new.reason.clone())),
            (other, true) => Some((true, other.to_owned())),
            _ => None,
        };
        if let Some((warning, reason)) = event {
            events.push(EventNote {
                warning,
                reason,
                note: new.message.clone(),
            });
        }
    }
    let old_cap = previous.and_then(|p| p.effective_cap_watts);
    if let (Some(old_cap), Some(new_cap)) = (old_cap, next.effective_cap_watts)
        && old_cap != new_cap
    {
        {
            let windows = if open_windows.is_empty() {
                "no schedule window open".to_owned()
            } else {
                format!("open windows: {}", open_windows.join(", "))
            };
            events.push(EventNote {
                warning: false,
                reason: reasons::EFFECTIVE_CAP_CHANGED.to_owned(),
                note: format!("effective cap {old_cap:.0} W → {new_cap:.0} W ({windows})"),
            });
        }
    }
    let old_slowdown = previous
        .and_then(|p| p.signals.as_ref())
        .map(|s| s.max_slowdown);
    let new_slowdown = next.signals.as_ref().map(|s| s.max_slowdown);
    if let (Some(old), Some(new)) = (old_slowdown, new_slowdown)
        && old != new
    {
        let words = |s: Option<f64>| s.map_or("none".to_owned(), |s| s.to_string());
        let intensity = next
            .signals
            .as_ref()
            .and_then(|s| s.carbon_intensity_grams_per_kwh)
            .map_or("no current forecast".to_owned(), |g| {
                format!("{g:.0} gCO2eq/kWh")
            });
        events.push(EventNote {
            warning: false,
            reason: reasons::SIGNAL_SLOWDOWN_CHANGED.to_owned(),
            note: format!("maxSlowdown {} → {} ({intensity})", words(old), words(new)),
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::published::BudgetSummary;
    use crate::plan::schedule::EffectiveCap;
    use crate::plan::translate::BudgetIssue;
    use crate::signals::SignalReading;

    fn facts() -> BudgetFacts {
        BudgetFacts {
            generation: Some(3),
            parent: None,
            spec_cap_watts: 10000.0,
            node_overhead_watts: None,
            effective: EffectiveCap {
                cap_watts: 10000.0,
                open_windows: Vec::new(),
            },
            safety_margin_watts: 0.0,
            max_slowdown: None,
            planning_cap_watts: 10000.0,
            pinned_watts: 0.0,
            floor_watts: 0.0,
            held: Vec::new(),
            nodes: 2,
            gpus: 16,
            conflicts: Vec::new(),
            issues: Vec::new(),
            signals: None,
            demand_response: None,
        }
    }

    fn plan(infeasible: bool) -> PublishedPlan {
        PublishedPlan {
            revision: 7,
            solved_at: String::new(),
            status: if infeasible { "infeasible" } else { "optimal" }.into(),
            method: "greedy".into(),
            objective: 1.0,
            upper_bound: 1.0,
            gap: 0.0,
            infeasible_budgets: if infeasible {
                vec!["rack".into()]
            } else {
                Vec::new()
            },
            budgets: vec![BudgetSummary {
                name: "rack".into(),
                parent: None,
                effective_cap_watts: 10000.0,
                planning_cap_watts: 10000.0,
                allocated_watts: 9500.0,
                headroom_watts: 500.0,
                nodes: 2,
                gpus: 16,
                normalized_throughput: 0.9,
                open_windows: Vec::new(),
                efficiency: None,
            }],
            workloads: Vec::new(),
            nodes: Default::default(),
        }
    }

    fn time(text: &str) -> Time {
        Time(text.parse().expect("time"))
    }

    fn find_condition<'a>(s: &'a PowerBudgetStatus, type_: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    fn reading(availability: Availability, max_slowdown: Option<f64>) -> SignalReading {
        let current = availability == Availability::Current;
        SignalReading {
            availability,
            message: format!("{availability:?}"),
            grams_per_kwh: current.then_some(512.4),
            band_slowdown: current.then_some(0.1),
            max_slowdown,
            generated_at: Some("2026-11-28T11:58:00Z".parse().expect("time")),
            fetched_at: Some("2026-11-28T11:59:00.5Z".parse().expect("time")),
            next_change: None,
        }
    }

    #[test]
    fn a_forecast_shows_as_signals_available_and_its_changes_as_events() {
        let t0 = time("2026-11-28T12:00:00Z");
        let status_with = |reading: Option<SignalReading>, previous: Option<&PowerBudgetStatus>| {
            let facts = BudgetFacts {
                signals: reading,
                ..facts()
            };
            budget_status(
                "rack",
                &facts,
                Some(&plan(false)),
                Some(&t0),
                None,
                None,
                previous,
                &t0,
            )
        };
        let plain = status_with(None, None);
        assert!(plain.signals.is_none());
        assert!(
            plain
                .conditions
                .iter()
                .all(|c| c.type_ != reasons::SIGNALS_AVAILABLE)
        );
        let pending = status_with(Some(reading(Availability::Pending, Some(0.02))), None);
        assert_eq!(find_condition(&pending, "SignalsAvailable").status, "False");
        assert_eq!(
            find_condition(&pending, "SignalsAvailable").reason,
            "ForecastPending"
        );
        assert!(
            budget_events(None, &pending, &[])
                .iter()
                .all(|e| e.reason == reasons::PLANNED),
            "waiting for the first fetch is not news"
        );
        let current = status_with(
            Some(reading(Availability::Current, Some(0.1))),
            Some(&pending),
        );
        let signals = current.signals.clone().expect("signals");
        assert_eq!(signals.carbon_intensity_grams_per_kwh, Some(512.4));
        assert_eq!(signals.max_slowdown, Some(0.1));
        assert_eq!(
            signals.forecast_fetched_at,
            Some(time("2026-11-28T11:59:00Z")),
            "whole seconds, as the API server keeps them"
        );
        let events = budget_events(Some(&pending), &current, &[]);
        let reasons_of = |events: &[EventNote]| {
            events
                .iter()
                .map(|e| (e.warning, e.reason.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            reasons_of(&events),
            [
                (false, "ForecastCurrent".to_owned()),
                (false, "SignalSlowdownChanged".to_owned())
            ]
        );
        let stale = status_with(
            Some(reading(Availability::Stale, Some(0.02))),
            Some(&current),
        );
        assert_eq!(
            reasons_of(&budget_events(Some(&current), &stale, &[])),
            [
                (true, "ForecastStale".to_owned()),
                (false, "SignalSlowdownChanged".to_owned())
            ]
        );
    }

    #[test]
    fn a_planned_budget_is_ready_and_says_so_once() {
        let t0 = time("2026-11-28T12:00:00Z");
        let first = budget_status(
            "rack",
            &facts(),
            Some(&plan(false)),
            Some(&t0),
            None,
            None,
            None,
            &t0,
        );
        assert_eq!(find_condition(&first, "Ready").status, "True");
        assert_eq!(first.last_plan_revision, Some(7));
        assert_eq!(first.observed_generation, Some(3));
        let events = budget_events(None, &first, &[]);
        assert_eq!(
            events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
            ["Planned"],
            "a new budget's false conditions are not news"
        );
        let t1 = time("2026-11-28T12:05:00Z");
        let again = budget_status(
            "rack",
            &facts(),
            Some(&plan(false)),
            Some(&t0),
            None,
            None,
            Some(&first),
            &t1,
        );
        assert_eq!(
            again, first,
            "an unchanged pass writes the same status (so nothing is patched)"
        );
        assert!(budget_events(Some(&first), &again, &[]).is_empty());
    }

    #[test]
    fn infeasibility_flips_conditions_keeps_transition_times_and_warns() {
        let t0 = time("2026-11-28T12:00:00Z");
        let t1 = time("2026-11-28T12:05:00Z");
        let ok = budget_status(
            "rack",
            &facts(),
            Some(&plan(false)),
            Some(&t0),
            None,
            None,
            None,
            &t0,
        );
        let bad = budget_status(
            "rack",
            &facts(),
            Some(&plan(true)),
            Some(&t1),
            None,
            None,
            Some(&ok),
            &t1,
        );
        assert_eq!(find_condition(&bad, "Infeasible").status, "True");
        assert_eq!(find_condition(&bad, "Infeasible").last_transition_time, t1);
        assert_eq!(find_condition(&bad, "Conflict").last_transition_time, t0);
        assert_eq!(find_condition(&bad, "Ready").reason, "Infeasible");
        let events = budget_events(Some(&ok), &bad, &[]);
        assert_eq!(events.len(), 1);
        assert!(events[0].warning && events[0].reason == "Infeasible");
        let back = budget_status(
            "rack",
            &facts(),
            Some(&plan(false)),
            Some(&t1),
            None,
            None,
            Some(&bad),
            &t1,
        );
        let reasons: Vec<String> = budget_events(Some(&bad), &back, &[])
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, ["Planned", "Feasible"]);
    }

    #[test]
    fn a_degraded_input_and_a_cap_change_are_announced() {
        let t0 = time("2026-11-28T12:00:00Z");
        let ok = budget_status(
            "rack",
            &facts(),
            Some(&plan(false)),
            Some(&t0),
            None,
            None,
            None,
            &t0,
        );
        let mut degraded = facts();
        degraded.issues.push(BudgetIssue {
            reason: "ParentNotFound",
            message: "parent PowerBudget \"row\" does not exist".into(),
        });
        degraded.effective.cap_watts = 8000.0;
        let next = budget_status(
            "rack",
            &degraded,
            Some(&plan(false)),
            Some(&t0),
            None,
            None,
            Some(&ok),
            &t0,
        );
        assert_eq!(find_condition(&next, "Degraded").reason, "ParentNotFound");
        let events = budget_events(Some(&ok), &next, &["dr-event".to_owned()]);
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["ParentNotFound", "EffectiveCapChanged"]);
        assert!(
            events[1]
                .note
                .contains("10000 W → 8000 W (open windows: dr-event)")
        );
    }

    #[test]
    fn measured_power_adds_reported_gpu_draw_and_overheads_up_the_chain() {
        let report = |watts| AgentView {
            power: Some(kilowatt_crds::plan::PowerReport {
                gpu_watts: watts,
                gpu_energy_joules: watts * 10.0,
                period_seconds: 10.0,
                work_windows: Vec::new(),
                work_windows_rejected: BTreeMap::new(),
            }),
            ..AgentView::default()
        };
        let views = BTreeMap::from([
            ("a".to_string(), report(1234.0)),
            ("b".to_string(), report(2000.0)),
            ("silent".to_string(), AgentView::default()),
        ]);
        let chain = |budgets: &[&str]| budgets.iter().map(|b| b.to_string()).collect::<Vec<_>>();
        let budgets_of = BTreeMap::from([
            ("a".to_string(), chain(&["rack-1", "row"])),
            ("b".to_string(), chain(&["rack-2", "row"])),
            ("silent".to_string(), chain(&["rack-3", "row"])),
        ]);
        let measured = measured_per_budget(&views, &budgets_of, |_| 500.0);
        assert_eq!(measured["rack-1"], 1730.0, "1734 W rounded to 10 W");
        assert_eq!(measured["rack-2"], 2500.0);
        assert_eq!(measured["row"], 4230.0);
        assert!(!measured.contains_key("rack-3"), "no report, no figure");
    }

    #[test]
    fn status_numbers_survive_the_api_servers_fifteen_digits() {
        let mut facts = facts();
        facts.effective.cap_watts = 102_000.000_000_000_01;
        let mut plan = plan(false);
        for budget in &mut plan.budgets {
            budget.normalized_throughput = 0.990_071_428_571_427_9;
            budget.allocated_watts = 101_999.999_999_999_99;
        }
        let t0 = time("2026-11-28T12:00:00Z");
        let status = budget_status(
            "rack",
            &facts,
            Some(&plan),
            Some(&t0),
            Some(21_200.000_000_3),
            None,
            None,
            &t0,
        );
        // What the API server stores: at most 15 significant digits.
        let stored =
            |v: Option<f64>| v.map(|v| format!("{v:.14e}").parse::<f64>().expect("number"));
        assert_eq!(
            stored(status.normalized_throughput),
            status.normalized_throughput
        );
        assert_eq!(stored(status.allocated_watts), status.allocated_watts);
        assert_eq!(
            stored(status.effective_cap_watts),
            status.effective_cap_watts
        );
        assert_eq!(stored(status.measured_watts), status.measured_watts);
        assert_eq!(status.normalized_throughput, Some(0.990071));
    }

    #[test]
    fn a_policy_budget_shows_what_it_saved_and_cost_and_others_show_nothing() {
        let facts = facts();
        let t0 = time("2026-11-28T12:00:00Z");
        let status = |plan: &PublishedPlan| {
            budget_status("rack", &facts, Some(plan), None, None, None, None, &t0)
        };
        assert_eq!(status(&plan(false)).efficiency, None);
        let mut with_policy = plan(false);
        with_policy.budgets[0].efficiency = Some(EfficiencyStatus {
            max_slowdown: 0.02,
            saved_watts: 1_234.567_890_123,
            throughput_cost: 0.019_999_97,
        });
        assert_eq!(
            status(&with_policy).efficiency,
            Some(EfficiencyStatus {
                max_slowdown: 0.02,
                saved_watts: 1234.568,
                throughput_cost: 0.02,
            })
        );
        let json = serde_json::to_value(status(&with_policy)).expect("serialises");
        assert_eq!(json["efficiency"]["savedWatts"], 1234.568);
        assert_eq!(json["efficiency"]["throughputCost"], 0.02);
    }
}
