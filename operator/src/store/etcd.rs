//! The plan store in etcd: fenced transactions, so a replica that lost leadership cannot overwrite a
//! newer plan. Network IO.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use super::{
    KeyWrite, Loaded, PlanStore, StoreError, decode_plan, publish_operations, views_from_entries,
};
use crate::plan::published::{KeyLayout, NodePlan, PublishedPlan};
use crate::plan::rollout::AgentView;

/// etcd's default limit on operations in one transaction is 128; stay under it.
const OPS_PER_TXN: usize = 100;

/// A connection to the etcd that holds plans.
#[derive(Clone)]
pub struct EtcdPlanStore {
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

impl EtcdPlanStore {
    /// Connects without authentication (an etcd with auth disabled).
    pub async fn connect(
        endpoints: &[String],
        keys: KeyLayout,
        timeout: Duration,
    ) -> Result<EtcdPlanStore, StoreError> {
        EtcdPlanStore::connect_as(endpoints, keys, timeout, None, None).await
    }

    /// Connects as `credentials`' user when given, over TLS when `tls` is given (https:// endpoints).
    /// The operator's user needs the root role: it writes every plan key and manages the agents' users
    /// and roles.
    pub async fn connect_as(
        endpoints: &[String],
        keys: KeyLayout,
        timeout: Duration,
        credentials: Option<&EtcdCredentials>,
        tls: Option<&etcd_client::TlsOptions>,
    ) -> Result<EtcdPlanStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        if let Some(tls) = tls {
            options = options.with_tls(tls.clone());
        }
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
        Ok(EtcdPlanStore { client, keys })
    }

    /// The etcd client, connected as the operator's user (for managing agents' credentials).
    pub fn etcd_client(&self) -> Client {
        self.client.clone()
    }

    async fn get(&self, key: &str) -> Result<etcd_client::GetResponse, StoreError> {
        self.client
            .kv_client()
            .get(key, None)
            .await
            .map_err(|source| StoreError::Read {
                key: key.to_owned(),
                source,
            })
    }
}

impl PlanStore for EtcdPlanStore {
    async fn load(&self) -> Result<Loaded, StoreError> {
        let key = self.keys.plan();
        let response = self.get(&key).await?;
        let Some(entry) = response.kvs().first() else {
            return Ok(Loaded {
                plan: None,
                mod_revision: 0,
                version: 0,
            });
        };
        Ok(Loaded {
            plan: decode_plan(&key, entry.value()),
            mod_revision: entry.mod_revision(),
            version: entry.version(),
        })
    }

    async fn read_raw(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let response = self.get(&self.keys.plan()).await?;
        Ok(response.kvs().first().map(|e| e.value().to_vec()))
    }

    async fn read_views(&self) -> Result<BTreeMap<String, AgentView>, StoreError> {
        let prefix = self.keys.node_prefix();
        let response = self
            .client
            .kv_client()
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|source| StoreError::Read {
                key: prefix.clone(),
                source,
            })?;
        Ok(views_from_entries(
            &self.keys,
            response
                .kvs()
                .iter()
                .filter_map(|kv| Some((kv.key_str().ok()?, kv.value()))),
        ))
    }

    async fn publish(
        &self,
        plan: &PublishedPlan,
        writes: &BTreeMap<String, NodePlan>,
        written: &BTreeMap<String, NodePlan>,
        loaded: &Loaded,
    ) -> Result<Loaded, StoreError> {
        let operations: Vec<TxnOp> = publish_operations(&self.keys, plan, writes, written)?
            .into_iter()
            .map(|write| match write {
                KeyWrite::Put { key, value } => TxnOp::put(key, value, None),
                KeyWrite::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
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
