//! Seeded generation of fleet-shaped allocation problems from a pool of curves, for benchmarks and
//! quality tests: a facility → rows → racks tree, 8-GPU nodes, single-GPU services, node-sized jobs and
//! multi-node gangs. Pure: the same spec and curves give the same problem.

use kilowatt_solver::model::{Budget, Gpu, Node, Problem, Workload, WorkloadKind};
use kilowatt_solver::{InvalidProblem, budget_ranges};

use crate::profiles::NamedCurve;

/// Shape of a generated fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    pub gpus: usize,
    pub gpus_per_node: usize,
    pub nodes_per_rack: usize,
    pub racks_per_row: usize,
    /// Facility cap as a fraction of the way from the floors to the ceilings (0.3 = tight, 0.85 = loose).
    /// Rows and racks get a little more, so every level of the tree can bind.
    pub cap_fraction: f64,
    /// Let multi-node gangs run across rack (and row) boundaries, as large training jobs do.
    pub cross_rack_gangs: bool,
    /// Share of nodes left without workloads.
    pub idle_fraction: f64,
    pub seed: u64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            gpus: 1000,
            gpus_per_node: 8,
            nodes_per_rack: 4,
            racks_per_row: 8,
            cap_fraction: 0.6,
            cross_rack_gangs: false,
            idle_fraction: 0.05,
            seed: 1,
        }
    }
}

/// SplitMix64: a small, well-known generator; enough for reproducible test instances.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// GPU models in the pool with the power range their curves span (used as each GPU's min/max).
fn gpu_models(curves: &[NamedCurve]) -> Vec<(String, f64, f64)> {
    let mut models: Vec<(String, f64, f64)> = Vec::new();
    for curve in curves {
        let lo = curve
            .points
            .iter()
            .map(|p| p.power_watts)
            .fold(f64::INFINITY, f64::min);
        let hi = curve
            .points
            .iter()
            .map(|p| p.power_watts)
            .fold(0.0, f64::max);
        match models.iter_mut().find(|m| m.0 == curve.gpu_model) {
            Some(m) => {
                m.1 = m.1.min(lo.floor());
                m.2 = m.2.max(hi.ceil());
            }
            None => models.push((curve.gpu_model.clone(), lo.floor(), hi.ceil())),
        }
    }
    models
}

/// Generates a problem of about `spec.gpus` GPUs (rounded up to whole nodes) from `curves`.
pub fn generate_fleet(curves: &[NamedCurve], spec: &FleetSpec) -> Result<Problem, InvalidProblem> {
    let mut rng = SplitMix64::new(spec.seed);
    let models = gpu_models(curves);
    let node_count = spec.gpus.div_ceil(spec.gpus_per_node).max(1);
    let rack_count = node_count.div_ceil(spec.nodes_per_rack);
    let row_count = rack_count.div_ceil(spec.racks_per_row);

    let mut budgets = vec![Budget {
        name: "facility".into(),
        cap_watts: 0.0,
        parent: None,
        max_slowdown: None,
    }];
    budgets.extend((0..row_count).map(|r| Budget {
        name: format!("row-{r}"),
        cap_watts: 0.0,
        parent: Some("facility".into()),
        max_slowdown: None,
    }));
    budgets.extend((0..rack_count).map(|k| Budget {
        name: format!("rack-{k}"),
        cap_watts: 0.0,
        parent: Some(format!("row-{}", k / spec.racks_per_row)),
        max_slowdown: None,
    }));

    // Racks are homogeneous in GPU model, as they are in real datacentres.
    let rack_model: Vec<usize> = (0..rack_count).map(|_| rng.below(models.len())).collect();
    let mut nodes = Vec::with_capacity(node_count);
    for n in 0..node_count {
        let rack = n / spec.nodes_per_rack;
        let (_, min_watts, max_watts) = &models[rack_model[rack]];
        nodes.push(Node {
            name: format!("node-{n}"),
            budget: format!("rack-{rack}"),
            // Host CPUs, memory, NICs and fans: about a third of the GPUs' peak on GPU servers.
            overhead_watts: (0.3 * *max_watts * spec.gpus_per_node as f64).round(),
            gpus: (0..spec.gpus_per_node)
                .map(|g| Gpu {
                    id: format!("node-{n}/gpu-{g}"),
                    min_watts: *min_watts,
                    max_watts: *max_watts,
                })
                .collect(),
        });
    }

    let mut workloads = Vec::new();
    let mut n = 0;
    while n < node_count {
        let rack = n / spec.nodes_per_rack;
        let model = &models[rack_model[rack]].0;
        let pool: Vec<&NamedCurve> = curves.iter().filter(|c| &c.gpu_model == model).collect();
        let pick = |rng: &mut SplitMix64, kind: Option<WorkloadKind>| {
            let matching: Vec<&&NamedCurve> = pool
                .iter()
                .filter(|c| kind.is_none_or(|k| c.kind == k))
                .collect();
            if matching.is_empty() {
                pool[rng.below(pool.len())]
            } else {
                *matching[rng.below(matching.len())]
            }
        };
        let roll = rng.unit();
        if roll < spec.idle_fraction {
            n += 1;
            continue;
        }
        let mut add = |curve: &NamedCurve, gpus: Vec<String>, rng: &mut SplitMix64| {
            let inference = curve.kind == WorkloadKind::Inference;
            workloads.push(Workload {
                name: format!("job-{}", workloads.len()),
                kind: curve.kind,
                weight: 1.0 + rng.below(3) as f64,
                gpus,
                min_throughput_fraction: (inference && rng.unit() < 0.3).then_some(0.6),
                profile: curve.points.clone(),
            });
        };
        let gpu_ids =
            |node: usize| (0..spec.gpus_per_node).map(move |g| format!("node-{node}/gpu-{g}"));
        if roll < 0.45 {
            // A node of single-GPU services.
            for id in gpu_ids(n) {
                let curve = pick(&mut rng, Some(WorkloadKind::Inference));
                add(curve, vec![id], &mut rng);
            }
            n += 1;
        } else if roll < 0.75 {
            let curve = pick(&mut rng, Some(WorkloadKind::Training));
            add(curve, gpu_ids(n).collect(), &mut rng);
            n += 1;
        } else {
            let wanted = 2 + rng.below(3);
            let rack_end = (rack + 1) * spec.nodes_per_rack;
            let end = if spec.cross_rack_gangs {
                n + wanted
            } else {
                (n + wanted).min(rack_end)
            };
            let end = end.min(node_count);
            let curve = pick(&mut rng, Some(WorkloadKind::Training));
            add(curve, (n..end).flat_map(gpu_ids).collect(), &mut rng);
            n = end;
        }
    }

    let mut problem = Problem {
        budgets,
        nodes,
        workloads,
        objective: Default::default(),
    };
    let ranges = budget_ranges(&problem)?;
    for (budget, range) in problem.budgets.iter_mut().zip(ranges) {
        let level = match budget.parent.as_deref() {
            None => spec.cap_fraction,
            Some("facility") => (spec.cap_fraction * 1.1).min(1.0),
            Some(_) => (spec.cap_fraction * 1.2).min(1.0),
        };
        budget.cap_watts =
            (range.floor_watts + level * (range.ceiling_watts - range.floor_watts)).ceil();
    }
    Ok(problem)
}
