//! The plan store in etcd: fenced transactions, so a replica that lost leadership cannot overwrite a
//! newer plan. Network IO.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp,
};

use super::{
    KeyWrite, Loaded, PlanJson, PlanStore, StoreError, decode_plan, join_plan_parts, plan_json,
    publish_operations, transactions, views_from_entries,
};
use crate::plan::published::{KeyLayout, NodePlan, PublishedPlan};
use crate::plan::rollout::AgentView;

/// Keys per page of a prefix read: a node has four keys of at most a few KiB, so a page stays well
/// under the etcd client's 4 MiB message limit.
const KEYS_PER_PAGE: i64 = 1000;

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

    /// The plan key's JSON document with the key's entry, joined from its parts when it has them
    /// (read at the same revision as the key, so from the same publish). `None` when absent.
    async fn read_plan_document(&self) -> Result<Option<(KeyValue, Option<Vec<u8>>)>, StoreError> {
        let key = self.keys.plan();
        let mut response = self.get(&key).await?;
        let at = response.header().map_or(0, |h| h.revision());
        let Some(entry) = response.take_kvs().into_iter().next() else {
            return Ok(None);
        };
        let json = match plan_json(&self.keys, entry.value()) {
            PlanJson::Whole(json) => Some(json),
            PlanJson::Unreadable => None,
            PlanJson::InParts { from, to, count } => {
                let options = GetOptions::new().with_range(to).with_revision(at);
                let parts = self
                    .client
                    .kv_client()
                    .get(from.as_str(), Some(options))
                    .await
                    .map_err(|source| StoreError::Read { key: from, source })?;
                let values: Vec<&[u8]> = parts.kvs().iter().map(KeyValue::value).collect();
                join_plan_parts(&self.keys, &values, count)
            }
        };
        Ok(Some((entry, json)))
    }

    /// Every key under `prefix`, [`KEYS_PER_PAGE`] at a time, all pages at the revision of the first
    /// so that together they are one snapshot. One response with every node's keys would outgrow
    /// the client's 4 MiB message limit at about 1,300 nodes of 8 GPUs (docs/plan-protocol.md).
    async fn get_prefix_in_pages(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let read_error = |source| StoreError::Read {
            key: prefix.to_owned(),
            source,
        };
        let end = prefix_end(prefix.as_bytes());
        let mut kv = self.client.kv_client();
        let mut from = prefix.as_bytes().to_vec();
        let mut snapshot = 0;
        let mut entries = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(KEYS_PER_PAGE)
                .with_revision(snapshot);
            let mut page = kv
                .get(from.clone(), Some(options))
                .await
                .map_err(read_error)?;
            if snapshot == 0 {
                snapshot = page.header().map_or(0, |h| h.revision());
            }
            let more = page.more();
            let kvs = page.take_kvs();
            let Some(last) = kvs.last() else {
                break;
            };
            // NB: the next page starts just after the last key: the key with a zero byte appended
            // is the smallest key above it.
            from = [last.key(), &[0]].concat();
            entries.extend(kvs);
            if !more {
                break;
            }
        }
        Ok(entries)
    }
}

/// The end of the key range of `prefix`: the smallest key above every key that starts with it.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // NB: a prefix of 0xff bytes only (or none) ends at the end of the key space, which etcd
    // spells as the single byte 0.
    vec![0]
}

impl PlanStore for EtcdPlanStore {
    async fn take_over(&self) -> Result<i64, StoreError> {
        // NB: the value is unused; the put's revision is the epoch.
        let response = self
            .client
            .kv_client()
            .put(self.keys.leader_epoch(), Vec::new(), None)
            .await
            .map_err(|source| StoreError::Write { source })?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    async fn load(&self) -> Result<Loaded, StoreError> {
        let key = self.keys.plan();
        let Some((entry, json)) = self.read_plan_document().await? else {
            return Ok(Loaded {
                plan: None,
                mod_revision: 0,
                version: 0,
                epoch: 0,
            });
        };
        Ok(Loaded {
            plan: json.and_then(|json| decode_plan(&key, &json)),
            mod_revision: entry.mod_revision(),
            version: entry.version(),
            epoch: 0,
        })
    }

    async fn read_raw(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read_plan_document().await?.and_then(|(_, json)| json))
    }

    async fn read_views(&self) -> Result<BTreeMap<String, AgentView>, StoreError> {
        let entries = self.get_prefix_in_pages(&self.keys.node_prefix()).await?;
        Ok(views_from_entries(
            &self.keys,
            entries
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
        let operations = publish_operations(&self.keys, plan, writes, written)?;
        let mut kv = self.client.kv_client();
        let fence_key = self.keys.plan();
        let epoch_key = self.keys.leader_epoch();
        let mut last_revision = loaded.mod_revision;
        for chunk in transactions(operations) {
            let chunk: Vec<TxnOp> = chunk
                .into_iter()
                .map(|write| match write {
                    KeyWrite::Put { key, value } => TxnOp::put(key, value, None),
                    KeyWrite::Delete { key } => TxnOp::delete(key, None),
                    KeyWrite::DeleteRange { from, to } => {
                        TxnOp::delete(from, Some(DeleteOptions::new().with_range(to)))
                    }
                })
                .collect();
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(
                        fence_key.as_str(),
                        CompareOp::Equal,
                        loaded.mod_revision,
                    ),
                    Compare::mod_revision(epoch_key.as_str(), CompareOp::Equal, loaded.epoch),
                ])
                .and_then(chunk);
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
            epoch: loaded.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_range_ends_just_above_its_last_key() {
        assert_eq!(prefix_end(b"/kilowatt/nodes/"), b"/kilowatt/nodes0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
