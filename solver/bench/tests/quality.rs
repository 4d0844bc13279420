//! Solver quality on fleets built from curves: the project's profile files, and published measurements
//! in `../shared/data/profiles` (the quality claim of `auto`, ignored without them).

use std::path::{Path, PathBuf};

use kilowatt_solver::{MethodChoice, MilpLimits, SolveOptions, Status, solve};
use kilowatt_solver_bench::fleet::{FleetSpec, generate_fleet};
use kilowatt_solver_bench::profiles::{load_example_profiles, load_measured_curves};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn example_profiles_load_and_cover_both_kinds_and_clocks() {
    let curves = load_example_profiles(&repo().join("examples/profiles")).expect("examples load");
    assert!(curves.len() >= 4);
    assert!(curves.iter().any(|c| c.locked_clock()));
    assert!(
        curves
            .iter()
            .any(|c| c.kind == kilowatt_solver::model::WorkloadKind::Inference)
    );
}

fn shared_profiles() -> PathBuf {
    let dir = std::env::var_os("KILOWATT_PROFILES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data/profiles"));
    assert!(
        dir.is_dir(),
        "measured curves not found at {}: put shared/ beside the checkout or set KILOWATT_PROFILES_DIR",
        dir.display()
    );
    dir
}

/// The quality claim of `auto`: on small fleets built from published measurements (power-limit and
/// SM-clock curves, single- and multi-GPU jobs, gangs inside and across racks, a facility → row → rack
/// tree, caps at 30/60/85 % of the range), it reaches ≥ 99.5 % of the optimum proven by HiGHS.
#[test]
#[ignore = "needs the measured curves in ../shared/data/profiles (or KILOWATT_PROFILES_DIR)"]
fn auto_reaches_99_5_percent_of_the_milp_optimum_on_measured_curves() {
    let curves = load_measured_curves(&shared_profiles()).expect("measured curves load");
    assert!(curves.iter().any(|c| c.locked_clock()) && curves.iter().any(|c| !c.locked_clock()));
    let exact = SolveOptions {
        method: MethodChoice::Milp,
        milp: MilpLimits {
            max_nodes: 1_000_000,
            time_limit_seconds: 120.0,
            relative_gap: 1e-9,
        },
        ..SolveOptions::default()
    };
    let (mut compared, mut worst) = (0, f64::INFINITY);
    for cap_fraction in [0.3, 0.6, 0.85] {
        for cross_rack_gangs in [false, true] {
            for seed in 1..=4 {
                let spec = FleetSpec {
                    gpus: 32,
                    gpus_per_node: 4,
                    nodes_per_rack: 2,
                    racks_per_row: 2,
                    cap_fraction,
                    cross_rack_gangs,
                    idle_fraction: 0.05,
                    seed,
                };
                let problem = generate_fleet(&curves, &spec).expect("generated problems are valid");
                let auto = solve(&problem, &SolveOptions::default()).expect("auto solves");
                let reference = solve(&problem, &exact).expect("milp solves");
                assert_eq!(
                    reference.status,
                    Status::Optimal,
                    "reference not proven optimal for {spec:?}"
                );
                assert!(
                    auto.upper_bound >= reference.objective * (1.0 - 1e-6),
                    "bound below the optimum for {spec:?}"
                );
                let ratio = auto.objective / reference.objective;
                assert!(
                    ratio >= 0.995,
                    "auto reaches {ratio} of the optimum for {spec:?}"
                );
                worst = worst.min(ratio);
                compared += 1;
            }
        }
    }
    println!("auto vs proven optimum on {compared} measured-curve fleets: worst ratio {worst:.6}");
    assert_eq!(compared, 24);
}
