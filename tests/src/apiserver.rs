//! The control plane: upstream kube-apiserver (and helm) built from the pinned Go modules, on a real
//! etcd, with a kubeconfig; the committed CRDs and YAML installed as users do. Process, file and network IO.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};

use crate::{etcd::*, pki::*, processes::*, waits::*};

/// The Kubernetes version of the API server, the same minor as k8s-openapi's `v1_37` feature.
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// A running etcd + kube-apiserver pair, with its own temporary directory, ports and admin token.
pub struct ControlPlane {
    etcd: Etcd,
    apiserver: Child,
    dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Bearer token of a `system:masters` user.
    pub token: String,
    /// A kubeconfig for `server` and `token` (also usable with kubectl).
    pub kubeconfig: PathBuf,
    /// `http://127.0.0.1:PORT` of the etcd behind the API server; tests keep plans in it too, under
    /// their own prefix, as a separate etcd would hold them in a cluster.
    pub etcd_endpoint: String,
}
impl ControlPlane {
    /// Starts etcd and kube-apiserver on fresh ports and waits until the API server is ready.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        let apiserver_binary = tokio::task::spawn_blocking(kube_apiserver_binary).await??;
        let dir = std::env::temp_dir().join(format!(
            "kilowatt-cp-{}-{}",
            std::process::id(),
            try_free_port()?
        ));
        fs::create_dir_all(dir.join("certs"))?;

        let etcd = Etcd::start_in(dir.join("etcd"), None)?;
        let client_port = etcd.client_port;

        openssl(&["genrsa", "-out", "sa.key", "2048"], &dir)?;
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], &dir)?;
        let token = format!("kilowatt-test-{}", try_free_port()?);
        fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin-uid,\"system:masters\"\n"),
        )?;

        let port = try_free_port()?;
        let apiserver = spawn_logged(
            Command::new(&apiserver_binary)
                .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--secure-port={port}"))
                .arg(format!("--cert-dir={}", dir.join("certs").display()))
                .arg(format!(
                    "--token-auth-file={}",
                    dir.join("tokens.csv").display()
                ))
                .arg("--authorization-mode=RBAC")
                .arg("--service-account-issuer=https://kubernetes.default.svc")
                .arg(format!(
                    "--service-account-key-file={}",
                    dir.join("sa.pub").display()
                ))
                .arg(format!(
                    "--service-account-signing-key-file={}",
                    dir.join("sa.key").display()
                ))
                .arg("--service-cluster-ip-range=10.96.0.0/24")
                // The loopback address cannot be published as the `kubernetes` Service endpoint.
                .arg("--endpoint-reconciler-type=none")
                // No controller-manager runs, so no ServiceAccount objects exist for pods to use.
                .arg("--disable-admission-plugins=ServiceAccount"),
            &dir.join("kube-apiserver.log"),
        )
        .context("starting kube-apiserver")?;

        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.join("kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\n\
                 users:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n\
                 current-context: test\n"
            ),
        )?;
        let mut plane = ControlPlane {
            etcd,
            apiserver,
            dir,
            server,
            token,
            kubeconfig,
            etcd_endpoint: format!("http://127.0.0.1:{client_port}"),
        };
        plane.wait_ready(Duration::from_secs(90)).await?;
        Ok(plane)
    }

    /// Polls `/readyz` until the API server answers `ok`.
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last_error = String::from("no answer yet");
        while started.elapsed() < timeout {
            if let Some(status) = self.etcd.exited()? {
                bail!(
                    "etcd exited ({status}) before the API server was ready:\n{}",
                    self.etcd.log_tail()
                );
            }
            if let Some(status) = self.apiserver.try_wait()? {
                bail!(
                    "kube-apiserver exited ({status}) before it was ready:\n{}",
                    self.log_tail("kube-apiserver.log")
                );
            }
            let answer = async {
                let client = self.client().await?;
                let request = http::Request::get("/readyz").body(Vec::new())?;
                anyhow::Ok(client.request_text(request).await?)
            }
            .await;
            match answer {
                Ok(text) if text.trim() == "ok" => return Ok(()),
                Ok(text) => last_error = text,
                Err(e) => last_error = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "kube-apiserver not ready after {timeout:?}: {last_error}\n--- kube-apiserver.log (tail) ---\n{}",
            self.log_tail("kube-apiserver.log")
        )
    }

    /// The last lines of the API server's log (`kube-apiserver.log`), for failures.
    pub fn log_tail(&self, file: &str) -> String {
        log_tail_of(&self.dir, file)
    }

    /// A kube client authenticated as the admin user.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.config().await?)?)
    }

    /// A client whose requests the API server authorises as `user` (impersonation by the admin), e.g.
    /// `system:serviceaccount:kilowatt-system:kilowatt-operator`, so RBAC rules are really enforced.
    pub async fn client_as(&self, user: &str) -> anyhow::Result<kube::Client> {
        let mut config = self.config().await?;
        config.auth_info.impersonate = Some(user.to_owned());
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates ServiceAccount `namespace/name`. Nothing else would: the harness runs no
    /// controller-manager, and its API server runs without the ServiceAccount admission plugin.
    pub async fn create_service_account(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        within(
            "create service account",
            accounts.create(&PostParams::default(), &account),
        )
        .await
        .with_context(|| format!("creating ServiceAccount {namespace}/{name}"))?;
        Ok(())
    }

    /// A token of ServiceAccount `namespace/account` for `audience`. Bound to pod `namespace/pod`
    /// (which must run as that account) when given, as the kubelet projects it into the pod's volume:
    /// the API server then records the pod and, for a pod scheduled on a node, that node in the token.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        account: &str,
        audience: &str,
        pod: Option<&str>,
    ) -> anyhow::Result<String> {
        let client = self.client().await?;
        let bound_object_ref = match pod {
            Some(pod) => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
                let uid = within("get pod", pods.get(pod))
                    .await
                    .with_context(|| format!("reading pod {namespace}/{pod}"))?
                    .metadata
                    .uid
                    .with_context(|| format!("pod {namespace}/{pod} has no uid"))?;
                Some(BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(pod.to_owned()),
                    uid: Some(uid),
                })
            }
            None => None,
        };
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.to_owned()]),
                bound_object_ref,
                // The shortest lifetime the API server grants.
                expiration_seconds: Some(600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let issued = within(
            "token request",
            accounts.create_token_request(account, &PostParams::default(), &request),
        )
        .await
        .with_context(|| format!("requesting a token of {namespace}/{account}"))?;
        issued
            .status
            .and_then(|status| status.token)
            .filter(|token| !token.is_empty())
            .with_context(|| {
                format!("the token request for {namespace}/{account} returned no token")
            })
    }

    async fn config(&self) -> anyhow::Result<kube::Config> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        Ok(kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?)
    }
}
impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        self.etcd.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
/// Path of the kube-apiserver binary: `~/.cache/kilowatt/kubernetes-v1.37.2/kube-apiserver`, built the
/// first time with the other Kubernetes binaries by `scripts/cluster.sh build` (one `go build` of
/// `tests/apiserver`, cached with Go's own build cache, so a second run starts in seconds).
/// `KILOWATT_KUBE_APISERVER` names a prebuilt binary instead.
pub fn kube_apiserver_binary() -> anyhow::Result<PathBuf> {
    // NB: the tests of one binary start control planes in parallel; on a fresh machine only the first
    // builds, the others wait for it instead of running the same half-hour `go build` side by side.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(path) = std::env::var_os("KILOWATT_KUBE_APISERVER") {
        return Ok(PathBuf::from(path));
    }
    let binary = cache_dir()
        .join(format!("kubernetes-{KUBERNETES_VERSION}"))
        .join("kube-apiserver");
    let _building = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!("building Kubernetes {KUBERNETES_VERSION} with go (once; 10-30 minutes on 2 cores)");
    let status = Command::new(repository_root().join("scripts/cluster.sh"))
        .arg("build")
        .status()
        .context("running scripts/cluster.sh build (is Go installed?)")?;
    if !status.success() || !binary.exists() {
        bail!("scripts/cluster.sh build failed ({status})");
    }
    Ok(binary)
}
/// `~/.cache/kilowatt`, where the Go-built binaries are kept between runs.
fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/kilowatt"))
        .unwrap_or_else(|| std::env::temp_dir().join("kilowatt-cache"))
}
/// The helm CLI the chart tests use, pinned in `tests/helm/go.mod`.
pub const HELM_VERSION: &str = "v3.22.0";
/// Path of the helm binary, built with `go build` the first time like [`kube_apiserver_binary`];
/// `KILOWATT_HELM` names a prebuilt one instead.
pub fn helm_binary() -> anyhow::Result<PathBuf> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    go_built(
        &BUILD,
        "KILOWATT_HELM",
        &format!("helm-{HELM_VERSION}"),
        "tests/helm",
        "helm.sh/helm/v3/cmd/helm",
        "5-15 minutes on 2 cores",
    )
}
/// A binary built from a pinned Go module in `module_dir` (relative to the repository) into
/// `~/.cache/kilowatt/<cached_name>`, once; `override_var` names a prebuilt binary instead.
pub fn go_built(
    build: &std::sync::Mutex<()>,
    override_var: &str,
    cached_name: &str,
    module_dir: &str,
    package: &str,
    how_long: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(override_var) {
        return Ok(PathBuf::from(path));
    }
    let cache = cache_dir();
    let binary = cache.join(cached_name);
    let _building = build
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if binary.exists() {
        return Ok(binary);
    }
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    eprintln!(
        "building {cached_name} with go into {} (once; {how_long})",
        binary.display()
    );
    // A per-process name, so another test process building at the same time cannot clobber it; the
    // rename into place is atomic.
    let partial = cache.join(format!("{cached_name}.partial-{}", std::process::id()));
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg(package)
        .current_dir(repository_root().join(module_dir))
        .status()
        .with_context(|| format!("running `go build` for {cached_name} (is Go installed?)"))?;
    if !status.success() {
        bail!("`go build` of {cached_name} failed ({status})");
    }
    fs::rename(&partial, &binary)?;
    Ok(binary)
}
/// Installs the committed CRD manifests (`crds/*.yaml`, as users apply them) and waits until the API
/// server serves them.
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, _) in kilowatt_crds::crd_manifests()? {
        let path = repository_root().join("crds").join(file);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)?;
        within("create CRD", crds.create(&PostParams::default(), &crd)).await?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        eventually("CRD established", Duration::from_secs(30), || async {
            let current = crds.get(&name).await.map_err(|e| e.to_string())?;
            let established = current
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(())
            } else {
                Err(format!("{name} not established"))
            }
        })
        .await;
    }
    Ok(())
}
/// Creates every object of a multi-document YAML file from the repository (e.g. the operator's RBAC),
/// as `kubectl create -f` would.
pub async fn create_from_yaml(client: &kube::Client, relative_path: &str) -> anyhow::Result<()> {
    let path = repository_root().join(relative_path);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for object in serde_saphyr::from_multiple::<DynamicObject>(&text)? {
        let types = object
            .types
            .clone()
            .with_context(|| format!("an object in {relative_path} has no apiVersion/kind"))?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let plural = format!("{}s", gvk.kind.to_ascii_lowercase());
        let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
        let api: Api<DynamicObject> = match &object.metadata.namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        within("create object", api.create(&PostParams::default(), &object))
            .await
            .with_context(|| format!("creating {} {:?}", gvk.kind, object.metadata.name))?;
    }
    Ok(())
}
