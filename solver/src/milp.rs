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
use crate::instance::{Instance, WorkloadEntry};

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

/// The columns of the workloads in `chosen`, in that order, and how many columns there are.
fn add_columns(
    vars: &mut ProblemVariables,
    instance: &Instance,
    chosen: &[usize],
) -> (Vec<WorkloadColumns>, usize) {
    let mut next_column = 0;
    let mut add = |vars: &mut ProblemVariables, definition| {
        next_column += 1;
        (vars.add(definition), next_column - 1)
    };
    let mut columns = Vec::with_capacity(chosen.len());
    for &w in chosen {
        let candidates = instance.workloads[w].curve.candidates();
        let choose = candidates
            .iter()
            .map(|_| add(vars, variable().binary()))
            .collect();
        let offset = candidates
            .iter()
            .enumerate()
            .map(|(k, c)| {
                c.rises_linearly_to_next.then(|| {
                    let length_w = (candidates[k + 1].power_mw - c.power_mw) as f64 / 1000.0;
                    add(vars, variable().min(0.0).max(length_w))
                })
            })
            .collect();
        columns.push(WorkloadColumns { choose, offset });
    }
    (columns, next_column)
}

/// A workload's level above its floor, in watts, as a linear expression of its columns.
fn rise_watts(workload: &WorkloadEntry, cols: &WorkloadColumns) -> Expression {
    let candidates = workload.curve.candidates();
    let lo = workload.curve.lo_mw();
    let mut rise = Expression::with_capacity(cols.choose.len() * 2);
    for (k, c) in candidates.iter().enumerate() {
        rise.add_mul((c.power_mw - lo) as f64 / 1000.0, cols.choose[k].0);
        if let Some((d, _)) = cols.offset[k] {
            rise.add_mul(1.0, d);
        }
    }
    rise
}

/// [`rise_watts`] at the column values `values`.
fn rise_of(workload: &WorkloadEntry, cols: &WorkloadColumns, values: &[f64]) -> f64 {
    let candidates = workload.curve.candidates();
    let lo = workload.curve.lo_mw();
    candidates
        .iter()
        .enumerate()
        .map(|(k, c)| {
            (c.power_mw - lo) as f64 / 1000.0 * values[cols.choose[k].1]
                + cols.offset[k].map_or(0.0, |(_, col)| values[col])
        })
        .sum()
}

/// A workload's throughput at the column values `values`, as [`add_throughput`] writes it.
fn throughput_of(workload: &WorkloadEntry, cols: &WorkloadColumns, values: &[f64]) -> f64 {
    let candidates = workload.curve.candidates();
    candidates
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let offset = cols.offset[k].map_or(0.0, |(_, col)| {
                let next = &candidates[k + 1];
                values[col] * (next.value - c.value)
                    / ((next.power_mw - c.power_mw) as f64 / 1000.0)
            });
            c.value * values[cols.choose[k].1] + offset
        })
        .sum()
}

/// Adds `weight × throughput / divisor` of a workload to `sum`, as a linear expression of its columns.
fn add_throughput(
    sum: &mut Expression,
    workload: &WorkloadEntry,
    cols: &WorkloadColumns,
    weight: f64,
    divisor: f64,
) {
    let candidates = workload.curve.candidates();
    for (k, c) in candidates.iter().enumerate() {
        sum.add_mul(weight * c.value / divisor, cols.choose[k].0);
        if let Some((d, _)) = cols.offset[k] {
            let next = &candidates[k + 1];
            let slope_per_w =
                (next.value - c.value) / ((next.power_mw - c.power_mw) as f64 / 1000.0);
            sum.add_mul(weight * slope_per_w / divisor, d);
        }
    }
}

/// Exactly one level per workload, offsets only past the chosen level, and every budget's room:
/// what the max-throughput and the least-power programs share.
fn add_structure<M: good_lp::SolverModel>(
    model: &mut M,
    instance: &Instance,
    chosen: &[usize],
    columns: &[WorkloadColumns],
    rise_w: &[Expression],
    room_mw: &[Milliwatts],
) {
    for (&w, cols) in chosen.iter().zip(columns) {
        let candidates = instance.workloads[w].curve.candidates();
        let mut one = Expression::with_capacity(cols.choose.len());
        for &(z, _) in &cols.choose {
            one.add_mul(1.0, z);
        }
        model.add_constraint(one.eq(1.0));
        for (k, offset) in cols.offset.iter().enumerate() {
            if let &Some((d, _)) = offset {
                let (z, _) = cols.choose[k];
                let length_w =
                    (candidates[k + 1].power_mw - candidates[k].power_mw) as f64 / 1000.0;
                model.add_constraint((Expression::from(d) - length_w * z).leq(0.0));
            }
        }
    }
    let mut per_budget: Vec<Expression> = vec![Expression::default(); instance.budgets.len()];
    let mut used = vec![false; instance.budgets.len()];
    for (&w, rise) in chosen.iter().zip(rise_w) {
        for &(b, count) in &instance.workloads[w].load {
            per_budget[b].add_mul(count as f64, rise.clone());
            used[b] = true;
        }
    }
    for (b, expression) in per_budget.into_iter().enumerate() {
        if used[b] {
            let room_w = room_mw[b] as f64 / 1000.0;
            model.add_constraint(expression.leq(room_w));
        }
    }
}

/// Quiet, single-threaded HiGHS with the work limits, started from `start` when given.
fn configure(
    highs_model: &mut highs::Model,
    limits: MilpLimits,
    start: Option<Vec<f64>>,
) -> Result<(), MilpError> {
    set_option(highs_model, "threads", 1)?;
    // NB: HiGHS writes progress to stdout unless told not to, and stdout carries the plan.
    set_option(highs_model, "output_flag", false)?;
    set_option(highs_model, "mip_max_nodes", limits.max_nodes as i32)?;
    set_option(highs_model, "time_limit", limits.time_limit_seconds)?;
    set_option(highs_model, "mip_rel_gap", limits.relative_gap)?;
    if let Some(start) = start {
        // A start HiGHS refuses only costs speed: it then searches from scratch.
        let _ = highs_model.try_set_solution(Some(&start), None, None, None);
    }
    Ok(())
}

/// Solves, and reads each chosen workload's level (offsets rounded down to whole milliwatts, or up
/// when `round_up`) and HiGHS's dual bound on its own objective: NaN when HiGHS's objective is not
/// `objective_of` its own solution (the column values).
fn solve_and_read(
    highs_model: highs::Model,
    instance: &Instance,
    chosen: &[usize],
    columns: &[WorkloadColumns],
    round_up: bool,
    objective_of: impl Fn(&[f64]) -> f64,
) -> Result<(Vec<Milliwatts>, f64), MilpError> {
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
    let levels = chosen
        .iter()
        .zip(columns)
        .map(|(&w, cols)| {
            let candidates = instance.workloads[w].curve.candidates();
            let k = (0..cols.choose.len())
                .max_by(|&a, &b| {
                    values[cols.choose[a].1]
                        .total_cmp(&values[cols.choose[b].1])
                        .then(b.cmp(&a))
                })
                .unwrap_or(0);
            let extra = cols.offset[k].map_or(0, |(_, col)| {
                let mw = values[col] * 1000.0;
                let mw = if round_up { mw.ceil() } else { mw.floor() };
                mw.max(0.0) as Milliwatts
            });
            let ceiling = candidates
                .get(k + 1)
                .map_or(candidates[k].power_mw, |n| n.power_mw);
            (candidates[k].power_mw + extra).min(ceiling)
        })
        .collect();
    let bound = solved
        .double_info_value(c"mip_dual_bound")
        .unwrap_or(f64::NAN);
    // NB: seen with a warm start HiGHS accepted as optimal: it reported an objective (and a dual
    // bound) without the cost of a column its presolve had fixed. A bound off by that is no proof.
    let own = objective_of(values);
    let reported = solved.objective_value();
    let consistent = (own - reported).abs() <= 1e-6 * own.abs().max(1.0);
    Ok((levels, if consistent { bound } else { f64::NAN }))
}

/// Solves the instance exactly (within `limits`), starting from `warm_start_mw` when given (each
/// workload's limit in a feasible plan). `headroom` is what each budget has above every GPU at its floor.
pub(crate) fn solve_milp(
    instance: &Instance,
    headroom: &[Milliwatts],
    warm_start_mw: Option<&[Milliwatts]>,
    limits: MilpLimits,
) -> Result<MilpOutcome, MilpError> {
    let everyone: Vec<usize> = (0..instance.workloads.len()).collect();
    let mut vars = ProblemVariables::new();
    let (columns, column_count) = add_columns(&mut vars, instance, &everyone);

    let scale = objective_scale(instance);
    let mut objective = Expression::with_capacity(column_count);
    let mut rise_w: Vec<Expression> = Vec::with_capacity(columns.len());
    for (workload, cols) in instance.workloads.iter().zip(&columns) {
        add_throughput(
            &mut objective,
            workload,
            cols,
            workload.value_per_throughput,
            scale,
        );
        rise_w.push(rise_watts(workload, cols));
    }

    let mut model = vars.maximise(objective).using(highs);
    add_structure(&mut model, instance, &everyone, &columns, &rise_w, headroom);
    let mut highs_model = model
        .try_into_inner()
        .map_err(|e| MilpError::Build(e.to_string()))?;
    let start = warm_start_mw
        .map(|plan| warm_start_columns(instance, &everyone, &columns, plan, column_count));
    configure(&mut highs_model, limits, start)?;
    let objective_of = |values: &[f64]| {
        instance
            .workloads
            .iter()
            .zip(&columns)
            .map(|(workload, cols)| {
                throughput_of(workload, cols, values) * workload.value_per_throughput / scale
            })
            .sum()
    };
    let (limits_mw, bound) = solve_and_read(
        highs_model,
        instance,
        &everyone,
        &columns,
        false,
        objective_of,
    )?;
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

/// One policy row of the least-power program: `Σ weight × throughput / divisor >= at_least` over
/// the listed workloads.
pub(crate) struct ThroughputRow {
    pub terms: Vec<(usize, f64)>,
    /// Makes the row's right-hand side about 1: HiGHS's feasibility tolerance is absolute.
    pub divisor: f64,
    pub at_least: f64,
}

/// What HiGHS returned for the least-power program: the chosen workloads' limits (offsets rounded up,
/// so that no row loses throughput to rounding) and a lower bound on their power above their floors.
pub(crate) struct LeastPowerOutcome {
    pub limits_mw: Vec<Milliwatts>,
    pub lower_bound_above_floors_mw: f64,
}

/// The second objective: the least power of the workloads in `chosen` (each GPU's limit counted)
/// subject to every cap (`room_mw`: what each budget has with them at their floors) and every row of
/// `rows`, started from `warm_start_mw` (a feasible limit per chosen workload) when given.
pub(crate) fn solve_least_power_milp(
    instance: &Instance,
    chosen: &[usize],
    room_mw: &[Milliwatts],
    rows: &[ThroughputRow],
    warm_start_mw: Option<&[Milliwatts]>,
    limits: MilpLimits,
) -> Result<LeastPowerOutcome, MilpError> {
    let mut vars = ProblemVariables::new();
    let (columns, column_count) = add_columns(&mut vars, instance, chosen);
    let mut position = vec![usize::MAX; instance.workloads.len()];
    for (i, &w) in chosen.iter().enumerate() {
        position[w] = i;
    }
    let rise_w: Vec<Expression> = chosen
        .iter()
        .zip(&columns)
        .map(|(&w, cols)| rise_watts(&instance.workloads[w], cols))
        .collect();
    let mut power = Expression::with_capacity(column_count);
    for (&w, rise) in chosen.iter().zip(&rise_w) {
        power.add_mul(instance.workloads[w].gpu_count() as f64, rise.clone());
    }
    let mut model = vars.minimise(power).using(highs);
    add_structure(&mut model, instance, chosen, &columns, &rise_w, room_mw);
    for row in rows {
        let mut sum = Expression::default();
        for &(w, weight) in &row.terms {
            let i = position[w];
            add_throughput(
                &mut sum,
                &instance.workloads[w],
                &columns[i],
                weight,
                row.divisor,
            );
        }
        good_lp::SolverModel::add_constraint(&mut model, sum.geq(row.at_least));
    }
    let mut highs_model = model
        .try_into_inner()
        .map_err(|e| MilpError::Build(e.to_string()))?;
    let start = warm_start_mw.map(|plan| {
        let mut full = vec![0; instance.workloads.len()];
        for (&w, &limit) in chosen.iter().zip(plan) {
            full[w] = limit;
        }
        warm_start_columns(instance, chosen, &columns, &full, column_count)
    });
    configure(&mut highs_model, limits, start)?;
    let objective_of = |values: &[f64]| {
        chosen
            .iter()
            .zip(&columns)
            .map(|(&w, cols)| {
                let workload = &instance.workloads[w];
                workload.gpu_count() as f64 * rise_of(workload, cols, values)
            })
            .sum()
    };
    let (limits_mw, bound) =
        solve_and_read(highs_model, instance, chosen, &columns, true, objective_of)?;
    Ok(LeastPowerOutcome {
        limits_mw,
        // No finite bound from HiGHS proves nothing beyond the floors.
        lower_bound_above_floors_mw: if bound.is_finite() {
            (bound * 1000.0).max(0.0)
        } else {
            0.0
        },
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

/// HiGHS column values for a plan given by each workload's limit (`limits_mw`, indexed by workload),
/// for the workloads in `chosen`.
fn warm_start_columns(
    instance: &Instance,
    chosen: &[usize],
    columns: &[WorkloadColumns],
    limits_mw: &[Milliwatts],
    column_count: usize,
) -> Vec<f64> {
    let mut start = vec![0.0; column_count];
    for (&w, cols) in chosen.iter().zip(columns) {
        let limit = limits_mw[w];
        let candidates = instance.workloads[w].curve.candidates();
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
