//! The simulated nodes: each one's agent core over simulated GPUs, its lease and partitions, the
//! kubelet's answers about which pod holds each GPU, and the plans delivered to it. No IO.

use super::work::PodCounters;
use super::*;
use crate::faults::Fault;
use crate::scenario::simulated_boot_id;
use kilowatt_crds::plan::WorkCounter;

/// One node: its agent over simulated GPUs, and its contact with the plan store.
pub(super) struct NodeState {
    pub(super) agent: SteppedAgent<SimulatedGpus>,
    /// Mod revision of the node's plan key last delivered to the agent.
    pub(super) plan_seen: i64,
    /// The node's plan key, formatted once.
    pub(super) plan_key: String,
    pub(super) last_renewal: f64,
    pub(super) lease_expired: bool,
    pub(super) was_partitioned: bool,
    /// Workload index on each GPU.
    pub(super) gpu_workloads: Vec<Option<usize>>,
    /// The simulated kubelet's last answer to the agent: which pods hold each GPU, by UUID.
    pub(super) pods_by_uuid: BTreeMap<String, Vec<String>>,
    /// The pod holding each GPU now, as `namespace/name`.
    pub(super) gpu_holders: Vec<Option<String>>,
    /// The pod each GPU's limit was planned for, in the last plan the agent received.
    pub(super) planned_pods: Vec<Option<String>>,
    pub(super) telemetry: Option<Telemetry>,
    /// The scenario's faults that hit this node.
    pub(super) faults: Vec<Fault>,
    /// Whether the agent process runs (not crashed, machine not down).
    pub(super) agent_running: bool,
    /// When the agent process stopped, while it is stopped: its lease expires a TTL later.
    pub(super) agent_stopped_at: Option<f64>,
    /// Whether the machine is up; a machine that is down draws nothing.
    pub(super) powered: bool,
    /// Whether the inventory registered last was corrupted by a `badInventory` fault.
    pub(super) inventory_corrupted: bool,
    pub(super) last_limit_check: f64,
    /// The work counters of the plan the agent last received.
    pub(super) work_counters: Vec<WorkCounter>,
    /// The simulated pods' counters behind them.
    pub(super) pod_counters: PodCounters,
}

impl NodeState {
    /// The inventory the agent registers at `t`, corrupted by any `badInventory` fault active then.
    pub(super) fn inventory_at(&self, t: f64) -> Inventory {
        let mut inventory = self.agent.inventory(Some(&self.pods_by_uuid));
        for fault in self.faults.iter().filter(|f| f.active(t)) {
            fault.corrupt(&mut inventory);
        }
        inventory
    }

    fn bad_inventory_active(&self, t: f64) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f, Fault::BadInventory { .. }) && f.active(t))
    }

    /// The machine-level faults at `t` (the operator's side aside): GPUs that ignore limits, a
    /// machine going down or coming back at its GPUs' defaults, the agent process stopping or
    /// starting again. Returns whether the agent (re)started now, with the boot ID it reports.
    pub(super) fn apply_faults(&mut self, node: &str, t: f64) -> Option<String> {
        let mut reboots_done = 0;
        let mut down = false;
        let mut crashed = false;
        for fault in &self.faults {
            match fault {
                Fault::GpuStuck { gpu, .. } => {
                    // NB: the index is checked against the node's GPUs when the scenario is read.
                    let _ = self.agent.backend_mut().set_stuck(*gpu, fault.active(t));
                }
                Fault::Reboot { .. } => {
                    down |= fault.active(t);
                    if fault.boundaries().last().is_some_and(|up| *up <= t) {
                        reboots_done += 1;
                    }
                }
                Fault::AgentCrash { .. } => crashed |= fault.active(t),
                _ => {}
            }
        }
        if !self.powered && !down {
            // Back from a reboot: the driver loads every GPU at its default limit.
            self.agent.backend_mut().reset_to_defaults();
        }
        self.powered = !down;
        let running = !down && !crashed;
        if self.agent_running && !running {
            self.agent_running = false;
            self.agent_stopped_at = Some(t);
        }
        if self.agent_running || !running {
            return None;
        }
        let boot_id = simulated_boot_id(node, reboots_done);
        let fence_after = defaults::fence_after(defaults::LEASE_TTL, defaults::FENCE_FRACTION);
        // NB: the GPUs' ranges were usable when the agent first started, and have not changed.
        let _ = self
            .agent
            .restart(fence_after, seconds(t), Some(boot_id.clone()));
        self.agent_running = true;
        self.agent_stopped_at = None;
        Some(boot_id)
    }

    /// Hands the agent its plan key's value, noting which pod each GPU's limit was planned for.
    pub(super) fn deliver_plan(
        &mut self,
        plan: Option<NodePlan>,
        now: Duration,
    ) -> Vec<Acknowledgement> {
        self.planned_pods.iter_mut().for_each(|p| *p = None);
        self.work_counters = plan
            .as_ref()
            .map(|p| p.work_counters.clone())
            .unwrap_or_default();
        for gpu in plan.iter().flat_map(|p| &p.gpus) {
            if let Some(planned) = self.planned_pods.get_mut(gpu.index as usize) {
                planned.clone_from(&gpu.pod);
            }
        }
        self.agent.handle(Event::PlanChanged(plan), now)
    }
}

/// The UUID of simulated GPU `index` of `node`, as its agent registers it.
pub(super) fn simulated_gpu_uuid(node: &str, index: u32) -> String {
    format!("SIM-{node}-{index}")
}

impl Simulation {
    /// Every agent of run `index` over (before, t]: lease renewals, plan changes, samples and ticks,
    /// partitions.
    pub(super) fn step_agents(&mut self, index: usize, before: f64, t: f64) {
        let prepared = self.prepared.clone();
        let run = &mut self.runs[index];
        let now = seconds(t);
        // The agents run with `kilowatt-agent`'s defaults.
        let sample_seconds = defaults::SAMPLE_PERIOD.as_secs_f64();
        let lease_ttl_seconds = defaults::LEASE_TTL.as_secs_f64();
        let sampled = (t / sample_seconds).floor() > (before / sample_seconds).floor();
        let ask_every = POD_REFRESH.as_secs_f64();
        let kubelet_asked = (t / ask_every).floor() > (before / ask_every).floor();
        for (n, node) in run.nodes.iter_mut().enumerate() {
            let name = &prepared.nodes[n].name;
            let restarted = node.apply_faults(name, t).is_some();
            let Some(operator) = &run.operator else {
                if sampled {
                    node.agent.sample(now, defaults::REPORT_PERIOD, &[]);
                }
                continue;
            };
            let learns = operator.learning.is_some();
            let store = &operator.store;
            let partitioned = prepared.partitioned(name, t);
            let mut acknowledgements = Vec::new();
            if !node.agent_running {
                // A dead agent renews nothing: its lease expires a TTL after it died.
                if !node.lease_expired
                    && node
                        .agent_stopped_at
                        .is_some_and(|at| t - at >= lease_ttl_seconds)
                {
                    store.expire_lease(name);
                    node.lease_expired = true;
                }
                if sampled {
                    node.agent.sample(now, defaults::REPORT_PERIOD, &[]);
                }
                continue;
            }
            if restarted && !partitioned {
                // A new process: a new session registers, and reads the plan.
                store.register(name, &node.inventory_at(t));
                node.inventory_corrupted = node.bad_inventory_active(t);
                node.lease_expired = false;
                node.last_renewal = t;
                acknowledgements.extend(node.agent.handle(Event::LeaseRenewed, now));
                let (revision, plan) = store.node_plan(name);
                node.plan_seen = revision;
                acknowledgements.extend(node.deliver_plan(plan, now));
            } else if restarted {
                node.was_partitioned = true;
            }
            acknowledgements.extend(node.agent.poll(now));
            // As the agent process: the kubelet is local, so it is asked even when etcd is out of
            // reach, and a changed answer is registered again once it can be.
            let mut pods_changed = false;
            if kubelet_asked {
                let answer = prepared.pods_by_gpu_uuid(n, t, |i| simulated_gpu_uuid(name, i));
                pods_changed = answer != node.pods_by_uuid;
                node.pods_by_uuid = answer;
            }
            if partitioned {
                if !node.lease_expired && t - node.last_renewal >= lease_ttl_seconds {
                    store.expire_lease(name);
                    node.lease_expired = true;
                }
            } else {
                if node.was_partitioned {
                    // Back in contact: a new session registers again and reads the plan.
                    store.register(name, &node.inventory_at(t));
                    node.inventory_corrupted = node.bad_inventory_active(t);
                    node.lease_expired = false;
                    node.last_renewal = t;
                    acknowledgements.extend(node.agent.handle(Event::LeaseRenewed, now));
                    let (revision, plan) = store.node_plan(name);
                    node.plan_seen = revision;
                    acknowledgements.extend(node.deliver_plan(plan, now));
                } else if t - node.last_renewal >= lease_ttl_seconds / 3.0 {
                    node.last_renewal = t;
                    acknowledgements.extend(node.agent.handle(Event::LeaseRenewed, now));
                }
                let corrupted = node.bad_inventory_active(t);
                if (pods_changed || corrupted != node.inventory_corrupted) && !node.was_partitioned
                {
                    store.register(name, &node.inventory_at(t));
                    node.inventory_corrupted = corrupted;
                }
                if let Some((revision, plan)) =
                    store.node_plan_change(&node.plan_key, node.plan_seen)
                {
                    node.plan_seen = revision;
                    acknowledgements.extend(node.deliver_plan(plan, now));
                }
            }
            node.was_partitioned = partitioned;
            // The agent's periodic drift check: a limit that came late, or not at all, is read back.
            if t - node.last_limit_check >= defaults::DRIFT_CHECK.as_secs_f64() {
                node.last_limit_check = t;
                acknowledgements.extend(node.agent.check_limits(now));
            }
            if sampled {
                let misplanned = node
                    .gpu_holders
                    .iter()
                    .zip(&node.planned_pods)
                    .filter(|(holder, planned)| {
                        holder.is_some() && planned.is_some() && holder != planned
                    })
                    .count();
                run.summary.misplanned_gpu_seconds += misplanned as f64 * sample_seconds;
                // As the agent process: the pods' endpoints are on the node's network, so they
                // are scraped even when etcd is out of reach. Only a run that learns asks.
                let answers = if learns {
                    node.agent.backend_mut().advance(now);
                    node.pod_counters.scrape(
                        &node.work_counters,
                        &node.gpu_holders,
                        node.agent.backend(),
                        |pod| self.pod_work.get(pod).copied(),
                    )
                } else {
                    Vec::new()
                };
                let scrapes: Vec<_> = node.work_counters.iter().zip(answers).collect();
                let (readings, report) = node.agent.sample(now, defaults::REPORT_PERIOD, &scrapes);
                if let Some(telemetry) = &node.telemetry {
                    telemetry.observe_gpus(node.agent.gpus(), &readings, &node.pods_by_uuid);
                    if let Some(report) = &report {
                        telemetry.observe_work_windows(
                            &report.work_windows,
                            &report.work_windows_rejected,
                        );
                    }
                }
                if let Some(report) = report.filter(|_| !partitioned) {
                    store.report_power(name, &report);
                }
                let fenced_before = node.agent.protocol().mode() == Mode::Fenced;
                acknowledgements.extend(node.agent.handle(Event::Tick, now));
                if !fenced_before && node.agent.protocol().mode() == Mode::Fenced {
                    run.summary.fences += 1;
                }
            }
            if !partitioned {
                for ack in &acknowledgements {
                    store.acknowledge(name, ack);
                    if let Some(telemetry) = &node.telemetry {
                        telemetry.revision(ack.revision);
                    }
                }
            }
            if let Some(telemetry) = &node.telemetry {
                telemetry.observe_agent(node.agent.protocol());
            }
        }
    }
}
