//! The plan in etcd: reads the current plan (a restarted operator does this before publishing) and
//! publishes new ones in fenced transactions, so a replica that lost leadership cannot overwrite a
//! newer plan. Does network IO (etcd).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use crate::published::{KeyLayout, NodePlan, PublishedPlan};
use crate::rollout::AgentView;

/// etcd's default limit on operations in one transaction is 128; stay under it.
const OPS_PER_TXN: usize = 100;

/// Why the plan could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connecting to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("reading {key} from etcd: {source}")]
    Read {
        key: String,
        source: etcd_client::Error,
    },
    #[error("writing the plan to etcd: {source}")]
    Write { source: etcd_client::Error },
    #[error("encoding the plan: {source}")]
    Encode { source: serde_json::Error },
    /// Another writer changed the plan key since this replica last read it.
    #[error("the plan in etcd changed since it was read (another operator replica published)")]
    Fenced,
}

impl StoreError {
    /// A fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            StoreError::Connect { .. } | StoreError::Read { .. } | StoreError::Write { .. } => {
                "etcd"
            }
            StoreError::Encode { .. } => "encode",
            StoreError::Fenced => "fenced",
        }
    }
}

/// What etcd held at the last read or write.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The plan, when one exists and decodes.
    pub plan: Option<PublishedPlan>,
    /// The plan key's mod revision (0: absent); the fence for the next publish.
    pub mod_revision: i64,
    /// Times the plan key was written since it was created: the next revision is above it.
    pub version: i64,
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { source })
}

/// A connection to the etcd that holds plans.
#[derive(Clone)]
pub struct PlanStore {
    client: Client,
    keys: KeyLayout,
}

/// An etcd user and password (`--etcd-user`, `--etcd-password-file`). `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl PlanStore {
    /// Connects without authentication (an etcd with auth disabled).
    pub async fn connect(
        endpoints: &[String],
        keys: KeyLayout,
        timeout: Duration,
    ) -> Result<PlanStore, StoreError> {
        PlanStore::connect_as(endpoints, keys, timeout, None).await
    }

    /// Connects as `credentials`' user when given. The operator's user needs the root role: it
    /// writes every plan key and manages the agents' users and roles.
    pub async fn connect_as(
        endpoints: &[String],
        keys: KeyLayout,
        timeout: Duration,
        credentials: Option<&EtcdCredentials>,
    ) -> Result<PlanStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        if let Some(credentials) = credentials {
            // NB: etcd's simple auth tokens expire after --auth-token-ttl (5 min) without use; a
            // long --resync-seconds leaves the client idle that long, so it re-authenticates.
            options = options
                .with_user(credentials.user.as_str(), credentials.password.as_str())
                .with_auto_token_refresh(true);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| StoreError::Connect {
                endpoints: endpoints.join(","),
                source,
            })?;
        Ok(PlanStore { client, keys })
    }

    /// The etcd client, connected as the operator's user (for managing agents' credentials).
    pub fn etcd_client(&self) -> Client {
        self.client.clone()
    }

    /// Reads the current plan and its fence. A plan that does not decode (written by an incompatible
    /// version) counts as absent, but its version still orders the next revision above it.
    pub async fn load(&self) -> Result<Loaded, StoreError> {
        let key = self.keys.plan();
        let mut kv = self.client.kv_client();
        let response = kv
            .get(key.as_str(), None)
            .await
            .map_err(|source| StoreError::Read {
                key: key.clone(),
                source,
            })?;
        let Some(entry) = response.kvs().first() else {
            return Ok(Loaded {
                plan: None,
                mod_revision: 0,
                version: 0,
            });
        };
        let plan = match serde_json::from_slice::<PublishedPlan>(entry.value()) {
            Ok(plan) => Some(plan),
            Err(error) => {
                tracing::warn!(%key, %error, "the plan in etcd does not decode; it will be replaced");
                None
            }
        };
        Ok(Loaded {
            plan,
            mod_revision: entry.mod_revision(),
            version: entry.version(),
        })
    }

    /// The plan as stored, for `GET /api/v1/plan` (raw JSON, not re-encoded).
    pub async fn read_raw(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.keys.plan();
        let mut kv = self.client.kv_client();
        let response = kv
            .get(key.as_str(), None)
            .await
            .map_err(|source| StoreError::Read { key, source })?;
        Ok(response.kvs().first().map(|e| e.value().to_vec()))
    }

    /// Node plans stored under the node prefix, by node name (tests and diagnostics).
    pub async fn node_plans(&self) -> Result<Vec<(String, NodePlan)>, StoreError> {
        Ok(self
            .read_views()
            .await?
            .into_iter()
            .filter_map(|(node, view)| view.written.map(|plan| (node, plan)))
            .collect())
    }

    /// What etcd says about every node's agent: the node plan written, and — bound to the agent's
    /// lease, so absent once it expired — its acknowledgement and inventory.
    pub async fn read_views(&self) -> Result<BTreeMap<String, AgentView>, StoreError> {
        let prefix = self.keys.node_prefix();
        let mut kv = self.client.kv_client();
        let response = kv
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|source| StoreError::Read {
                key: prefix.clone(),
                source,
            })?;
        let mut views: BTreeMap<String, AgentView> = BTreeMap::new();
        for entry in response.kvs() {
            let Some((node, kind)) = entry
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
                .and_then(|rest| rest.rsplit_once('/'))
            else {
                continue;
            };
            let view = views.entry(node.to_owned()).or_default();
            // NB: an undecodable document counts as absent; for an inventory that means "no live
            // agent", so the node's plan is lowered to its floors rather than trusted.
            match kind {
                "plan" => view.written = serde_json::from_slice(entry.value()).ok(),
                "ack" => view.ack = serde_json::from_slice(entry.value()).ok(),
                "inventory" => view.inventory = serde_json::from_slice(entry.value()).ok(),
                "power" => view.power = serde_json::from_slice(entry.value()).ok(),
                _ => {}
            }
        }
        Ok(views)
    }

    /// Publishes the desired `plan` and the node plans of this rollout step (`writes`, over what is
    /// `written` now); node keys of nodes no longer planned are deleted. Lowered nodes go first, raised
    /// ones after, the plan key last; every transaction is fenced on the plan key's mod revision, so
    /// nothing is written once another replica has published. Returns the new fence.
    pub async fn publish(
        &self,
        plan: &PublishedPlan,
        writes: &BTreeMap<String, NodePlan>,
        written: &BTreeMap<String, NodePlan>,
        loaded: &Loaded,
    ) -> Result<Loaded, StoreError> {
        let total = |n: &NodePlan| n.gpus.iter().map(|g| g.power_limit_watts).sum::<f64>();
        let mut changed: Vec<(f64, TxnOp)> = Vec::new();
        for (node, node_plan) in writes {
            let delta = total(node_plan) - written.get(node).map_or(f64::INFINITY, total);
            changed.push((
                delta,
                TxnOp::put(self.keys.node_plan(node), encode(node_plan)?, None),
            ));
        }
        // A node that left every budget keeps no plan key; its agent falls back to its own floor.
        for node in written.keys() {
            if !plan.nodes.contains_key(node) {
                changed.push((
                    f64::NEG_INFINITY,
                    TxnOp::delete(self.keys.node_plan(node), None),
                ));
            }
        }
        // NB: lower before raise within the step too: an agent reading between two transactions of
        // a large step sees its decrease only after every other decrease has landed.
        changed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut operations: Vec<TxnOp> = changed.into_iter().map(|(_, op)| op).collect();
        operations.push(TxnOp::put(self.keys.plan(), encode(plan)?, None));

        let mut kv = self.client.kv_client();
        let fence_key = self.keys.plan();
        let mut last_revision = loaded.mod_revision;
        for chunk in operations.chunks(OPS_PER_TXN) {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    fence_key.as_str(),
                    CompareOp::Equal,
                    loaded.mod_revision,
                )])
                .and_then(chunk.to_vec());
            let response = kv
                .txn(txn)
                .await
                .map_err(|source| StoreError::Write { source })?;
            if !response.succeeded() {
                return Err(StoreError::Fenced);
            }
            last_revision = response.header().map_or(last_revision, |h| h.revision());
        }
        Ok(Loaded {
            plan: Some(plan.clone()),
            mod_revision: last_revision,
            version: loaded.version + 1,
        })
    }
}
