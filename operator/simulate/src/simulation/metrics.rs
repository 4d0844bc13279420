//! The simulation's `/metrics`: the Kilowatt run's operator metrics and every node's agent metrics,
//! merged into one exposition. No IO.

use super::*;
impl Simulation {
    /// The operator metrics of the Kilowatt run and every node's agent metrics (labelled `node`).
    pub fn render_metrics(&self) -> Result<String, prometheus::Error> {
        let mut families = self.metrics.gather();
        for node in &self.runs[0].nodes {
            if let Some(telemetry) = &node.telemetry {
                families.extend(telemetry.gather());
            }
        }
        let mut merged: BTreeMap<String, prometheus::proto::MetricFamily> = BTreeMap::new();
        for mut family in families {
            match merged.get_mut(family.name()) {
                Some(existing) => existing.mut_metric().extend(family.take_metric()),
                None => {
                    merged.insert(family.name().to_owned(), family);
                }
            }
        }
        let families: Vec<_> = merged.into_values().collect();
        let mut buffer = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}
