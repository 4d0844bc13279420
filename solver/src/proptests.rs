//! Property tests: random small problems, solved by every method and checked against the rules of the
//! format and against an independent brute force over a 5 W grid. No IO.

use proptest::prelude::*;

use crate::efficiency::{Policy, lower_greedily, power_lower_bound_mw};
use crate::greedy::{greedy_limits, headroom_at_floors};
use crate::instance::Instance;
use crate::model::{Budget, Gpu, Node, Problem, ProfilePoint, Workload, WorkloadKind};
use crate::plan::Plan;
use crate::{MethodChoice, MilpLimits, SolveOptions, Status, budget_ranges, milp, solve};

/// Throughput of a profile at a limit, computed independently of the solver (linear interpolation,
/// flat after the last point; for locked clocks, the named clock's point).
fn reference_throughput(profile: &[ProfilePoint], limit: f64, clock: Option<u32>) -> f64 {
    if let Some(clock) = clock {
        return profile
            .iter()
            .find(|p| p.sm_clock_mhz == Some(clock))
            .map_or(f64::NAN, |p| p.throughput);
    }
    let last = &profile[profile.len() - 1];
    if limit >= last.power_watts {
        return last.throughput;
    }
    let i = profile
        .iter()
        .position(|p| p.power_watts > limit)
        .unwrap_or(0);
    if i == 0 {
        return profile[0].throughput;
    }
    let (a, b) = (&profile[i - 1], &profile[i]);
    a.throughput
        + (limit - a.power_watts) / (b.power_watts - a.power_watts) * (b.throughput - a.throughput)
}

/// Indices of the node's budget and all its ancestors, walked by name (independently of the solver).
fn budget_chain(problem: &Problem, node: &Node) -> Vec<usize> {
    let mut chain = Vec::new();
    let mut at = Some(node.budget.as_str());
    while let Some(name) = at {
        let b = problem
            .budgets
            .iter()
            .position(|b| b.name == name)
            .expect("budget");
        chain.push(b);
        at = problem.budgets[b].parent.as_deref();
    }
    chain
}

fn best(profile: &[ProfilePoint]) -> f64 {
    profile.iter().map(|p| p.throughput).fold(0.0, f64::max)
}

/// Checks every rule a plan must satisfy and that its objective is what it claims; returns the
/// objective recomputed from the plan alone.
fn check_plan(problem: &Problem, plan: &Plan) -> f64 {
    let tolerance = 1e-6;
    let limit_of = |id: &str| {
        plan.gpus
            .iter()
            .find(|g| g.id == id)
            .expect("every GPU in the plan")
    };
    // Bounds per GPU.
    for node in &problem.nodes {
        for gpu in &node.gpus {
            let setting = limit_of(&gpu.id);
            assert!(
                setting.power_limit_watts >= gpu.min_watts - tolerance,
                "{} below min",
                gpu.id
            );
            assert!(
                setting.power_limit_watts <= gpu.max_watts + tolerance,
                "{} above max",
                gpu.id
            );
        }
    }
    // Every budget: limits plus overheads under it within its cap.
    for (b, budget) in problem.budgets.iter().enumerate() {
        let mut used = 0.0;
        for node in problem
            .nodes
            .iter()
            .filter(|node| budget_chain(problem, node).contains(&b))
        {
            used += node.overhead_watts;
            used += node
                .gpus
                .iter()
                .map(|g| limit_of(&g.id).power_limit_watts)
                .sum::<f64>();
        }
        assert!(
            used <= budget.cap_watts + tolerance,
            "budget {} over cap: {used} > {}",
            budget.name,
            budget.cap_watts
        );
    }
    // Gangs: one limit and clock, a point of the profile, the SLO floor, and the objective.
    let mut objective = 0.0;
    for (workload, setting) in problem.workloads.iter().zip(&plan.workloads) {
        assert_eq!(workload.name, setting.name);
        for id in &workload.gpus {
            let gpu = limit_of(id);
            assert_eq!(
                gpu.power_limit_watts, setting.power_limit_watts,
                "gang {} split",
                workload.name
            );
            assert_eq!(
                gpu.sm_clock_mhz, setting.sm_clock_mhz,
                "gang {} clocks split",
                workload.name
            );
        }
        let chosen = matches!(plan.method, crate::Method::Greedy | crate::Method::Milp);
        let limit = setting.power_limit_watts;
        let throughput = match (
            workload.profile[0].sm_clock_mhz.is_some(),
            setting.sm_clock_mhz,
        ) {
            (true, Some(clock)) => {
                let point = workload
                    .profile
                    .iter()
                    .find(|p| p.sm_clock_mhz == Some(clock))
                    .expect("a profile clock");
                assert!(
                    limit >= point.power_watts - tolerance,
                    "limit below the clock's power"
                );
                point.throughput
            }
            (true, None) => {
                assert!(
                    !chosen,
                    "{} chose no clock for a locked-clock profile",
                    workload.name
                );
                workload
                    .profile
                    .iter()
                    .filter(|p| p.power_watts <= limit)
                    .map(|p| p.throughput)
                    .fold(0.0, f64::max)
            }
            (false, clock) => {
                assert_eq!(clock, None, "a clock for a power-limit profile");
                if limit < workload.profile[0].power_watts - tolerance {
                    assert!(!chosen, "{} below its profile", workload.name);
                    0.0
                } else {
                    reference_throughput(&workload.profile, limit, None)
                }
            }
        };
        assert!(
            (throughput - setting.throughput).abs() <= 1e-6 * throughput.max(1.0),
            "throughput of {}",
            workload.name
        );
        if let Some(fraction) = workload.min_throughput_fraction
            && chosen
        {
            assert!(
                throughput >= fraction * best(&workload.profile) * (1.0 - 1e-9),
                "SLO of {}",
                workload.name
            );
        }
        objective +=
            workload.weight * workload.gpus.len() as f64 * throughput / best(&workload.profile);
    }
    assert!(
        (objective - plan.objective).abs() <= 1e-6 * objective.max(1.0),
        "objective {objective} vs {}",
        plan.objective
    );
    assert!(plan.upper_bound >= plan.objective - 1e-9);
    objective
}

/// Best objective over every combination of workload limits on a 5 W grid (locked clocks: every
/// point), honouring caps, bounds and SLO floors. A lower bound on the true optimum.
fn brute_force(problem: &Problem) -> Option<f64> {
    let gpu = |id: &str| {
        problem
            .nodes
            .iter()
            .flat_map(|n| n.gpus.iter())
            .find(|g| g.id == id)
            .expect("gpu")
    };
    let mut options: Vec<Vec<(f64, f64)>> = Vec::new();
    for w in &problem.workloads {
        let lo = w
            .gpus
            .iter()
            .map(|id| gpu(id).min_watts)
            .fold(0.0, f64::max);
        let hi = w
            .gpus
            .iter()
            .map(|id| gpu(id).max_watts)
            .fold(f64::INFINITY, f64::min);
        let floor = w.min_throughput_fraction.unwrap_or(0.0) * best(&w.profile);
        let mut choices = Vec::new();
        if w.profile[0].sm_clock_mhz.is_some() {
            for p in &w.profile {
                let limit = p.power_watts.max(lo);
                if limit <= hi && p.throughput >= floor {
                    choices.push((limit, p.throughput));
                }
            }
        } else {
            let start = lo.max(w.profile[0].power_watts);
            let mut levels = vec![start, hi];
            let mut grid = (start / 5.0).floor() * 5.0 + 5.0;
            while grid < hi {
                levels.push(grid);
                grid += 5.0;
            }
            // Where the curve climbs through the SLO floor, so a floor between grid points is reachable.
            for pair in w.profile.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if a.throughput < floor && b.throughput >= floor {
                    let t = (floor - a.throughput) / (b.throughput - a.throughput);
                    levels.push(
                        ((a.power_watts + t * (b.power_watts - a.power_watts)) * 1000.0).ceil()
                            / 1000.0,
                    );
                }
            }
            for limit in levels {
                let t = reference_throughput(&w.profile, limit, None);
                if limit >= start && limit <= hi && t >= floor {
                    choices.push((limit, t));
                }
            }
        }
        if choices.is_empty() {
            return None;
        }
        options.push(choices);
    }
    let mut limits: Vec<f64> = problem
        .nodes
        .iter()
        .flat_map(|n| n.gpus.iter().map(|g| g.min_watts))
        .collect();
    let index: Vec<(usize, usize)> = problem
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(n, node)| (0..node.gpus.len()).map(move |g| (n, g)))
        .collect();
    let position = |id: &str| {
        index
            .iter()
            .position(|&(n, g)| problem.nodes[n].gpus[g].id == id)
            .expect("gpu")
    };
    let members: Vec<Vec<usize>> = problem
        .workloads
        .iter()
        .map(|w| w.gpus.iter().map(|id| position(id)).collect())
        .collect();
    let chains: Vec<Vec<usize>> = problem
        .nodes
        .iter()
        .map(|node| budget_chain(problem, node))
        .collect();
    let mut best_objective: Option<f64> = None;
    let mut choice = vec![0usize; options.len()];
    loop {
        for (w, &c) in choice.iter().enumerate() {
            for &g in &members[w] {
                limits[g] = options[w][c].0;
            }
        }
        let mut used = vec![0.0; problem.budgets.len()];
        for (k, &(n, _)) in index.iter().enumerate() {
            for &b in &chains[n] {
                used[b] += limits[k];
            }
        }
        for (n, node) in problem.nodes.iter().enumerate() {
            for &b in &chains[n] {
                used[b] += node.overhead_watts;
            }
        }
        if problem
            .budgets
            .iter()
            .zip(&used)
            .all(|(b, &u)| u <= b.cap_watts + 1e-9)
        {
            let objective: f64 = choice
                .iter()
                .enumerate()
                .map(|(w, &c)| {
                    let wl = &problem.workloads[w];
                    wl.weight * wl.gpus.len() as f64 * options[w][c].1 / best(&wl.profile)
                })
                .sum();
            best_objective = Some(best_objective.map_or(objective, |b: f64| b.max(objective)));
        }
        // Next combination (odometer).
        let mut w = 0;
        loop {
            if w == choice.len() {
                return best_objective;
            }
            choice[w] += 1;
            if choice[w] < options[w].len() {
                break;
            }
            choice[w] = 0;
            w += 1;
        }
    }
}

fn profile_strategy() -> impl Strategy<Value = (bool, Vec<ProfilePoint>)> {
    let continuous = (
        prop::collection::vec((1u32..=6, 0.0f64..1.0), 2..6),
        0u32..=10,
    )
        .prop_map(|(steps, start)| {
            let mut power = 100.0 + 5.0 * start as f64;
            let mut throughput = 10.0;
            let mut points = Vec::new();
            for (step, noise) in steps {
                // Mostly rising, sometimes dipping: the shape of measured curves.
                throughput = (throughput + 8.0 * noise - 2.0).max(1.0);
                points.push(ProfilePoint {
                    power_watts: power,
                    throughput,
                    sm_clock_mhz: None,
                });
                power += 10.0 * step as f64;
            }
            (false, points)
        });
    let clocked = prop::collection::vec((1u32..=6, 0.0f64..1.0), 2..6).prop_map(|steps| {
        let mut power = 110.0;
        let mut clock = 900;
        let mut throughput = 10.0;
        let mut points = Vec::new();
        for (step, noise) in steps {
            throughput = (throughput + 8.0 * noise - 1.0).max(1.0);
            points.push(ProfilePoint {
                power_watts: power,
                throughput,
                sm_clock_mhz: Some(clock),
            });
            power += 15.0 * step as f64;
            clock += 150;
        }
        (true, points)
    });
    prop_oneof![3 => continuous, 1 => clocked]
}

/// A random problem: a budget tree of 1–4 levels, 1–4 nodes of 1–3 GPUs, up to 3 workloads (gangs may
/// cross budgets), caps somewhere between the floors and the ceilings.
fn problem_strategy() -> impl Strategy<Value = Problem> {
    (
        prop::collection::vec(0usize..4, 0..4),
        prop::collection::vec((0usize..4, 0u32..=20, 1usize..=3, 0u32..=4), 1..=4),
        prop::collection::vec(
            (
                profile_strategy(),
                1u32..=3,
                prop::option::of(0.3f64..0.9),
                0usize..100,
            ),
            1..=3,
        ),
        prop::collection::vec(0.0f64..1.2, 5),
    )
        .prop_map(|(parents, nodes, workloads, cap_levels)| {
            let mut budgets = vec![Budget {
                name: "b0".into(),
                cap_watts: 1e9,
                parent: None,
                max_slowdown: None,
            }];
            for (i, p) in parents.iter().enumerate() {
                budgets.push(Budget {
                    name: format!("b{}", i + 1),
                    cap_watts: 1e9,
                    parent: Some(format!("b{}", p % (i + 1))),
                    max_slowdown: None,
                });
            }
            let mut gpu_ids = Vec::new();
            let nodes: Vec<Node> = nodes
                .iter()
                .enumerate()
                .map(|(n, &(budget, overhead, gpus, extra))| Node {
                    name: format!("n{n}"),
                    budget: format!("b{}", budget % budgets.len()),
                    overhead_watts: 5.0 * overhead as f64,
                    gpus: (0..gpus)
                        .map(|g| {
                            gpu_ids.push(format!("n{n}g{g}"));
                            Gpu {
                                id: format!("n{n}g{g}"),
                                min_watts: 100.0,
                                max_watts: 200.0 + 25.0 * extra as f64,
                            }
                        })
                        .collect(),
                })
                .collect();
            let mut free: Vec<String> = gpu_ids;
            let mut list = Vec::new();
            for (w, ((_, profile), size, slo, offset)) in workloads.into_iter().enumerate() {
                if free.is_empty() {
                    break;
                }
                let start = offset % free.len();
                let take = (size as usize).min(free.len() - start).max(1);
                let gpus: Vec<String> = free.drain(start..start + take).collect();
                list.push(Workload {
                    name: format!("w{w}"),
                    kind: if w % 2 == 0 {
                        WorkloadKind::Training
                    } else {
                        WorkloadKind::Inference
                    },
                    weight: 1.0 + w as f64,
                    gpus,
                    min_throughput_fraction: slo,
                    profile,
                });
            }
            let mut problem = Problem {
                budgets,
                nodes,
                workloads: list,
                objective: Default::default(),
            };
            // Profiles that start above every GPU's max or SLOs out of reach are input errors,
            // tested elsewhere; here keep only what is valid, so the caps below can be set.
            let skeleton = Problem {
                workloads: Vec::new(),
                ..problem.clone()
            };
            problem.workloads.retain(|w| {
                let probe = Problem {
                    workloads: vec![w.clone()],
                    ..skeleton.clone()
                };
                budget_ranges(&probe).is_ok()
            });
            if let Ok(ranges) = budget_ranges(&problem) {
                for (i, (budget, range)) in problem.budgets.iter_mut().zip(ranges).enumerate() {
                    let level = cap_levels[i % cap_levels.len()];
                    budget.cap_watts = (range.floor_watts
                        + level * (range.ceiling_watts - range.floor_watts))
                        .ceil();
                }
            }
            problem
        })
}

/// A random problem with `maxSlowdown` on some of its budgets (0 among the values, and 0.3, where
/// most curves are steep).
fn policy_problem_strategy() -> impl Strategy<Value = Problem> {
    (
        problem_strategy(),
        prop::collection::vec(
            prop::option::of(prop_oneof![Just(0.0), Just(0.02), Just(0.1), Just(0.3)]),
            5,
        ),
    )
        .prop_map(|(mut problem, slowdowns)| {
            for (budget, slowdown) in problem.budgets.iter_mut().zip(slowdowns) {
                budget.max_slowdown = slowdown;
            }
            problem
        })
        .prop_filter("some budget sets a policy", |p| {
            p.budgets.iter().any(|b| b.max_slowdown.is_some())
        })
}

/// Weighted normalised throughput of the GPUs under budget `b`, and the sum of their limits, from the
/// plan alone.
fn budget_throughput_and_watts(problem: &Problem, plan: &Plan, b: usize) -> (f64, f64) {
    let under: Vec<&str> = problem
        .nodes
        .iter()
        .filter(|node| budget_chain(problem, node).contains(&b))
        .flat_map(|node| node.gpus.iter().map(|g| g.id.as_str()))
        .collect();
    let watts = plan
        .gpus
        .iter()
        .filter(|g| under.contains(&g.id.as_str()))
        .map(|g| g.power_limit_watts)
        .sum();
    let throughput = problem
        .workloads
        .iter()
        .zip(&plan.workloads)
        .map(|(w, setting)| {
            let here = w
                .gpus
                .iter()
                .filter(|id| under.contains(&id.as_str()))
                .count();
            w.weight * here as f64 * setting.throughput / best(&w.profile)
        })
        .sum();
    (throughput, watts)
}

fn total_gpu_watts(plan: &Plan) -> f64 {
    plan.gpus.iter().map(|g| g.power_limit_watts).sum()
}

fn options(method: MethodChoice) -> SolveOptions {
    SolveOptions {
        method,
        ..SolveOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_method_keeps_every_budget_gang_and_bound(problem in problem_strategy()) {
        for method in MethodChoice::ALL {
            let plan = solve(&problem, &options(method)).expect("valid problems solve");
            check_plan(&problem, &plan);
        }
    }

    #[test]
    fn auto_is_within_half_a_percent_of_brute_force_and_milp_matches_it(problem in problem_strategy()) {
        let auto = solve(&problem, &options(MethodChoice::Auto)).expect("solves");
        prop_assume!(auto.status != Status::Infeasible);
        let grid = brute_force(&problem).expect("a feasible problem has a grid plan");
        prop_assert!(auto.upper_bound >= grid - 1e-6 * grid.max(1.0), "bound {} below a feasible plan {grid}", auto.upper_bound);
        prop_assert!(auto.objective >= grid * (1.0 - 0.005) - 1e-9, "auto {} vs grid {grid}", auto.objective);
        let milp = solve(&problem, &options(MethodChoice::Milp)).expect("solves");
        // HiGHS stops at a relative gap of 1e-6 on its own objective, and its levels are rounded down
        // to whole milliwatts, so "exact" means within 1e-5 here (seen: 2.2e-6 short, reported as
        // feasible with the bound at the grid's value).
        prop_assert!(milp.objective >= grid - 1e-5 * grid.max(1.0), "milp {} ({:?}, bound {}) vs grid {grid}", milp.objective, milp.status, milp.upper_bound);
    }

    /// Powers of two scale exactly, so the plan must not move at all: the unit of throughput and
    /// the scale of the weights are the user's, and the ends of their ranges (1e-9, 1e15) must plan
    /// like the middle, with a finite objective and bound.
    #[test]
    fn throughputs_and_weights_at_the_ends_of_their_range_plan_like_the_middle(
        problem in problem_strategy(),
        throughput_exponent in prop_oneof![Just(-29), Just(0), Just(40)],
        weight_exponent in prop_oneof![Just(-29), Just(0), Just(40)],
    ) {
        let (throughput_scale, weight_scale) =
            (2f64.powi(throughput_exponent), 2f64.powi(weight_exponent));
        let mut scaled = problem.clone();
        for workload in &mut scaled.workloads {
            workload.weight *= weight_scale;
            for point in &mut workload.profile {
                point.throughput *= throughput_scale;
            }
        }
        for method in [MethodChoice::Auto, MethodChoice::Greedy, MethodChoice::Milp, MethodChoice::Uniform] {
            let plan = solve(&problem, &options(method)).expect("solves");
            let at_scale = solve(&scaled, &options(method)).expect("the scaled problem is valid");
            prop_assert!(at_scale.objective.is_finite() && at_scale.upper_bound.is_finite());
            prop_assert_eq!(at_scale.status, plan.status, "{}", method);
            prop_assert_eq!(at_scale.method, plan.method, "{}", method);
            prop_assert_eq!(&at_scale.gpus, &plan.gpus, "{}", method);
            prop_assert_eq!(at_scale.objective, plan.objective * weight_scale, "{}", method);
            prop_assert_eq!(at_scale.upper_bound, plan.upper_bound * weight_scale, "{}", method);
        }
    }

    /// (a) every cap, gang and bound still holds, (b) every policy budget keeps `(1 − s)` of what
    /// the max-throughput plan gives it, (c) no plan sets more GPU power than that plan, and the
    /// report says what the plan does.
    #[test]
    fn a_policy_plan_fits_keeps_its_throughput_and_never_adds_power(problem in policy_problem_strategy()) {
        let plain_problem = Problem {
            budgets: problem.budgets.iter().map(|b| Budget { max_slowdown: None, ..b.clone() }).collect(),
            ..problem.clone()
        };
        for method in [MethodChoice::Auto, MethodChoice::Greedy, MethodChoice::Milp] {
            let plain = solve(&plain_problem, &options(method)).expect("solves");
            let plan = solve(&problem, &options(method)).expect("solves");
            check_plan(&problem, &plan);
            if plain.status == Status::Infeasible {
                prop_assert_eq!(&plan, &plain);
                continue;
            }
            let efficiency = plan.efficiency.as_ref().expect("a policy is reported");
            prop_assert_eq!(efficiency.reference_objective, plain.objective, "{}", method);
            prop_assert!((efficiency.reference_gpu_watts - total_gpu_watts(&plain)).abs() <= 1e-6);
            prop_assert!((efficiency.gpu_watts - total_gpu_watts(&plan)).abs() <= 1e-6);
            prop_assert!(efficiency.gpu_watts <= efficiency.reference_gpu_watts + 1e-9, "{}: {:?}", method, efficiency);
            prop_assert!(efficiency.gpu_watts_lower_bound <= efficiency.gpu_watts);
            prop_assert_eq!(plan.upper_bound, plain.upper_bound);
            prop_assert_eq!(plan.status, plain.status);
            let mut reported = efficiency.budgets.iter();
            for (b, budget) in problem.budgets.iter().enumerate() {
                let Some(slowdown) = budget.max_slowdown else { continue };
                let entry = reported.next().expect("one entry per policy budget, in input order");
                prop_assert_eq!(&entry.name, &budget.name);
                let (throughput, watts) = budget_throughput_and_watts(&problem, &plan, b);
                let (reference, reference_watts) = budget_throughput_and_watts(&problem, &plain, b);
                let tolerance = 1e-9 * reference.max(1e-12);
                prop_assert!(throughput >= (1.0 - slowdown) * reference - 2.0 * tolerance,
                    "{} {}: {} < (1 - {}) x {}", method, budget.name, throughput, slowdown, reference);
                prop_assert!((entry.throughput - throughput).abs() <= 1e-6 * throughput.max(1.0));
                prop_assert!((entry.reference_throughput - reference).abs() <= 1e-6 * reference.max(1.0));
                prop_assert!(entry.reference_upper_bound >= reference - 1e-9 * reference.max(1.0));
                prop_assert!((entry.saved_watts - (reference_watts - watts)).abs() <= 1e-6);
            }
            // Only workloads under some policy budget move.
            for (w, (now, before)) in problem.workloads.iter().zip(plan.workloads.iter().zip(&plain.workloads)) {
                let governed = w.gpus.iter().any(|id| {
                    let node = problem.nodes.iter().find(|n| n.gpus.iter().any(|g| &g.id == id)).expect("node");
                    budget_chain(&problem, node).iter().any(|&b| problem.budgets[b].max_slowdown.is_some())
                });
                if !governed {
                    prop_assert_eq!(now, before);
                }
            }
        }
    }

    /// (b) against the optimum itself: the whole fleet keeps `(1 − s)` of the best plan on a 5 W
    /// grid (auto within its half-percent target, the MILP within its rounding).
    #[test]
    fn a_root_policy_keeps_its_share_of_the_optimum(problem in problem_strategy(), slowdown in prop_oneof![Just(0.02), Just(0.2)]) {
        let mut problem = problem;
        problem.budgets[0].max_slowdown = Some(slowdown);
        let auto = solve(&problem, &options(MethodChoice::Auto)).expect("solves");
        prop_assume!(auto.status != Status::Infeasible);
        let grid = brute_force(&problem).expect("a feasible problem has a grid plan");
        let roots: Vec<usize> = (0..problem.budgets.len()).filter(|&b| problem.budgets[b].parent.is_none()).collect();
        prop_assume!(roots == [0]);
        let floor = (1.0 - slowdown) * grid;
        prop_assert!(auto.objective >= floor * (1.0 - 0.005) - 1e-9, "auto {} vs {floor}", auto.objective);
        let exact = solve(&problem, &options(MethodChoice::Milp)).expect("solves");
        prop_assert!(exact.objective >= (1.0 - slowdown) * (grid - 1e-5 * grid.max(1.0)) * (1.0 - 1e-9),
            "milp {} vs {floor}", exact.objective);
    }

    /// (d) a slowdown of 0 everywhere is the plan without a policy, with a report that saves nothing.
    #[test]
    fn a_zero_slowdown_everywhere_is_the_plan_without_a_policy(problem in problem_strategy(), on in prop::collection::vec(any::<bool>(), 5)) {
        let mut zero = problem.clone();
        for (budget, &on) in zero.budgets.iter_mut().zip(&on) {
            budget.max_slowdown = on.then_some(0.0);
        }
        for method in MethodChoice::ALL {
            let plain = solve(&problem, &options(method)).expect("solves");
            let plan = solve(&zero, &options(method)).expect("solves");
            prop_assert_eq!(&Plan { efficiency: None, ..plan.clone() }, &plain, "{}", method);
            if let Some(efficiency) = plan.efficiency {
                prop_assert_eq!(efficiency.saved_watts, 0.0);
            }
        }
    }

    /// The least-power greedy against the least-power MILP from the same reference: the MILP (warm
    /// started from the greedy) never needs more, the Lagrangian bound is never above it, and where
    /// curves are concave and every gang sits in one innermost budget the greedy is exact and its
    /// bound tight.
    #[test]
    fn the_least_power_greedy_matches_the_milp_where_it_claims_exactness(problem in policy_problem_strategy()) {
        let instance = Instance::new(&problem).expect("valid");
        let headroom = headroom_at_floors(&instance);
        prop_assume!(headroom.iter().all(|&h| h >= 0));
        let reference = greedy_limits(&instance, &headroom);
        let policy = Policy::new(&instance, &reference).expect("a policy");
        prop_assume!(policy.allows_slowdown());
        let lowered = lower_greedily(&instance, &policy);
        prop_assert!(policy.is_kept_by(&instance, &lowered.levels));
        prop_assert!(crate::plan::fits(&instance, &lowered.levels));
        let power = |levels: &[i64]| -> f64 {
            instance.gpus.iter().map(|g| g.workload.map_or(g.min_mw, |w| levels[w]) as f64).sum()
        };
        let governed = policy.governed();
        prop_assume!(!governed.is_empty());
        let start: Vec<i64> = governed.iter().map(|&w| lowered.levels[w]).collect();
        let outcome = milp::solve_least_power_milp(
            &instance, &governed, &policy.room_mw(&instance), &policy.milp_rows(&instance),
            Some(&start), MilpLimits { max_nodes: 100_000, time_limit_seconds: 60.0, relative_gap: 1e-9 },
        ).expect("the reference is a feasible start");
        let mut exact = policy.reference().to_vec();
        for (&w, &limit) in governed.iter().zip(&outcome.limits_mw) {
            exact[w] = instance.workloads[w].curve.realise(limit).limit_mw;
        }
        // HiGHS's offsets are rounded up to the milliwatt: up to 1 mW per GPU.
        let rounding = instance.gpus.len() as f64 + 1e-6 * power(&exact);
        let (greedy_mw, milp_mw) = (power(&lowered.levels), power(&exact));
        prop_assert!(milp_mw <= greedy_mw + rounding, "milp {milp_mw} > greedy {greedy_mw}");
        let bound = power_lower_bound_mw(&instance, &policy, &lowered.multipliers);
        let milp_bound = policy.floor_power_mw(&instance) as f64 + outcome.lower_bound_above_floors_mw;
        prop_assert!(bound <= milp_mw + rounding, "bound {bound} above the milp's {milp_mw}");
        if milp_bound.is_finite() {
            prop_assert!(milp_bound <= milp_mw + rounding, "the milp's bound {milp_bound} above its plan {milp_mw}");
        }
        let exact_case = instance.workloads.iter().all(|w| {
            w.groups.len() == 1 && w.curve.envelope().iter().all(|s| s.exact)
        });
        if exact_case {
            prop_assert!(greedy_mw <= milp_mw + rounding, "greedy {greedy_mw} > milp {milp_mw} on concave curves");
            // The greedy stops on whole milliwatts, up to 1 mW per GPU above the continuous optimum.
            prop_assert!(bound >= greedy_mw - rounding, "bound {bound} below greedy {greedy_mw} on concave curves");
        }
    }

    #[test]
    fn the_same_input_gives_the_same_plan(problem in problem_strategy()) {
        let first = solve(&problem, &options(MethodChoice::Auto)).expect("solves");
        let again = solve(&problem.clone(), &options(MethodChoice::Auto)).expect("solves");
        prop_assert_eq!(first, again);
    }
}
