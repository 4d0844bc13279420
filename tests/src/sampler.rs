//! The cap sampler: a thread that takes consistent snapshots of every node's simulated GPU settings
//! files and checks every budget's cap, thousands of times during a fault test. File IO.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kilowatt_node_agent::gpu::settings_file::StoredSettings;

use crate::fleet::*;

/// A budget as the sampler checks it: its cap in force and the nodes under it.
#[derive(Debug, Clone)]
pub struct CheckedBudget {
    pub name: &'static str,
    pub cap_watts: f64,
    pub nodes: Vec<String>,
}
/// What the sampler found over one stretch of the test.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub samples: u64,
    /// Double reads that saw a change in between and were taken again.
    pub retries: u64,
    pub violations: Vec<String>,
    pub worst_margin_watts: f64,
}
/// The sampler: a thread that takes consistent snapshots of every powered node's settings file and
/// checks every budget.
pub struct Sampler {
    pub budgets: Arc<Mutex<Vec<CheckedBudget>>>,
    /// Nodes whose machines draw power, with their settings files.
    pub powered: Arc<Mutex<BTreeMap<String, PathBuf>>>,
    pub tally: Arc<Mutex<Tally>>,
    pub running: Arc<AtomicBool>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}
impl Sampler {
    pub fn start(budgets: Vec<CheckedBudget>, nodes: &[NodeUnderTest]) -> Sampler {
        let budgets = Arc::new(Mutex::new(budgets));
        let powered: Arc<Mutex<BTreeMap<String, PathBuf>>> = Arc::new(Mutex::new(
            nodes
                .iter()
                .map(|n| (n.name.clone(), n.settings.clone()))
                .collect(),
        ));
        let tally = Arc::new(Mutex::new(Tally {
            worst_margin_watts: f64::INFINITY,
            ..Tally::default()
        }));
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let (budgets, powered, tally, running) = (
                budgets.clone(),
                powered.clone(),
                tally.clone(),
                running.clone(),
            );
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let files = powered.lock().expect("powered").clone();
                    let checked = budgets.lock().expect("budgets").clone();
                    let Some(totals) = snapshot(&files) else {
                        tally.lock().expect("tally").retries += 1;
                        continue;
                    };
                    let mut tally = tally.lock().expect("tally");
                    tally.samples += 1;
                    for budget in &checked {
                        let carried: f64 = budget
                            .nodes
                            .iter()
                            .filter_map(|n| totals.get(n))
                            .map(|gpus| gpus + OVERHEAD_WATTS)
                            .sum();
                        let margin = budget.cap_watts - carried;
                        tally.worst_margin_watts = tally.worst_margin_watts.min(margin);
                        if margin < -1e-6 {
                            tally.violations.push(format!(
                                "{}: {carried} W over its {} W cap ({totals:?})",
                                budget.name, budget.cap_watts
                            ));
                        }
                    }
                    drop(tally);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Sampler {
            budgets,
            powered,
            tally,
            running,
            thread: Some(thread),
        }
    }

    pub fn set_cap(&self, budget: &str, watts: f64) {
        for b in self.budgets.lock().expect("budgets").iter_mut() {
            if b.name == budget {
                b.cap_watts = watts;
            }
        }
    }

    /// The machine is off: it draws nothing from now on.
    pub fn power_off(&self, node: &str) {
        self.powered.lock().expect("powered").remove(node);
    }

    /// The machine is on again: it draws what its settings file says from now on.
    pub fn power_on(&self, node: &NodeUnderTest) {
        self.powered
            .lock()
            .expect("powered")
            .insert(node.name.clone(), node.settings.clone());
    }

    /// Ends a stretch, at least half a second after the last change: prints and checks what was sampled
    /// since the last one.
    pub async fn stretch(&self, what: &str) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tally = std::mem::replace(
            &mut *self.tally.lock().expect("tally"),
            Tally {
                worst_margin_watts: f64::INFINITY,
                ..Tally::default()
            },
        );
        // NB: written to stderr directly, not through the test harness's capture, so that every run's
        // output shows how much was checked.
        let _ = writeln!(
            std::io::stderr(),
            "fault suite, {what}: {} samples checked ({} re-read), {} violations, smallest headroom {:.1} W",
            tally.samples,
            tally.retries,
            tally.violations.len(),
            tally.worst_margin_watts
        );
        assert!(tally.samples > 50, "{what}: only {} samples", tally.samples);
        assert!(
            tally.violations.is_empty(),
            "{what}: {:?}",
            &tally.violations[..tally.violations.len().min(5)]
        );
    }
}
impl Drop for Sampler {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
/// Every file's sequence and total limit, read twice; `None` if anything changed in between (then
/// there was no single instant at which all the first reads held).
pub fn snapshot(files: &BTreeMap<String, PathBuf>) -> Option<BTreeMap<String, f64>> {
    let read = || -> Option<BTreeMap<String, (u64, f64)>> {
        files
            .iter()
            .map(|(node, path)| {
                let settings = StoredSettings::read(path).ok()?;
                Some((
                    node.clone(),
                    (settings.sequence, settings.total_limit_watts()),
                ))
            })
            .collect()
    };
    let first = read()?;
    let second = read()?;
    (first == second).then(|| first.into_iter().map(|(n, (_, w))| (n, w)).collect())
}
pub fn checked_budgets() -> Vec<CheckedBudget> {
    let names = |ns: &[&str]| ns.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    vec![
        CheckedBudget {
            name: "row",
            cap_watts: ROW_CAP_WATTS,
            nodes: names(&["n1", "n2", "n3", "n4"]),
        },
        CheckedBudget {
            name: "rack-a",
            cap_watts: RACK_CAP_WATTS,
            nodes: names(&["n1", "n2"]),
        },
        CheckedBudget {
            name: "rack-b",
            cap_watts: RACK_CAP_WATTS,
            nodes: names(&["n3", "n4"]),
        },
    ]
}
