//! The plan key's value. The whole plan, with every node's targets, outgrows one etcd request (1.5 MiB
//! by default) at about a thousand 8-GPU nodes, so the key holds it gzip-compressed; a plan still
//! larger than one part after compression is split into part keys, written before the plan key,
//! which then holds a manifest naming them. Pure (compression in memory).

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::plan::published::PublishedPlan;

/// The most bytes one part carries: half of etcd's default request limit (1.5 MiB), so that a part
/// and a chunk of node writes share one transaction.
pub const PART_BYTES: usize = 512 * 1024;

/// No plan decompresses to more than this; a larger one is not a plan this operator wrote.
const MAX_PLAN_BYTES: u64 = 1 << 30;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The plan key's value and the parts it names (none when the value holds the plan itself).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPlan {
    pub plan_value: Vec<u8>,
    pub parts: Vec<Vec<u8>>,
}

/// What a plan key's value holds.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanKeyValue {
    /// The plan's JSON document, decompressed.
    Json(Vec<u8>),
    /// The plan of `revision` is in `parts` part keys.
    Parts { revision: u64, parts: usize },
}

/// The plan key's value when the plan is in parts (JSON, so that it reads in etcdctl).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PartsManifest {
    revision: u64,
    parts: usize,
}

/// Why a stored plan does not decode.
#[derive(Debug, thiserror::Error)]
pub enum PlanDecodeError {
    /// Also what parts joined in the wrong order, or from two writers, give: gzip checks a CRC.
    #[error("the plan is not valid gzip")]
    Gzip { source: std::io::Error },
    #[error("the plan decompresses to more than {MAX_PLAN_BYTES} bytes")]
    TooLarge,
    #[error("the plan's manifest names {expected} parts, {found} were read")]
    MissingParts { expected: usize, found: usize },
}

/// Encodes `plan` for the plan key: compressed, in parts when needed.
pub fn encode(plan: &PublishedPlan) -> Result<EncodedPlan, serde_json::Error> {
    encode_in_parts_of(plan, PART_BYTES)
}

fn encode_in_parts_of(
    plan: &PublishedPlan,
    part_bytes: usize,
) -> Result<EncodedPlan, serde_json::Error> {
    let json = serde_json::to_vec(plan)?;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    // NB: writing to and finishing an encoder over a Vec cannot fail: only the inner writer's
    // errors are returned, and a Vec's writes do not fail.
    let compressed = encoder
        .write_all(&json)
        .and_then(|()| encoder.finish())
        .unwrap_or_default();
    if compressed.len() <= part_bytes {
        return Ok(EncodedPlan {
            plan_value: compressed,
            parts: Vec::new(),
        });
    }
    let parts: Vec<Vec<u8>> = compressed.chunks(part_bytes).map(<[u8]>::to_vec).collect();
    let manifest = PartsManifest {
        revision: plan.revision,
        parts: parts.len(),
    };
    Ok(EncodedPlan {
        plan_value: serde_json::to_vec(&manifest)?,
        parts,
    })
}

/// Reads a plan key's value: a compressed plan, a manifest of parts, or (from an operator before
/// compression) a plan in plain JSON, returned as it is.
pub fn decode_key(value: &[u8]) -> Result<PlanKeyValue, PlanDecodeError> {
    if value.starts_with(&GZIP_MAGIC) {
        return decompress(value).map(PlanKeyValue::Json);
    }
    match serde_json::from_slice::<PartsManifest>(value) {
        Ok(manifest) => Ok(PlanKeyValue::Parts {
            revision: manifest.revision,
            parts: manifest.parts,
        }),
        Err(_) => Ok(PlanKeyValue::Json(value.to_vec())),
    }
}

/// Joins the `expected` parts a manifest named, in key order, into the plan's JSON document.
pub fn join_parts(parts: &[&[u8]], expected: usize) -> Result<Vec<u8>, PlanDecodeError> {
    if parts.len() != expected {
        return Err(PlanDecodeError::MissingParts {
            expected,
            found: parts.len(),
        });
    }
    decompress(&parts.concat())
}

fn decompress(compressed: &[u8]) -> Result<Vec<u8>, PlanDecodeError> {
    let mut json = Vec::new();
    GzDecoder::new(compressed)
        .take(MAX_PLAN_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|source| PlanDecodeError::Gzip { source })?;
    if json.len() as u64 > MAX_PLAN_BYTES {
        return Err(PlanDecodeError::TooLarge);
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::published::{BudgetSummary, GpuTarget, NodePlan, WorkloadSummary, test_plan};
    use kilowatt_solver::model::WorkloadKind;
    use std::collections::BTreeMap;

    /// etcd's default `--max-request-bytes`.
    const ETCD_REQUEST_LIMIT: usize = 1_572_864;

    /// A plan for `nodes` nodes of 8 GPUs, one 8-GPU training job per node, 16 nodes per rack; the
    /// numbers vary per node as a real plan's do, so that compression has no easy ride (and are
    /// dyadic, so that they survive JSON exactly).
    fn fleet_plan(nodes: usize) -> PublishedPlan {
        let mut plans = BTreeMap::new();
        let mut workloads = Vec::new();
        for n in 0..nodes {
            let name = format!("gpu-{n:06}.dc1.example.com");
            let pod = format!("research/llm-pretrain-{n:06}-worker-0");
            let watts = 200.0 + (n * 37 % 4000) as f64 / 8.0;
            plans.insert(
                name.clone(),
                NodePlan {
                    revision: 1000 + (n % 97) as u64,
                    budget: format!("rack-{:05}", n / 16),
                    overhead_watts: 1200.0,
                    gpus: (0..8)
                        .map(|index| GpuTarget {
                            id: format!("{name}/gpu{index}"),
                            index,
                            power_limit_watts: watts + f64::from(index),
                            sm_clock_mhz: Some(1410),
                            floor_watts: 200.0,
                            pod: Some(pod.clone()),
                        })
                        .collect(),
                    unacknowledged: Vec::new(),
                    written_at: Some(format!("2026-12-02T04:{:02}:{:02}.{n:06}Z", n % 60, n % 59)),
                    work_counters: Vec::new(),
                },
            );
            workloads.push(WorkloadSummary {
                name: format!("research/llm-pretrain-{n:06}"),
                kind: WorkloadKind::Training,
                pods: vec![pod],
                gpus: 8,
                power_limit_watts: watts,
                sm_clock_mhz: Some(1410),
                normalized_throughput: 0.5 + (n % 512) as f64 / 1024.0,
                profile: "default-training-H100-SXM".into(),
            });
        }
        let budgets = (0..nodes.div_ceil(16))
            .map(|rack| BudgetSummary {
                name: format!("rack-{rack:05}"),
                parent: Some("facility".into()),
                effective_cap_watts: 80_000.0,
                planning_cap_watts: 79_000.0,
                allocated_watts: 70_000.0 + rack as f64,
                headroom_watts: 9_000.0 - rack as f64,
                nodes: 16,
                gpus: 128,
                normalized_throughput: 0.95,
                open_windows: Vec::new(),
                efficiency: None,
            })
            .collect();
        test_plan(7, budgets, workloads, plans)
    }

    fn parts(encoded: &EncodedPlan) -> Vec<&[u8]> {
        encoded.parts.iter().map(Vec::as_slice).collect()
    }

    fn round_trip(encoded: &EncodedPlan) -> PublishedPlan {
        let json = match decode_key(&encoded.plan_value).expect("decodes") {
            PlanKeyValue::Json(json) => json,
            PlanKeyValue::Parts { parts: count, .. } => {
                join_parts(&parts(encoded), count).expect("parts decode")
            }
        };
        serde_json::from_slice(&json).expect("a plan")
    }

    #[test]
    fn at_100000_gpus_every_value_fits_one_etcd_request_and_reads_back() {
        let plan = fleet_plan(12_500);
        let whole = serde_json::to_vec(&plan).expect("encodes").len();
        let encoded = encode(&plan).expect("encodes");
        let largest = encoded
            .parts
            .iter()
            .map(Vec::len)
            .chain([encoded.plan_value.len()])
            .max()
            .unwrap_or_default();
        eprintln!(
            "plan of 100,000 GPUs: {whole} bytes as whole JSON, {} bytes in the plan key, {} parts, largest value {largest} bytes",
            encoded.plan_value.len(),
            encoded.parts.len()
        );
        assert!(
            whole > ETCD_REQUEST_LIMIT,
            "the whole plan would not fit: {whole}"
        );
        assert!(largest <= PART_BYTES && 2 * PART_BYTES < ETCD_REQUEST_LIMIT);
        assert_eq!(round_trip(&encoded), plan);
    }

    #[test]
    fn a_plan_larger_than_a_part_is_split_and_joined_in_order() {
        let plan = fleet_plan(2_000);
        let part_bytes = 4096;
        let encoded = encode_in_parts_of(&plan, part_bytes).expect("encodes");
        assert!(encoded.parts.len() > 2, "{} parts", encoded.parts.len());
        assert!(encoded.parts.iter().all(|p| p.len() <= part_bytes));
        assert_eq!(
            decode_key(&encoded.plan_value).expect("manifest"),
            PlanKeyValue::Parts {
                revision: 7,
                parts: encoded.parts.len()
            }
        );
        assert_eq!(round_trip(&encoded), plan);
        let count = encoded.parts.len();
        let mut swapped = parts(&encoded);
        swapped.swap(0, 1);
        assert!(join_parts(&swapped, count).is_err());
        assert!(join_parts(&parts(&encoded)[..count - 1], count).is_err());
        let mut mixed = parts(&encoded);
        let other = encode_in_parts_of(&fleet_plan(2_001), part_bytes).expect("encodes");
        mixed[1] = &other.parts[1];
        assert!(
            join_parts(&mixed, count).is_err(),
            "parts of two plans joined"
        );
    }

    #[test]
    fn a_whole_plan_in_plain_json_from_an_earlier_operator_still_reads() {
        let plan = fleet_plan(3);
        let value = serde_json::to_vec(&plan).expect("encodes");
        assert_eq!(
            decode_key(&value).expect("decodes"),
            PlanKeyValue::Json(value)
        );
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        assert!(decode_key(&[0x1f, 0x8b, 0, 1, 2]).is_err());
        assert!(join_parts(&[b"\x1f\x8b"], 1).is_err());
        assert!(join_parts(&[], 0).is_err());
    }
}
