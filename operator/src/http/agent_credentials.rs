//! Node-bound etcd credentials for node agents, as the kubelet's node authorizer binds a kubelet to its
//! node: an agent proves which node it runs on with its projected ServiceAccount token (checked with a
//! TokenReview), and gets an etcd user whose role may write only that node's keys. Does etcd and
//! Kubernetes IO; the names, the key permissions and the verdict on a review are pure functions.

use std::fmt;
use std::str::FromStr;

use etcd_client::{Client as EtcdClient, Permission, RoleRevokePermissionOptions};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kilowatt_crds::plan::AgentCredentials;
use kube::api::{Api, PostParams};
use rand::TryRng;
use rand::rngs::{SysError, SysRng};

use crate::plan::published::KeyLayout;

/// The audience agents' tokens must be issued for: a token meant for another service (or for the API
/// server itself) is refused here, and an agent's token is of no use to anything else.
pub const AUDIENCE: &str = "kilowatt";

/// Where the API server puts the node of a pod-bound token in a TokenReview's `status.user.extra`.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Random bytes in an agent's password (hex-encoded: twice as many characters).
const PASSWORD_BYTES: usize = 24;

/// The etcd user of node `node`'s agent, and the role it holds (the same name).
pub fn agent_name(node: &str) -> String {
    format!("kilowatt-agent-{node}")
}

/// What a role may do with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One key an agent's role may use, exactly that key (no range, no prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrant {
    pub key: String,
    pub access: Access,
}

impl KeyGrant {
    fn permission(&self) -> Permission {
        match self.access {
            Access::Read => Permission::read(self.key.as_str()),
            Access::ReadWrite => Permission::read_write(self.key.as_str()),
        }
    }
}

/// Every key node `node`'s agent may use: its inventory, acknowledgement and power report (read and
/// write), and its plan (read, and so watch). Nothing else: not the whole plan, not another node's keys.
pub fn node_grants(keys: &KeyLayout, node: &str) -> Vec<KeyGrant> {
    let grant = |key: String, access: Access| KeyGrant { key, access };
    vec![
        grant(keys.node_inventory(node), Access::ReadWrite),
        grant(keys.node_ack(node), Access::ReadWrite),
        grant(keys.node_power(node), Access::ReadWrite),
        grant(keys.node_plan(node), Access::Read),
    ]
}

/// Permissions a role holds beyond `grants`, as (key, range end) to revoke: left over from another key
/// prefix or an older version, they would let the agent touch keys that are not its node's.
pub fn stale_permissions(held: &[Permission], grants: &[KeyGrant]) -> Vec<(Vec<u8>, Vec<u8>)> {
    held.iter()
        .filter(|p| {
            !p.range_end().is_empty() || !grants.iter().any(|g| g.key.as_bytes() == p.key())
        })
        .map(|p| (p.key().to_vec(), p.range_end().to_vec()))
        .collect()
}

/// The grants `held` lacks, or holds with another access type.
pub fn missing_grants<'a>(held: &[Permission], grants: &'a [KeyGrant]) -> Vec<&'a KeyGrant> {
    grants
        .iter()
        .filter(|g| {
            let wanted = g.permission();
            !held.iter().any(|p| {
                p.key() == wanted.key()
                    && p.range_end().is_empty()
                    && p.get_type() == wanted.get_type()
            })
        })
        .collect()
}

/// A node name that cannot be used in a key or a user name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is not a valid node name (a DNS-1123 subdomain: at most 253 characters, lowercase \
     letters, digits, '-' and '.', every dot-separated part starting and ending with a letter or digit)"
)]
pub struct InvalidNodeName {
    pub name: String,
}

/// Accepts exactly the names Kubernetes accepts for a Node (DNS-1123 subdomains), so a name taken from
/// a token can neither climb out of its node's keys (`/`, `..`) nor widen a key into a prefix.
pub fn validate_node_name(name: &str) -> Result<(), InvalidNodeName> {
    let part_ok = |part: &str| {
        let bytes = part.as_bytes();
        let inner_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let end_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        bytes.iter().all(inner_ok)
            && bytes.first().is_some_and(end_ok)
            && bytes.last().is_some_and(end_ok)
    };
    if name.len() <= 253 && name.split('.').all(part_ok) {
        Ok(())
    } else {
        Err(InvalidNodeName {
            name: name.to_owned(),
        })
    }
}

/// A ServiceAccount, written `namespace/name` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountRef {
    /// The user name its tokens authenticate as.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A ServiceAccount reference that is not `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not NAMESPACE/NAME")]
pub struct InvalidServiceAccountRef(String);

impl FromStr for ServiceAccountRef {
    type Err = InvalidServiceAccountRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(ServiceAccountRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(InvalidServiceAccountRef(s.to_owned())),
        }
    }
}

/// Why a token does not earn credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the request carries no bearer token")]
    NoToken,
    #[error("the token is not valid for audience {AUDIENCE}: {reason}")]
    Unauthenticated { reason: String },
    #[error("the token belongs to {user}, not to the agents' ServiceAccount ({expected})")]
    WrongServiceAccount { user: String, expected: String },
    #[error(
        "the token is not bound to a pod on a node (its review has no {NODE_NAME_EXTRA}); the agent \
         must send its pod's projected ServiceAccount token with audience {AUDIENCE}"
    )]
    NoNodeBinding,
    #[error("the token names {count} nodes in {NODE_NAME_EXTRA}, not exactly one")]
    SeveralNodes { count: usize },
    #[error("the token's node")]
    InvalidNode(#[from] InvalidNodeName),
}

impl Rejection {
    /// Whether the caller is unknown (HTTP 401) rather than known and not allowed (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Rejection::NoToken | Rejection::Unauthenticated { .. })
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, Rejection> {
    authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or(Rejection::NoToken)
}

/// The node a reviewed token is bound to, when it is a token of `agent` for [`AUDIENCE`] bound to a pod
/// on exactly one node.
pub fn node_of(status: &TokenReviewStatus, agent: &ServiceAccountRef) -> Result<String, Rejection> {
    if status.authenticated != Some(true) {
        return Err(Rejection::Unauthenticated {
            reason: status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server did not authenticate it".to_owned()),
        });
    }
    // NB: an authenticator that ignores audiences could authenticate a token issued for something
    // else; the review names the audiences it checked, and ours must be among them.
    if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
        return Err(Rejection::Unauthenticated {
            reason: format!("the API server did not confirm audience {AUDIENCE}"),
        });
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let expected = agent.username();
    if username != expected {
        return Err(Rejection::WrongServiceAccount {
            user: username,
            expected,
        });
    }
    let nodes = user
        .extra
        .unwrap_or_default()
        .remove(NODE_NAME_EXTRA)
        .unwrap_or_default();
    match nodes.as_slice() {
        [] => Err(Rejection::NoNodeBinding),
        [node] => {
            validate_node_name(node)?;
            Ok(node.clone())
        }
        several => Err(Rejection::SeveralNodes {
            count: several.len(),
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A password drawn from the operating system's random source.
fn fresh_password() -> Result<String, SysError> {
    let mut bytes = [0u8; PASSWORD_BYTES];
    SysRng.try_fill_bytes(&mut bytes)?;
    Ok(hex(&bytes))
}

/// etcd answers a lookup of a role or user that does not exist with FailedPrecondition "... not
/// found": the normal case on a node's first issue.
fn not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::FailedPrecondition
            && status.message().contains("not found"))
}

/// Why credentials could not be issued (the caller was accepted).
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{operation} for node {node} in etcd")]
    Etcd {
        operation: &'static str,
        node: String,
        source: etcd_client::Error,
    },
    #[error("drawing a random password")]
    Random(#[from] SysError),
    #[error(transparent)]
    InvalidNode(#[from] InvalidNodeName),
}

/// Why a request for credentials failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("reviewing the token with the API server")]
    Review(#[source] kube::Error),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("the issuing task ended without an answer")]
    Interrupted(#[source] tokio::task::JoinError),
}

impl CredentialsError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CredentialsError::Rejected(r) if r.is_unauthenticated() => "unauthenticated",
            CredentialsError::Rejected(_) => "forbidden",
            CredentialsError::Review(_) => "kube",
            CredentialsError::Issue(_) => "etcd",
            CredentialsError::Interrupted(_) => "internal",
        }
    }
}

/// Issues agents' credentials: reviews their tokens with the API server, then writes their role and
/// user to etcd as the operator's root user. Any replica may serve it: every step is idempotent.
#[derive(Clone)]
pub struct CredentialIssuer {
    kube: kube::Client,
    etcd: EtcdClient,
    keys: KeyLayout,
    agent: ServiceAccountRef,
    /// Counts every auth change as it is made, also those of an issue that fails half-way.
    auth_writes: prometheus::IntCounter,
    /// Issues under way at once, at most [`ISSUES_AT_ONCE`].
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

/// How many issues run at once; the others wait their turn, at most [`ISSUE_QUEUE_WAIT`]. Several at
/// once let etcd commit their writes together; unbounded, a fleet asking together would all wait past
/// their timeouts (with 4 at once, 200 agents got 1.5 issues a second on 2 busy cores).
pub const ISSUES_AT_ONCE: usize = 32;

/// How long a request waits for its turn before it is answered 503 (busy): well below the agents' 5 s
/// wait for an answer.
pub const ISSUE_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl CredentialIssuer {
    /// `etcd` must be connected as a user with the root role (user management needs it).
    pub fn new(
        kube: kube::Client,
        etcd: EtcdClient,
        keys: KeyLayout,
        agent: ServiceAccountRef,
        auth_writes: prometheus::IntCounter,
    ) -> CredentialIssuer {
        CredentialIssuer {
            kube,
            etcd,
            keys,
            agent,
            auth_writes,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(ISSUES_AT_ONCE)),
        }
    }

    /// Permits for issues under way; a request holds one while it is issued.
    pub fn in_flight(&self) -> std::sync::Arc<tokio::sync::Semaphore> {
        self.in_flight.clone()
    }

    /// Credentials for the node `token` is bound to, when it is an agent's token.
    pub async fn issue_for_token(&self, token: &str) -> Result<Issued, CredentialsError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.kube.clone());
        let reviewed = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(CredentialsError::Review)?;
        let node = node_of(&reviewed.status.unwrap_or_default(), &self.agent)?;
        Ok(self.issue(&node).await?)
    }

    /// Makes sure node `node`'s role holds exactly its grants and its user holds the role, and gives
    /// the user a fresh password (any earlier password, and the tokens etcd issued for it, stop working).
    /// Only what differs is written: etcd applies every auth change through its consensus log, and a
    /// thousand agents asking at once must not cost eight writes each.
    pub async fn issue(&self, node: &str) -> Result<Issued, IssueError> {
        validate_node_name(node)?;
        let name = agent_name(node);
        let mut etcd = self.etcd.clone();
        let failed = |operation: &'static str| {
            move |source| IssueError::Etcd {
                operation,
                node: node.to_owned(),
                source,
            }
        };
        let mut auth_writes = 0;
        let mut wrote = || {
            auth_writes += 1;
            self.auth_writes.inc();
        };
        let held = match etcd.role_get(name.as_str()).await {
            Ok(role) => role.permissions(),
            Err(error) if not_found(&error) => {
                etcd.role_add(name.as_str())
                    .await
                    .map_err(failed("adding the role"))?;
                wrote();
                Vec::new()
            }
            Err(error) => return Err(failed("reading the role")(error)),
        };
        let grants = node_grants(&self.keys, node);
        for grant in missing_grants(&held, &grants) {
            // NB: granting a key the role holds replaces its access type.
            etcd.role_grant_permission(name.as_str(), grant.permission())
                .await
                .map_err(failed("granting the role a key"))?;
            wrote();
        }
        for (key, range_end) in stale_permissions(&held, &grants) {
            let range = RoleRevokePermissionOptions::new().with_range_end(range_end);
            etcd.role_revoke_permission(name.as_str(), key, Some(range))
                .await
                .map_err(failed("revoking a stale key from the role"))?;
            wrote();
        }
        // NB: etcd keeps only a hash of a password, so even a repeat issue writes a new one.
        let password = fresh_password()?;
        let roles = match etcd.user_get(name.as_str()).await {
            Ok(user) => {
                etcd.user_change_password(name.as_str(), password.as_str())
                    .await
                    .map_err(failed("changing the user's password"))?;
                user.roles().to_vec()
            }
            Err(error) if not_found(&error) => {
                etcd.user_add(name.as_str(), password.as_str(), None)
                    .await
                    .map_err(failed("adding the user"))?;
                Vec::new()
            }
            Err(error) => return Err(failed("reading the user")(error)),
        };
        wrote();
        if !roles.contains(&name) {
            etcd.user_grant_role(name.as_str(), name.as_str())
                .await
                .map_err(failed("granting the user its role"))?;
            wrote();
        }
        Ok(Issued {
            credentials: AgentCredentials {
                user: name,
                password,
                node: node.to_owned(),
            },
            auth_writes,
        })
    }
}

/// Credentials issued, and how many auth changes etcd had to apply for them.
#[derive(Debug)]
pub struct Issued {
    pub credentials: AgentCredentials,
    pub auth_writes: usize,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn agent() -> ServiceAccountRef {
        "kilowatt-system/kilowatt-agent".parse().expect("reference")
    }

    fn review(user: &str, nodes: &[&str]) -> TokenReviewStatus {
        let extra = (!nodes.is_empty()).then(|| {
            BTreeMap::from([(
                NODE_NAME_EXTRA.to_owned(),
                nodes.iter().map(|n| (*n).to_owned()).collect(),
            )])
        });
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![AUDIENCE.to_owned()]),
            user: Some(UserInfo {
                username: Some(user.to_owned()),
                extra,
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    const AGENT_USER: &str = "system:serviceaccount:kilowatt-system:kilowatt-agent";

    #[test]
    fn an_agent_may_write_its_own_reports_and_only_read_its_plan() {
        let grants = node_grants(&KeyLayout::new("/kilowatt"), "gpu-1");
        let shown: Vec<(&str, Access)> =
            grants.iter().map(|g| (g.key.as_str(), g.access)).collect();
        assert_eq!(
            shown,
            [
                ("/kilowatt/v1/nodes/gpu-1/inventory", Access::ReadWrite),
                ("/kilowatt/v1/nodes/gpu-1/ack", Access::ReadWrite),
                ("/kilowatt/v1/nodes/gpu-1/power", Access::ReadWrite),
                ("/kilowatt/v1/nodes/gpu-1/plan", Access::Read),
            ]
        );
        assert_eq!(agent_name("gpu-1"), "kilowatt-agent-gpu-1");
    }

    #[test]
    fn grants_are_single_keys_never_ranges() {
        for grant in node_grants(&KeyLayout::new("/kilowatt"), "n1") {
            let permission = grant.permission();
            assert!(permission.range_end().is_empty(), "{grant:?}");
            assert!(
                !permission.is_prefix() && !permission.is_from_key(),
                "{grant:?}"
            );
        }
    }

    #[test]
    fn permissions_beyond_the_grants_are_stale() {
        let grants = node_grants(&KeyLayout::new("/kilowatt"), "n1");
        let held = [
            Permission::read_write("/kilowatt/v1/nodes/n1/ack"),
            Permission::read("/kilowatt/v1/nodes/n1/plan"),
            Permission::read_write("/old/v1/nodes/n1/ack"),
            Permission::read("/kilowatt/v1/nodes/n1/").with_range_end("/kilowatt/v1/nodes/n10"),
        ];
        assert_eq!(
            stale_permissions(&held, &grants),
            [
                (b"/old/v1/nodes/n1/ack".to_vec(), Vec::new()),
                (
                    b"/kilowatt/v1/nodes/n1/".to_vec(),
                    b"/kilowatt/v1/nodes/n10".to_vec()
                ),
            ]
        );
        assert!(stale_permissions(&[], &grants).is_empty());
    }

    #[test]
    fn only_grants_not_held_with_their_access_are_missing() {
        let grants = node_grants(&KeyLayout::new("/kilowatt"), "n1");
        let all_held: Vec<Permission> = grants.iter().map(KeyGrant::permission).collect();
        assert!(missing_grants(&all_held, &grants).is_empty());
        let missing = missing_grants(&[], &grants);
        assert_eq!(missing.len(), grants.len());
        let held = [
            Permission::read_write("/kilowatt/v1/nodes/n1/inventory"),
            Permission::read_write("/kilowatt/v1/nodes/n1/ack"),
            Permission::read("/kilowatt/v1/nodes/n1/power"),
            Permission::read("/kilowatt/v1/nodes/n1/plan")
                .with_range_end("/kilowatt/v1/nodes/n1/plaz"),
        ];
        let keys: Vec<&str> = missing_grants(&held, &grants)
            .iter()
            .map(|g| g.key.as_str())
            .collect();
        assert_eq!(
            keys,
            ["/kilowatt/v1/nodes/n1/power", "/kilowatt/v1/nodes/n1/plan"],
            "a key held read-only or as a range is granted again"
        );
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        for good in [
            "n1",
            "gpu-node-17",
            "a",
            "node.rack-3.example",
            &"a".repeat(253),
        ] {
            assert_eq!(validate_node_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "N1",
            "n1/",
            "../n2",
            "n1/ack",
            "-n1",
            "n1-",
            "n1..n2",
            ".n1",
            "n_1",
            "n1 ",
            &"a".repeat(254),
        ] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn service_accounts_are_namespace_slash_name() {
        let parsed = agent();
        assert_eq!(parsed.username(), AGENT_USER);
        assert_eq!(parsed.to_string(), "kilowatt-system/kilowatt-agent");
        for bad in ["kilowatt-agent", "/a", "a/", "a/b/c", ""] {
            assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bearer_token_is_taken_from_the_authorization_header() {
        assert_eq!(bearer_token(Some("Bearer abc.def")), Ok("abc.def"));
        for missing in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Basic abc"),
            Some("abc"),
        ] {
            assert_eq!(
                bearer_token(missing),
                Err(Rejection::NoToken),
                "{missing:?}"
            );
        }
    }

    #[test]
    fn an_agent_token_bound_to_a_pod_on_a_node_yields_that_node() {
        assert_eq!(
            node_of(&review(AGENT_USER, &["n1"]), &agent()),
            Ok("n1".to_owned())
        );
    }

    #[test]
    fn a_token_the_api_server_did_not_authenticate_is_unauthenticated() {
        let status = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".to_owned()),
            ..review(AGENT_USER, &["n1"])
        };
        let rejection = node_of(&status, &agent()).expect_err("rejected");
        assert!(rejection.is_unauthenticated());
        assert!(
            rejection.to_string().contains("token has expired"),
            "{rejection}"
        );
        let no_verdict = TokenReviewStatus::default();
        assert!(
            node_of(&no_verdict, &agent())
                .expect_err("rejected")
                .is_unauthenticated()
        );
    }

    #[test]
    fn a_token_not_confirmed_for_the_kilowatt_audience_is_unauthenticated() {
        for audiences in [
            None,
            Some(vec![]),
            Some(vec!["https://kubernetes.default.svc".to_owned()]),
        ] {
            let status = TokenReviewStatus {
                audiences: audiences.clone(),
                ..review(AGENT_USER, &["n1"])
            };
            let rejection = node_of(&status, &agent()).expect_err("rejected");
            assert!(rejection.is_unauthenticated(), "{audiences:?}");
        }
    }

    #[test]
    fn another_service_accounts_token_is_forbidden() {
        let rejection = node_of(
            &review("system:serviceaccount:ml:trainer", &["n1"]),
            &agent(),
        )
        .expect_err("rejected");
        assert!(!rejection.is_unauthenticated());
        assert!(
            rejection
                .to_string()
                .contains("system:serviceaccount:ml:trainer"),
            "{rejection}"
        );
    }

    #[test]
    fn a_token_without_exactly_one_valid_node_is_forbidden() {
        assert_eq!(
            node_of(&review(AGENT_USER, &[]), &agent()),
            Err(Rejection::NoNodeBinding)
        );
        assert_eq!(
            node_of(&review(AGENT_USER, &["n1", "n2"]), &agent()),
            Err(Rejection::SeveralNodes { count: 2 })
        );
        let invalid = node_of(&review(AGENT_USER, &["n1/../n2"]), &agent()).expect_err("rejected");
        assert!(matches!(invalid, Rejection::InvalidNode(_)), "{invalid:?}");
        assert!(!invalid.is_unauthenticated());
    }

    #[test]
    fn passwords_are_fresh_hex() {
        let first = fresh_password().expect("random source");
        let second = fresh_password().expect("random source");
        assert_eq!(first.len(), 2 * PASSWORD_BYTES);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(first, second);
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
