//! "What throughput would we lose at cap X for budget B, or what would an efficiency policy of
//! maxSlowdown S on it save?": solves the current problem and the same problem with one budget's cap
//! or `maxSlowdown` (or both) replaced, and compares. Pure; changes nothing.

use kilowatt_solver::{SolveError, SolveOptions, solve};
use serde::{Deserialize, Serialize};

use crate::plan::published::{self, EfficiencyStatus, PublishedPlan};
use crate::plan::translate::Translation;

/// The question, as `POST /api/v1/whatif` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WhatIfRequest {
    /// PowerBudget name.
    pub budget: String,
    /// The cap to try, in place of the budget's effective cap (its safety margin still applies);
    /// absent: the effective cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_watts: Option<f64>,
    /// The `efficiency.maxSlowdown` to try on the budget, in [0, 1) (`0`: no policy); absent: its
    /// spec's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slowdown: Option<f64>,
}

/// The throughput and watts of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scenario {
    pub cap_watts: f64,
    /// `optimal`, `feasible` or `infeasible`.
    pub status: String,
    /// Weighted throughput of every workload over its best (0..1).
    pub normalized_throughput: f64,
    /// The same, for the workloads under the budget only.
    pub budget_normalized_throughput: f64,
    pub budget_allocated_watts: f64,
    /// The budget's `maxSlowdown` in this scenario, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slowdown: Option<f64>,
    /// With a policy: the watts it saved and the throughput it cost against the max-throughput plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<EfficiencyStatus>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhatIfAnswer {
    pub budget: String,
    pub current: Scenario,
    pub what_if: Scenario,
    /// Fraction of the current fleet throughput lost at the new cap (negative: gained).
    pub throughput_lost_fraction: f64,
    /// The same for the workloads under the budget.
    pub budget_throughput_lost_fraction: f64,
}

/// Why a what-if question has no answer.
#[derive(Debug, thiserror::Error)]
pub enum WhatIfError {
    #[error("no PowerBudget named {0:?}")]
    UnknownBudget(String),
    #[error("capWatts must be a finite number of watts >= 0, got {0}")]
    InvalidCap(f64),
    #[error("maxSlowdown must be a fraction in [0, 1), got {0}")]
    InvalidSlowdown(f64),
    #[error("a what-if question needs capWatts, maxSlowdown or both")]
    NothingAsked,
    #[error("solving")]
    Solve(#[from] SolveError),
}

fn fleet_throughput(translation: &Translation, plan: &PublishedPlan) -> f64 {
    let total_weight: f64 = translation
        .problem
        .workloads
        .iter()
        .map(|w| w.weight * w.gpus.len() as f64)
        .sum();
    if total_weight > 0.0 {
        plan.objective / total_weight
    } else {
        1.0
    }
}

fn scenario(
    translation: &Translation,
    budget: &str,
    options: &SolveOptions,
) -> Result<Scenario, WhatIfError> {
    let plan = solve(&translation.problem, options)?;
    let published = published::build(translation, &plan, 0, String::new(), None);
    let summary = published
        .budgets
        .iter()
        .find(|b| b.name == budget)
        .ok_or_else(|| WhatIfError::UnknownBudget(budget.to_owned()))?;
    Ok(Scenario {
        cap_watts: summary.effective_cap_watts,
        status: published.status.clone(),
        normalized_throughput: fleet_throughput(translation, &published),
        budget_normalized_throughput: summary.normalized_throughput,
        budget_allocated_watts: summary.allocated_watts,
        max_slowdown: translation
            .budgets
            .get(budget)
            .and_then(|facts| facts.max_slowdown),
        efficiency: summary.efficiency.clone(),
    })
}

fn lost(before: f64, after: f64) -> f64 {
    if before > 0.0 {
        (before - after) / before
    } else {
        0.0
    }
}

/// Answers `request` against `translation` (the cluster as it is now).
pub fn what_if(
    translation: &Translation,
    request: &WhatIfRequest,
    options: &SolveOptions,
) -> Result<WhatIfAnswer, WhatIfError> {
    if let Some(cap) = request.cap_watts.filter(|c| !c.is_finite() || *c < 0.0) {
        return Err(WhatIfError::InvalidCap(cap));
    }
    if let Some(slowdown) = request.max_slowdown.filter(|s| !(0.0..1.0).contains(s)) {
        return Err(WhatIfError::InvalidSlowdown(slowdown));
    }
    if request.cap_watts.is_none() && request.max_slowdown.is_none() {
        return Err(WhatIfError::NothingAsked);
    }
    let Some(facts) = translation.budgets.get(&request.budget) else {
        return Err(WhatIfError::UnknownBudget(request.budget.clone()));
    };
    let current = scenario(translation, &request.budget, options)?;

    let mut changed = translation.clone();
    let cap_watts = request.cap_watts.unwrap_or(facts.effective.cap_watts);
    let planning_cap = (cap_watts - facts.safety_margin_watts).max(0.0);
    // NB: 0 is kept as a policy of 0 (the max-throughput plan, reported with nothing saved), so
    // the answer still shows the policy's figures.
    let max_slowdown = request.max_slowdown.or(facts.max_slowdown);
    if let Some(f) = changed.budgets.get_mut(&request.budget) {
        f.effective.cap_watts = cap_watts;
        f.planning_cap_watts = planning_cap;
        f.max_slowdown = max_slowdown;
    }
    if let Some(b) = changed
        .problem
        .budgets
        .iter_mut()
        .find(|b| b.name == request.budget)
    {
        b.cap_watts = (planning_cap - facts.pinned_watts).max(0.0);
        b.max_slowdown = max_slowdown;
    }
    let what_if = scenario(&changed, &request.budget, options)?;
    Ok(WhatIfAnswer {
        budget: request.budget.clone(),
        throughput_lost_fraction: lost(
            current.normalized_throughput,
            what_if.normalized_throughput,
        ),
        budget_throughput_lost_fraction: lost(
            current.budget_normalized_throughput,
            what_if.budget_normalized_throughput,
        ),
        current,
        what_if,
    })
}

/// A short human summary of an answer, for `kilowatt whatif`.
pub fn render(answer: &WhatIfAnswer) -> String {
    let percent = |fraction: f64| {
        if fraction >= 0.0 {
            format!("loses {:.2} %", fraction * 100.0)
        } else {
            format!("gains {:.2} %", -fraction * 100.0)
        }
    };
    let slowdown = |s: &Scenario| {
        s.max_slowdown
            .map_or_else(|| "none".to_owned(), |v| format!("{:.2} %", v * 100.0))
    };
    let saved = |s: &Scenario| {
        s.efficiency.as_ref().map_or_else(
            || "–".to_owned(),
            |e| {
                format!(
                    "{:.0} W for {:.2} % throughput",
                    e.saved_watts,
                    e.throughput_cost * 100.0
                )
            },
        )
    };
    let mut text = format!(
        "budget {}: cap {:.0} W -> {:.0} W\n  \
         status             {} -> {}\n  \
         allocated          {:.0} W -> {:.0} W\n  \
         budget throughput  {:.4} -> {:.4} ({})\n  \
         fleet throughput   {:.4} -> {:.4} ({})\n",
        answer.budget,
        answer.current.cap_watts,
        answer.what_if.cap_watts,
        answer.current.status,
        answer.what_if.status,
        answer.current.budget_allocated_watts,
        answer.what_if.budget_allocated_watts,
        answer.current.budget_normalized_throughput,
        answer.what_if.budget_normalized_throughput,
        percent(answer.budget_throughput_lost_fraction),
        answer.current.normalized_throughput,
        answer.what_if.normalized_throughput,
        percent(answer.throughput_lost_fraction),
    );
    if answer.current.max_slowdown.is_some() || answer.what_if.max_slowdown.is_some() {
        text.push_str(&format!(
            "  maxSlowdown        {} -> {}\n  \
             policy saved       {} -> {}\n",
            slowdown(&answer.current),
            slowdown(&answer.what_if),
            saved(&answer.current),
            saved(&answer.what_if),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::translate::tests::{budget, two_node_fleet};
    use serde_json::json;

    fn cluster() -> Translation {
        let budgets = [budget(
            "rack",
            json!({"capWatts": 9000.0, "nodeSelector": {}, "safetyMarginWatts": 100.0}),
        )];
        two_node_fleet(&budgets)
    }

    fn ask(cap_watts: f64) -> Result<WhatIfAnswer, WhatIfError> {
        what_if(
            &cluster(),
            &WhatIfRequest {
                budget: "rack".into(),
                cap_watts: Some(cap_watts),
                max_slowdown: None,
            },
            &SolveOptions::default(),
        )
    }

    fn ask_slowdown(max_slowdown: f64) -> Result<WhatIfAnswer, WhatIfError> {
        what_if(
            &cluster(),
            &WhatIfRequest {
                budget: "rack".into(),
                cap_watts: None,
                max_slowdown: Some(max_slowdown),
            },
            &SolveOptions::default(),
        )
    }

    #[test]
    fn a_lower_cap_loses_throughput_and_a_higher_one_gains() {
        let lower = ask(5000.0).expect("answer");
        assert_eq!(lower.current.cap_watts, 9000.0);
        assert_eq!(lower.what_if.cap_watts, 5000.0);
        assert!(
            lower.what_if.budget_allocated_watts <= 4900.0 + 1e-6,
            "the margin still applies"
        );
        assert!(lower.throughput_lost_fraction > 0.0);
        let higher = ask(11000.0).expect("answer");
        assert!(higher.throughput_lost_fraction < 0.0);
        assert!(render(&higher).contains("gains"));
    }

    #[test]
    fn a_cap_below_the_floors_is_answered_as_infeasible() {
        let answer = ask(1000.0).expect("answer");
        assert_eq!(answer.what_if.status, "infeasible");
        assert!(answer.throughput_lost_fraction > 0.0);
    }

    #[test]
    fn unknown_budgets_and_bad_caps_are_rejected() {
        assert!(matches!(ask(f64::NAN), Err(WhatIfError::InvalidCap(_))));
        let unknown = what_if(
            &cluster(),
            &WhatIfRequest {
                budget: "row".into(),
                cap_watts: Some(1.0),
                max_slowdown: None,
            },
            &SolveOptions::default(),
        );
        assert!(matches!(unknown, Err(WhatIfError::UnknownBudget(_))));
    }

    #[test]
    fn a_hypothetical_max_slowdown_saves_watts_at_the_current_cap_within_its_cost() {
        let answer = ask_slowdown(0.05).expect("answer");
        assert_eq!(answer.current.max_slowdown, None);
        assert_eq!(answer.current.efficiency, None);
        assert_eq!(answer.what_if.cap_watts, answer.current.cap_watts);
        assert_eq!(answer.what_if.max_slowdown, Some(0.05));
        let efficiency = answer
            .what_if
            .efficiency
            .clone()
            .expect("the policy's figures");
        assert!(efficiency.saved_watts > 0.0, "{efficiency:?}");
        assert!(
            (answer.current.budget_allocated_watts
                - answer.what_if.budget_allocated_watts
                - efficiency.saved_watts)
                .abs()
                < 1e-3,
            "{answer:?}"
        );
        assert!(efficiency.throughput_cost <= 0.05 + 1e-9, "{efficiency:?}");
        assert!(answer.budget_throughput_lost_fraction > 0.0);
        assert!(answer.budget_throughput_lost_fraction <= 0.05 + 1e-9);
        assert!(render(&answer).contains("maxSlowdown        none -> 5.00 %"));
    }

    #[test]
    fn bad_slowdowns_and_empty_questions_are_rejected() {
        for bad in [1.0, -0.01, f64::NAN] {
            assert!(
                matches!(ask_slowdown(bad), Err(WhatIfError::InvalidSlowdown(_))),
                "{bad}"
            );
        }
        let empty = what_if(
            &cluster(),
            &WhatIfRequest {
                budget: "rack".into(),
                cap_watts: None,
                max_slowdown: None,
            },
            &SolveOptions::default(),
        );
        assert!(matches!(empty, Err(WhatIfError::NothingAsked)));
    }
}
