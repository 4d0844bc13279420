//! The exact path: a mixed-integer program over every workload's candidate levels, built with good_lp
//! and solved by HiGHS, warm-started from the greedy plan. Pure computation, no IO: HiGHS is kept quiet
//! and single-threaded so the same input gives the same plan.
//!
//! Formulation, per workload: one binary per candidate level (exactly one chosen), and for each
//! candidate from which the curve rises linearly, a continuous offset towards the next candidate that
//! is allowed only when that candidate is chosen. The workload's level and value are then linear in
//! those variables, which is exact for any measured curve, concave or not.

use good_lp::{Expression, ProblemVariables, Variable, solvers::highs::highs, variable};
use highs::HighsModelStatus;

use crate::curve::Milliwatts;
use crate::instance::Instance;

/// Work limits for HiGHS. The node limit is deterministic; the time limit is a backstop for slow
/// machines and, when it is what stops the search, the plan may differ between runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MilpLimits {
    pub max_nodes: u32,
    pub time_limit_seconds: f64,
    /// HiGHS stops once incumbent and bound are this close (relative).
    pub relative_gap: f64,
}

impl Default for MilpLimits {
    fn default() -> Self {
        MilpLimits {
            max_nodes: 20_000,
            time_limit_seconds: 20.0,
            relative_gap: 1e-6,
        }
    }
}

/// Why HiGHS gave no usable plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MilpError {
    #[error("HiGHS rejected the model: {0}")]
    Build(String),
    #[error("HiGHS failed while solving: {0}")]
    Solve(String),
    #[error("HiGHS found no feasible plan (status {0})")]
    NoSolution(String),
}

/// What HiGHS returned: each workload's limit and the proven bound on the optimum.
pub(crate) struct MilpOutcome {
    pub limits_mw: Vec<Milliwatts>,
    pub upper_bound: f64,
}

/// Number of binaries the formulation of this instance needs (used to decide whether it is worth it).
pub(crate) fn binary_count(instance: &Instance) -> usize {
    instance
        .workloads
        .iter()
        .map(|w| w.curve.candidates().len())
        .sum()
}

/// What the objective is divided by before HiGHS sees it: the largest weight × GPUs of any workload,
/// so that the largest coefficient is about 1. NB: HiGHS's tolerances and gap are absolute, and it
/// takes costs above 1e20 for infinite; weights run from 1e-9 to 1e15.
fn objective_scale(instance: &Instance) -> f64 {
    let largest = instance
        .workloads
        .iter()
        .map(|w| w.value_per_throughput * w.curve.best_throughput())
        .fold(0.0, f64::max);
    if largest > 0.0 { largest } else { 1.0 }
}

struct WorkloadColumns {
    /// One binary per candidate, and the column index it will have in HiGHS.
    choose: Vec<(Variable, usize)>,
    /// Offsets past candidate `k` (in watts), where the curve rises linearly to candidate `k + 1`.
    offset: Vec<Option<(Variable, usize)>>,
}

/// Solves the instance exactly (within `limits`), starting from `warm_start_mw` when given (each
/// workload's limit in a feasible plan). `headroom` is what each budget has above every GPU at its floor.
pub(crate) fn solve_milp(
    instance: &Instance,
    headroom: &[Milliwatts],
    warm_start_mw: Option<&[Milliwatts]>,
    limits: MilpLimits,
) -> Result<MilpOutcome, MilpError> {
    let mut vars = ProblemVariables::new();
    let mut next_column = 0;
    let mut add = |vars: &mut ProblemVariables, definition| {
        next_column += 1;
        (vars.add(definition), next_column - 1)
    };
    let mut columns = Vec::with_capacity(instance.workloads.len());
    for workload in &instance.workloads {
        let candidates = workload.curve.candidates();
        let choose = candidates
            .iter()
            .map(|_| add(&mut vars, variable().binary()))
            .collect();
        let offset = candidates
            .iter()
            .enumerate()
            .map(|(k, c)| {
                c.rises_linearly_to_next.then(|| {
                    let length_w = (candidates[k + 1].power_mw - c.power_mw) as f64 / 1000.0;
                    add(&mut vars, variable().min(0.0).max(length_w))
                })
            })
            .collect();
        columns.push(WorkloadColumns { choose, offset });
    }

    // Level above the floor (watts) and value, per workload, as linear expressions.
    let scale = objective_scale(instance);
    let mut objective = Expression::with_capacity(next_column);
    let mut rise_w: Vec<Expression> = Vec::with_capacity(columns.len());
    for (workload, cols) in instance.workloads.iter().zip(&columns) {
        let candidates = workload.curve.candidates();
        let lo = workload.curve.lo_mw();
        let mut rise = Expression::with_capacity(cols.choose.len() * 2);
        for (k, c) in candidates.iter().enumerate() {
            let (z, _) = cols.choose[k];
            rise.add_mul((c.power_mw - lo) as f64 / 1000.0, z);
            objective.add_mul(workload.value_per_throughput * c.value / scale, z);
            if let Some((d, _)) = cols.offset[k] {
                let next = &candidates[k + 1];
                let slope_per_w =
                    (next.value - c.value) / ((next.power_mw - c.power_mw) as f64 / 1000.0);
                rise.add_mul(1.0, d);
                objective.add_mul(workload.value_per_throughput * slope_per_w / scale, d);
            }
        }
        rise_w.push(rise);
    }

    let mut model = vars.maximise(objective).using(highs);
    for (workload, cols) in instance.workloads.iter().zip(&columns) {
        let candidates = workload.curve.candidates();
        let mut one = Expression::with_capacity(cols.choose.len());
        for &(z, _) in &cols.choose {
            one.add_mul(1.0, z);
        }
        good_lp::SolverModel::add_constraint(&mut model, one.eq(1.0));
        for (k, offset) in cols.offset.iter().enumerate() {
            if let &Some((d, _)) = offset {
                let (z, _) = cols.choose[k];
                let length_w =
                    (candidates[k + 1].power_mw - candidates[k].power_mw) as f64 / 1000.0;
                good_lp::SolverModel::add_constraint(
                    &mut model,
                    (Expression::from(d) - length_w * z).leq(0.0),
                );
            }
        }
    }
    let mut per_budget: Vec<Expression> = vec![Expression::default(); instance.budgets.len()];
    let mut used = vec![false; instance.budgets.len()];
    for (workload, rise) in instance.workloads.iter().zip(&rise_w) {
        for &(b, count) in &workload.load {
            per_budget[b].add_mul(count as f64, rise.clone());
            used[b] = true;
        }
    }
    for (b, expression) in per_budget.into_iter().enumerate() {
        if used[b] {
            let room_w = headroom[b] as f64 / 1000.0;
            good_lp::SolverModel::add_constraint(&mut model, expression.leq(room_w));
        }
    }

    let mut highs_model = model
        .try_into_inner()
        .map_err(|e| MilpError::Build(e.to_string()))?;
    set_option(&mut highs_model, "threads", 1)?;
    // NB: HiGHS writes progress to stdout unless told not to, and stdout carries the plan.
    set_option(&mut highs_model, "output_flag", false)?;
    set_option(&mut highs_model, "mip_max_nodes", limits.max_nodes as i32)?;
    set_option(&mut highs_model, "time_limit", limits.time_limit_seconds)?;
    set_option(&mut highs_model, "mip_rel_gap", limits.relative_gap)?;
    if let Some(plan) = warm_start_mw {
        let start = warm_start_columns(instance, &columns, plan, next_column);
        // A start HiGHS refuses only costs speed: it then searches from scratch.
        let _ = highs_model.try_set_solution(Some(&start), None, None, None);
    }

    let solved = highs_model
        .try_solve()
        .map_err(|e| MilpError::Solve(format!("{e:?}")))?;
    let status = solved.status();
    let finished = matches!(
        status,
        HighsModelStatus::Optimal
            | HighsModelStatus::ReachedTimeLimit
            | HighsModelStatus::ReachedIterationLimit
            | HighsModelStatus::ReachedSolutionLimit
            | HighsModelStatus::ObjectiveBound
    );
    if !finished || solved.primal_solution_status() != highs::HighsSolutionStatus::Feasible {
        return Err(MilpError::NoSolution(format!("{status:?}")));
    }
    let values = solved.get_solution();
    let values = values.columns();
    let limits_mw = instance
        .workloads
        .iter()
        .zip(&columns)
        .map(|(workload, cols)| {
            let candidates = workload.curve.candidates();
            let k = (0..cols.choose.len())
                .max_by(|&a, &b| {
                    values[cols.choose[a].1]
                        .total_cmp(&values[cols.choose[b].1])
                        .then(b.cmp(&a))
                })
                .unwrap_or(0);
            let extra = cols.offset[k].map_or(0, |(_, col)| {
                (values[col] * 1000.0).floor().max(0.0) as Milliwatts
            });
            let ceiling = candidates
                .get(k + 1)
                .map_or(candidates[k].power_mw, |n| n.power_mw);
            (candidates[k].power_mw + extra).min(ceiling)
        })
        .collect();
    let bound = solved
        .double_info_value(c"mip_dual_bound")
        .unwrap_or(f64::INFINITY);
    let upper_bound = if bound.is_finite() {
        bound * scale
    } else {
        f64::INFINITY
    };
    Ok(MilpOutcome {
        limits_mw,
        upper_bound,
    })
}

fn set_option<V: highs::HighsOptionValue>(
    model: &mut highs::Model,
    name: &str,
    value: V,
) -> Result<(), MilpError> {
    model
        .try_set_option(name, value)
        .map_err(|e| MilpError::Build(format!("option {name}: {e:?}")))
}

/// HiGHS column values for a plan given by each workload's limit.
fn warm_start_columns(
    instance: &Instance,
    columns: &[WorkloadColumns],
    limits_mw: &[Milliwatts],
    column_count: usize,
) -> Vec<f64> {
    let mut start = vec![0.0; column_count];
    for ((workload, cols), &limit) in instance.workloads.iter().zip(columns).zip(limits_mw) {
        let candidates = workload.curve.candidates();
        let k = candidates
            .partition_point(|c| c.power_mw <= limit)
            .saturating_sub(1);
        start[cols.choose[k].1] = 1.0;
        if let Some((_, col)) = cols.offset[k] {
            start[col] = (limit - candidates[k].power_mw) as f64 / 1000.0;
        }
    }
    start
}

/// The generic LP a user would write for this problem: every workload's concave envelope as bounded
/// segment columns, one row per budget, solved by HiGHS's interior-point method. Its optimum is the
/// envelope relaxation's (an upper bound on the true optimum; equal to it for concave curves). Used to
/// compare the greedy against a general-purpose solver on the same instance.
pub(crate) fn solve_envelope_lp(
    instance: &Instance,
    headroom: &[Milliwatts],
    time_limit_seconds: f64,
) -> Result<f64, MilpError> {
    let mut vars = ProblemVariables::new();
    let mut objective = Expression::default();
    let mut per_budget: Vec<Expression> = vec![Expression::default(); instance.budgets.len()];
    let mut used = vec![false; instance.budgets.len()];
    let mut base = 0.0;
    let scale = objective_scale(instance);
    for workload in &instance.workloads {
        base += workload.value_per_throughput * workload.curve.candidates()[0].value;
        for segment in workload.curve.envelope() {
            let length_w = segment.length_mw as f64 / 1000.0;
            let x = vars.add(variable().min(0.0).max(length_w));
            objective.add_mul(
                workload.value_per_throughput * segment.gain / length_w / scale,
                x,
            );
            for &(b, count) in &workload.load {
                per_budget[b].add_mul(count as f64, x);
                used[b] = true;
            }
        }
    }
    if vars.is_empty() {
        return Ok(base);
    }
    let mut model = vars.maximise(objective).using(highs);
    for (b, expression) in per_budget.into_iter().enumerate() {
        if used[b] {
            good_lp::SolverModel::add_constraint(
                &mut model,
                expression.leq(headroom[b] as f64 / 1000.0),
            );
        }
    }
    let mut highs_model = model
        .try_into_inner()
        .map_err(|e| MilpError::Build(e.to_string()))?;
    set_option(&mut highs_model, "threads", 1)?;
    set_option(&mut highs_model, "output_flag", false)?;
    set_option(&mut highs_model, "solver", "ipm")?;
    set_option(&mut highs_model, "time_limit", time_limit_seconds)?;
    let solved = highs_model
        .try_solve()
        .map_err(|e| MilpError::Solve(format!("{e:?}")))?;
    match solved.status() {
        HighsModelStatus::Optimal => Ok(base + solved.objective_value() * scale),
        status => Err(MilpError::NoSolution(format!("{status:?}"))),
    }
}
