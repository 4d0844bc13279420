//! Loading throughput curves from disk: profile files (YAML, as in `crds/profiles`) and the shared CSV
//! schema of published measurements (Zeus, Perseus). Does file IO; parsing is in pure helpers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kilowatt_crds::profile_file::{self, ProfileKind};
use kilowatt_solver::model::{ProfilePoint, WorkloadKind};

/// A measured or example throughput curve, ready to become a workload's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedCurve {
    pub name: String,
    pub gpu_model: String,
    pub kind: WorkloadKind,
    /// Sorted by power; locked-clock curves carry `sm_clock_mhz` on every point.
    pub points: Vec<ProfilePoint>,
}

impl NamedCurve {
    pub fn locked_clock(&self) -> bool {
        self.points
            .first()
            .is_some_and(|p| p.sm_clock_mhz.is_some())
    }
}

/// Why curves could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "{path}: no usable curves (need power-limit or SM-clock curves with at least 4 points)"
    )]
    Empty { path: PathBuf },
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

fn files_with_extension(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads every `*.yaml` example profile in `dir`, in file-name order.
pub fn load_example_profiles(dir: &Path) -> Result<Vec<NamedCurve>, LoadError> {
    let mut curves = Vec::new();
    for path in files_with_extension(dir, &["yaml", "yml"])? {
        let text = read(&path)?;
        curves.push(
            parse_example_profile(&text).map_err(|message| LoadError::Parse {
                path: path.clone(),
                message,
            })?,
        );
    }
    if curves.is_empty() {
        return Err(LoadError::Empty {
            path: dir.to_owned(),
        });
    }
    Ok(curves)
}

/// Parses one profile file (see `kilowatt_crds::profile_file`).
pub fn parse_example_profile(text: &str) -> Result<NamedCurve, String> {
    let profile = profile_file::parse(text).map_err(|e| e.to_string())?;
    Ok(NamedCurve {
        name: profile.name,
        gpu_model: profile.spec.gpu_model,
        kind: match profile.kind {
            ProfileKind::Training => WorkloadKind::Training,
            ProfileKind::Inference => WorkloadKind::Inference,
        },
        points: profile
            .spec
            .points
            .iter()
            .map(|p| ProfilePoint {
                power_watts: p.power_watts,
                throughput: p.throughput,
                sm_clock_mhz: p.sm_clock_mhz,
            })
            .collect(),
    })
}

/// Loads the single-knob curves (power limit or locked SM clock) of every `*.csv` in `dir` written in
/// the shared measurement schema. Batch-size sweeps, frequency plans and per-stage limit vectors are
/// skipped: they have no single power knob.
pub fn load_measured_curves(dir: &Path) -> Result<Vec<NamedCurve>, LoadError> {
    let mut curves = Vec::new();
    for path in files_with_extension(dir, &["csv"])? {
        let text = read(&path)?;
        curves.extend(
            parse_measured_csv(&text).map_err(|message| LoadError::Parse {
                path: path.clone(),
                message,
            })?,
        );
    }
    if curves.is_empty() {
        return Err(LoadError::Empty {
            path: dir.to_owned(),
        });
    }
    Ok(curves)
}

/// Parses one CSV of the shared schema into curves with at least 4 points.
pub fn parse_measured_csv(text: &str) -> Result<Vec<NamedCurve>, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty file")?.split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or(format!("missing column {name:?}"))
    };
    let (id_col, gpu_col, kind_col) = (column("curve_id")?, column("gpu")?, column("kind")?);
    let (limit_col, clock_col, throughput_col, power_col, config_col) = (
        column("power_limit_w")?,
        column("sm_freq_mhz")?,
        column("throughput")?,
        column("avg_power_w")?,
        column("config")?,
    );
    struct Row {
        gpu: String,
        kind: WorkloadKind,
        point: ProfilePoint,
    }
    let mut by_curve: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            return Err(format!(
                "line {}: {} fields, header has {}",
                n + 2,
                fields.len(),
                header.len()
            ));
        }
        // Per-stage limit vectors are not one limit per GPU; the mean in power_limit_w would mislead.
        if fields[config_col].contains("stage_power_limits_w=") {
            continue;
        }
        let number = |col: usize| fields[col].parse::<f64>().ok().filter(|v| v.is_finite());
        let Some(throughput) = number(throughput_col) else {
            continue;
        };
        let point = match (number(limit_col), number(clock_col), number(power_col)) {
            (Some(limit), None, _) => ProfilePoint {
                power_watts: limit,
                throughput,
                sm_clock_mhz: None,
            },
            (None, Some(clock), Some(power)) => ProfilePoint {
                power_watts: power,
                throughput,
                sm_clock_mhz: Some(clock.round() as u32),
            },
            _ => continue,
        };
        let kind = match fields[kind_col] {
            "inference" => WorkloadKind::Inference,
            _ => WorkloadKind::Training,
        };
        by_curve
            .entry(fields[id_col].to_owned())
            .or_default()
            .push(Row {
                gpu: fields[gpu_col].to_owned(),
                kind,
                point,
            });
    }
    let mut curves = Vec::new();
    for (name, rows) in by_curve {
        let first = &rows[0];
        let (gpu_model, kind) = (first.gpu.clone(), first.kind);
        let points = tidy_points(rows.into_iter().map(|r| r.point).collect());
        if points.len() >= 4 {
            curves.push(NamedCurve {
                name,
                gpu_model,
                kind,
                points,
            });
        }
    }
    Ok(curves)
}

/// Sorts points by power and merges repeats (same limit, or same clock), averaging their readings,
/// so the result satisfies the problem format's ordering rules.
fn tidy_points(mut points: Vec<ProfilePoint>) -> Vec<ProfilePoint> {
    let locked = points.first().is_some_and(|p| p.sm_clock_mhz.is_some());
    let key = |p: &ProfilePoint| {
        if locked {
            p.sm_clock_mhz.unwrap_or(0) as f64
        } else {
            p.power_watts
        }
    };
    points.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mut merged: Vec<(ProfilePoint, f64)> = Vec::new();
    for p in points {
        match merged.last_mut() {
            Some((m, count)) if key(m) == key(&p) => {
                m.power_watts = (m.power_watts * *count + p.power_watts) / (*count + 1.0);
                m.throughput = (m.throughput * *count + p.throughput) / (*count + 1.0);
                *count += 1.0;
            }
            _ => merged.push((p, 1.0)),
        }
    }
    let mut points: Vec<ProfilePoint> = merged.into_iter().map(|(p, _)| p).collect();
    points.sort_by(|a, b| a.power_watts.total_cmp(&b.power_watts));
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "source,curve_id,gpu,workload,kind,batch_size,num_gpus,power_limit_w,sm_freq_mhz,throughput,throughput_unit,avg_power_w,energy_per_unit_j,config
s,c1,A40,w,training,8,1,150,,2.0,u,140,1,x
s,c1,A40,w,training,8,1,100,,1.0,u,95,1,x
s,c1,A40,w,training,8,1,200,,2.5,u,180,1,x
s,c1,A40,w,training,8,1,200,,2.7,u,181,1,x
s,c1,A40,w,training,8,1,250,,2.6,u,200,1,x
s,c2,A40,w,training,,1,,1200,3.0,u,250,1,x
s,c2,A40,w,training,,1,,900,2.0,u,200,1,x
s,c2,A40,w,training,,1,,1000,2.5,u,210,1,x
s,c2,A40,w,training,,1,,1100,2.8,u,230,1,x
s,c3,A40,w,training,256,8,175,,9.0,u,150,1,stage_power_limits_w=1|2
s,c4,H100,w,inference,1,1,,,9.0,u,150,1,x";

    #[test]
    fn power_limit_curves_are_sorted_and_repeats_averaged() {
        let curves = parse_measured_csv(CSV).expect("parses");
        let c1 = curves.iter().find(|c| c.name == "c1").expect("c1 kept");
        let powers: Vec<f64> = c1.points.iter().map(|p| p.power_watts).collect();
        assert_eq!(powers, vec![100.0, 150.0, 200.0, 250.0]);
        assert!((c1.points[2].throughput - 2.6).abs() < 1e-12);
        assert!(!c1.locked_clock());
    }

    #[test]
    fn clock_curves_use_measured_power_and_carry_clocks() {
        let curves = parse_measured_csv(CSV).expect("parses");
        let c2 = curves.iter().find(|c| c.name == "c2").expect("c2 kept");
        assert!(c2.locked_clock());
        let clocks: Vec<Option<u32>> = c2.points.iter().map(|p| p.sm_clock_mhz).collect();
        assert_eq!(clocks, vec![Some(900), Some(1000), Some(1100), Some(1200)]);
    }

    #[test]
    fn per_stage_and_batch_only_rows_are_skipped() {
        let curves = parse_measured_csv(CSV).expect("parses");
        assert_eq!(curves.len(), 2);
    }

    #[test]
    fn a_file_without_the_schema_columns_is_rejected() {
        let err = parse_measured_csv("curve_id,gpu\nx").expect_err("bad header");
        assert!(err.contains("missing column"), "{err}");
    }
}
