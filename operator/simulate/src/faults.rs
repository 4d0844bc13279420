//! The faults a scenario injects (`faults:` in docs/simulate.md): agents that crash, machines that
//! reboot, GPUs that ignore or delay limits, corrupt inventories and kubelets that report NotReady;
//! their validation and what each means at a given instant. Pure.

use kilowatt_crds::plan::Inventory;
use serde::Deserialize;

/// One fault, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Fault {
    /// The agent process dies at `atSeconds`; the machine stays up and its GPUs keep their limits.
    /// It starts again `restartSeconds` later (never, without).
    AgentCrash {
        node: String,
        at_seconds: f64,
        #[serde(default)]
        restart_seconds: Option<f64>,
    },
    /// The machine goes down (Node Unknown, agent gone, nothing drawn) for `downSeconds`, then
    /// comes up with a new boot ID and every GPU at its maximum until its agent applies a plan.
    Reboot {
        node: String,
        at_seconds: f64,
        down_seconds: f64,
    },
    /// GPU `gpu` ignores new limits from `atSeconds` to `endSeconds`.
    GpuStuck {
        node: String,
        gpu: u32,
        at_seconds: f64,
        end_seconds: f64,
    },
    /// The node's GPUs (every node's, for `"*"`) enforce a new limit `delaySeconds` after it is set.
    SlowApply { node: String, delay_seconds: f64 },
    /// From `atSeconds`, the agent registers an inventory with the given fields changed (on GPU
    /// `gpu`, else every GPU; `gpus` truncates or repeats the list to that many).
    BadInventory {
        node: String,
        at_seconds: f64,
        #[serde(default)]
        gpu: Option<u32>,
        #[serde(default)]
        gpus: Option<u32>,
        #[serde(default)]
        backend: Option<String>,
        #[serde(default)]
        index: Option<u32>,
        #[serde(default)]
        uuid: Option<String>,
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        min_limit_watts: Option<f64>,
        #[serde(default)]
        max_limit_watts: Option<f64>,
    },
    /// The kubelet reports Ready=False (ContainerRuntimeUnhealthy) from `atSeconds` to
    /// `endSeconds`; the machine and the agent run on.
    NodeNotReady {
        node: String,
        at_seconds: f64,
        end_seconds: f64,
    },
}

impl Fault {
    /// The node it hits (`"*"`: every node, for `slowApply`).
    pub fn node(&self) -> &str {
        match self {
            Fault::AgentCrash { node, .. }
            | Fault::Reboot { node, .. }
            | Fault::GpuStuck { node, .. }
            | Fault::SlowApply { node, .. }
            | Fault::BadInventory { node, .. }
            | Fault::NodeNotReady { node, .. } => node,
        }
    }

    pub fn hits(&self, node: &str) -> bool {
        self.node() == node || self.node() == "*"
    }

    /// When it starts and ends (`None`: never), in scenario seconds.
    fn span(&self) -> (f64, Option<f64>) {
        match self {
            Fault::AgentCrash {
                at_seconds,
                restart_seconds,
                ..
            } => (*at_seconds, restart_seconds.map(|r| at_seconds + r)),
            Fault::Reboot {
                at_seconds,
                down_seconds,
                ..
            } => (*at_seconds, Some(at_seconds + down_seconds)),
            Fault::GpuStuck {
                at_seconds,
                end_seconds,
                ..
            }
            | Fault::NodeNotReady {
                at_seconds,
                end_seconds,
                ..
            } => (*at_seconds, Some(*end_seconds)),
            Fault::SlowApply { .. } => (0.0, None),
            Fault::BadInventory { at_seconds, .. } => (*at_seconds, None),
        }
    }

    /// Whether it is in effect at `seconds`.
    pub fn active(&self, seconds: f64) -> bool {
        let (start, end) = self.span();
        start <= seconds && end.is_none_or(|end| seconds < end)
    }

    /// The instants at which it starts or ends.
    pub fn boundaries(&self) -> Vec<f64> {
        let (start, end) = self.span();
        std::iter::once(start).chain(end).collect()
    }

    /// `kind node`, for reports.
    pub fn label(&self) -> String {
        let kind = match self {
            Fault::AgentCrash { .. } => "agentCrash",
            Fault::Reboot { .. } => "reboot",
            Fault::GpuStuck { gpu, .. } => return format!("gpuStuck {}/gpu{gpu}", self.node()),
            Fault::SlowApply { .. } => "slowApply",
            Fault::BadInventory { .. } => "badInventory",
            Fault::NodeNotReady { .. } => "nodeNotReady",
        };
        format!("{kind} {}", self.node())
    }

    /// What is wrong with it, given the scenario's nodes and their GPU counts.
    pub fn problem(&self, nodes: &[(String, u32)]) -> Option<String> {
        let gpus_of = |name: &str| nodes.iter().find(|(n, _)| n == name).map(|(_, g)| *g);
        let label = self.label();
        let everywhere = matches!(self, Fault::SlowApply { .. }) && self.node() == "*";
        let gpus = match gpus_of(self.node()) {
            Some(gpus) => gpus,
            None if everywhere => 0,
            None => {
                return Some(format!(
                    "{label}: {} is not a node of the scenario",
                    self.node()
                ));
            }
        };
        let (start, end) = self.span();
        if !start.is_finite() || start < 0.0 {
            return Some(format!(
                "{label}: atSeconds must be a finite number of 0 or more"
            ));
        }
        if let Some(end) = end
            && !(end.is_finite() && end > start)
        {
            return Some(format!(
                "{label}: it must end after it starts (restartSeconds, downSeconds > 0; endSeconds \
                 after atSeconds)"
            ));
        }
        match self {
            Fault::GpuStuck { gpu, .. } if *gpu >= gpus => Some(format!(
                "{label}: the node has {gpus} GPUs, numbered from 0"
            )),
            Fault::SlowApply { delay_seconds, .. }
                if !(delay_seconds.is_finite() && (0.0..=3600.0).contains(delay_seconds)) =>
            {
                Some(format!("{label}: delaySeconds must be between 0 and 3600"))
            }
            Fault::BadInventory { gpu: Some(gpu), .. } if *gpu >= gpus => Some(format!(
                "{label}: the node has {gpus} GPUs, numbered from 0"
            )),
            _ => None,
        }
    }

    /// `inventory` as a `badInventory` fault corrupts it; any other fault leaves it.
    pub fn corrupt(&self, inventory: &mut Inventory) {
        let Fault::BadInventory {
            gpu,
            gpus,
            backend,
            index,
            uuid,
            model,
            min_limit_watts,
            max_limit_watts,
            ..
        } = self
        else {
            return;
        };
        if let Some(backend) = backend {
            inventory.backend.clone_from(backend);
        }
        if let Some(count) = gpus
            && let Some(last) = inventory.gpus.last().cloned()
        {
            inventory.gpus.resize(*count as usize, last);
        }
        for (i, entry) in inventory.gpus.iter_mut().enumerate() {
            if gpu.is_some_and(|g| g as usize != i) {
                continue;
            }
            if let Some(index) = index {
                entry.index = *index;
            }
            if let Some(uuid) = uuid {
                entry.uuid.clone_from(uuid);
            }
            if let Some(model) = model {
                entry.model.clone_from(model);
            }
            if let Some(watts) = min_limit_watts {
                entry.min_limit_watts = *watts;
            }
            if let Some(watts) = max_limit_watts {
                entry.max_limit_watts = *watts;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<Fault>, serde_saphyr::Error> {
        serde_saphyr::from_str(yaml)
    }

    #[test]
    fn the_documented_faults_parse_and_unknown_fields_do_not() {
        let faults = parse(
            r#"
- {kind: agentCrash, node: r1-0, atSeconds: 600, restartSeconds: 900}
- {kind: reboot, node: r1-1, atSeconds: 700, downSeconds: 60}
- {kind: gpuStuck, node: r1-2, gpu: 3, atSeconds: 800, endSeconds: 1000}
- {kind: slowApply, node: "*", delaySeconds: 0.107}
- {kind: badInventory, node: r1-3, atSeconds: 900, minLimitWatts: 0}
- {kind: nodeNotReady, node: r1-0, atSeconds: 1000, endSeconds: 1100}
"#,
        )
        .expect("the documented faults parse");
        assert_eq!(faults.len(), 6);
        assert!(faults[0].active(600.0) && faults[0].active(1499.0) && !faults[0].active(1500.0));
        assert_eq!(faults[1].boundaries(), [700.0, 760.0]);
        assert!(faults[3].hits("r2-7"));
        let error = parse("- {kind: reboot, node: r1-0, atSeconds: 1, downSeconds: 2, extra: 1}")
            .expect_err("unknown field");
        assert!(error.to_string().contains("extra"), "{error}");
    }

    #[test]
    fn a_fault_on_a_missing_node_or_gpu_is_named() {
        let nodes = [("r1-0".to_owned(), 4)];
        let faults = parse(
            r#"
- {kind: gpuStuck, node: r1-0, gpu: 4, atSeconds: 1, endSeconds: 2}
- {kind: agentCrash, node: r9-0, atSeconds: 1}
- {kind: nodeNotReady, node: r1-0, atSeconds: 5, endSeconds: 2}
"#,
        )
        .expect("parses");
        let problems: Vec<String> = faults.iter().filter_map(|f| f.problem(&nodes)).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("4 GPUs"), "{problems:?}");
        assert!(problems[1].contains("r9-0"), "{problems:?}");
    }

    #[test]
    fn a_bad_inventory_changes_only_what_it_names() {
        let gpu = |index| kilowatt_crds::plan::InventoryGpu {
            index,
            uuid: format!("SIM-{index}"),
            model: "H100".into(),
            min_limit_watts: 200.0,
            max_limit_watts: 700.0,
            pods: Vec::new(),
        };
        let mut inventory = Inventory {
            backend: "simulated".into(),
            gpus: vec![gpu(0), gpu(1)],
            pods_reported: true,
        };
        let fault = parse(
            "- {kind: badInventory, node: r1-0, atSeconds: 1, gpu: 1, minLimitWatts: 0, gpus: 3}",
        )
        .expect("parses")
        .remove(0);
        fault.corrupt(&mut inventory);
        assert_eq!(inventory.gpus.len(), 3);
        assert_eq!(inventory.gpus[0].min_limit_watts, 200.0);
        assert_eq!(inventory.gpus[1].min_limit_watts, 0.0);
    }
}
