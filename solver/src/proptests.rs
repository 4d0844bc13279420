//! Property tests: random small problems, solved by every method and checked against the rules of the
//! format and against an independent brute force over a 5 W grid. No IO.

use proptest::prelude::*;

use crate::model::{Budget, Gpu, Node, Problem, ProfilePoint, Workload, WorkloadKind};
use crate::plan::Plan;
use crate::{MethodChoice, SolveOptions, Status, budget_ranges, solve};

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
            }];
            for (i, p) in parents.iter().enumerate() {
                budgets.push(Budget {
                    name: format!("b{}", i + 1),
                    cap_watts: 1e9,
                    parent: Some(format!("b{}", p % (i + 1))),
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

    #[test]
    fn the_same_input_gives_the_same_plan(problem in problem_strategy()) {
        let first = solve(&problem, &options(MethodChoice::Auto)).expect("solves");
        let again = solve(&problem.clone(), &options(MethodChoice::Auto)).expect("solves");
        prop_assert_eq!(first, again);
    }
}
