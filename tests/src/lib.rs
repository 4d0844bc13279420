//! Test harness: a real Kubernetes control plane on 127.0.0.1 — upstream kube-apiserver built from the
//! pinned Go module in `tests/apiserver/`, backed by a real etcd — with a kubeconfig for it. Does
//! process, file and network IO; everything it starts is stopped when the [`ControlPlane`] is dropped.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};

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

fn free_port() -> anyhow::Result<u16> {
    // NB: the port is free when we look; another process could take it before the server binds, which
    // on a test machine's loopback is rare enough, and shows up as a clear start-up failure.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Path of the kube-apiserver binary, building it with `go build` the first time. `KILOWATT_KUBE_APISERVER`
/// names a prebuilt binary instead; builds are cached in `~/.cache/kilowatt/` (and Go's own build cache),
/// so a second run starts in seconds.
pub fn kube_apiserver_binary() -> anyhow::Result<PathBuf> {
    // NB: the tests of one binary start control planes in parallel; on a fresh machine only the first
    // builds, the others wait for it instead of running the same half-hour `go build` side by side.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    go_built(
        &BUILD,
        "KILOWATT_KUBE_APISERVER",
        &format!("kube-apiserver-{KUBERNETES_VERSION}"),
        "tests/apiserver",
        ".",
        "10-30 minutes on 2 cores",
    )
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
fn go_built(
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
    let cache = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/kilowatt"))
        .unwrap_or_else(|| std::env::temp_dir().join("kilowatt-cache"));
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

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn spawn_logged(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file = fs::File::create(log)?;
    Ok(command.stdout(Stdio::null()).stderr(file).spawn()?)
}

/// PEM files of a test PKI made with openssl: a CA, a serving certificate for 127.0.0.1 and
/// localhost, and a client certificate, all signed by the CA and valid for two days.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// Creates the files in `dir` (which must exist); `name` tells two PKIs apart in their CA's name.
    pub fn create(dir: &Path, name: &str) -> anyhow::Result<TestPki> {
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_subject = format!("/CN=kilowatt test CA {name}");
        let mut ca = vec!["req", "-x509"];
        ca.extend(key);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            &ca_subject,
        ]);
        openssl(&ca, dir)?;
        for (who, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let (key_file, csr, cert, ext) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.crt"),
                format!("{who}.ext"),
            );
            fs::write(
                dir.join(&ext),
                format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"),
            )?;
            let subject = format!("/CN=kilowatt test {who}");
            let mut request = vec!["req"];
            request.extend(key);
            request.extend(["-keyout", &key_file, "-out", &csr, "-subj", &subject]);
            openssl(&request, dir)?;
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &cert,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
                dir,
            )?;
        }
        Ok(TestPki {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        })
    }

    /// etcd client TLS options trusting this CA and presenting the client certificate.
    pub fn etcd_client_tls(&self) -> anyhow::Result<etcd_client::TlsOptions> {
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(fs::read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(
                fs::read(&self.client_cert)?,
                fs::read(&self.client_key)?,
            )))
    }
}

/// A single-member etcd on 127.0.0.1 with its own data directory; it can be stopped and started
/// again on the same ports and data (for partition and restart tests).
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    /// Removed on drop when the directory was made for this etcd alone.
    owns_dir: bool,
    client_port: u16,
    peer_port: u16,
    /// Serving certificate, key and client CA when it serves TLS and requires client certificates.
    tls: Option<TestPki>,
    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub endpoint: String,
}

impl Etcd {
    /// Starts an etcd in a fresh temporary directory and waits until it answers.
    pub async fn start() -> anyhow::Result<Etcd> {
        let dir = std::env::temp_dir().join(format!(
            "kilowatt-etcd-{}-{}",
            std::process::id(),
            free_port()?
        ));
        let mut etcd = Etcd::start_in(dir, None)?;
        etcd.owns_dir = true;
        etcd.wait_healthy().await?;
        Ok(etcd)
    }

    /// Starts an etcd (as [`Etcd::start`]) with authentication enabled: user `root`, holding the root
    /// role, logs in with the returned password; a client without a user may do nothing.
    pub async fn start_with_auth() -> anyhow::Result<(Etcd, String)> {
        let etcd = Etcd::start().await?;
        Etcd::enable_auth(etcd, None).await
    }

    /// Starts an etcd serving TLS with `pki`'s server certificate and requiring client certificates
    /// signed by its CA, with authentication enabled as [`Etcd::start_with_auth`].
    pub async fn start_with_tls_and_auth(pki: &TestPki) -> anyhow::Result<(Etcd, String)> {
        let dir = std::env::temp_dir().join(format!(
            "kilowatt-etcd-{}-{}",
            std::process::id(),
            free_port()?
        ));
        let mut etcd = Etcd::start_in(dir, Some(pki.clone()))?;
        etcd.owns_dir = true;
        etcd.wait_healthy().await?;
        let tls = pki.etcd_client_tls()?;
        Etcd::enable_auth(etcd, Some(tls)).await
    }

    async fn enable_auth(
        etcd: Etcd,
        tls: Option<etcd_client::TlsOptions>,
    ) -> anyhow::Result<(Etcd, String)> {
        // A test etcd on the loopback: the password only has to differ between runs.
        let password = format!("root-{}-{}", std::process::id(), free_port()?);
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        let mut client = within(
            "etcd client",
            etcd_client::Client::connect([etcd.endpoint.as_str()], Some(options)),
        )
        .await
        .context("connecting to the new etcd")?;
        within("add root", client.user_add("root", password.as_str(), None))
            .await
            .context("adding etcd user root")?;
        // NB: etcd has the root role built in; enabling auth requires a root user holding it.
        within("grant root", client.user_grant_role("root", "root"))
            .await
            .context("granting root the root role")?;
        within("enable auth", client.auth_enable())
            .await
            .context("enabling etcd authentication")?;
        Ok((etcd, password))
    }

    fn start_in(dir: PathBuf, tls: Option<TestPki>) -> anyhow::Result<Etcd> {
        fs::create_dir_all(&dir)?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            child: None,
            dir,
            owns_dir: false,
            client_port,
            peer_port,
            endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
            tls,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let peer_port = self.peer_port;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))?;
        let mut command = Command::new("etcd");
        if let Some(pki) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&pki.server_cert)
                .arg("--key-file")
                .arg(&pki.server_key)
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg(format!("--listen-client-urls={}", self.endpoint))
            .arg(format!("--advertise-client-urls={}", self.endpoint))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian package etcd-server)")?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills etcd (as a crash or a cut link would look to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data, and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()?;
        self.wait_healthy().await
    }

    fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail_of(&self.dir, "etcd.log")
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.exited()? {
                bail!("etcd exited ({status}):\n{}", self.log_tail());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.client_port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("etcd did not listen within 30 s:\n{}", self.log_tail())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on fresh ports and waits until the API server is ready.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        let apiserver_binary = tokio::task::spawn_blocking(kube_apiserver_binary).await??;
        let dir = std::env::temp_dir().join(format!(
            "kilowatt-cp-{}-{}",
            std::process::id(),
            free_port()?
        ));
        fs::create_dir_all(dir.join("certs"))?;

        let etcd = Etcd::start_in(dir.join("etcd"), None)?;
        let client_port = etcd.client_port;

        openssl(&["genrsa", "-out", "sa.key", "2048"], &dir)?;
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], &dir)?;
        let token = format!("kilowatt-test-{}", free_port()?);
        fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin-uid,\"system:masters\"\n"),
        )?;

        let port = free_port()?;
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

/// Bounds an await in a test, so a hang fails the test instead of stalling CI.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`; panics naming `what`
/// and the last value seen otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut last = String::from("not checked yet");
    while started.elapsed() < timeout {
        match tokio::time::timeout(Duration::from_secs(30), check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(seen)) => last = seen,
            Err(_) => last = "check timed out".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within {timeout:?}: {what}; last seen: {last}")
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

fn log_tail_of(dir: &Path, file: &str) -> String {
    let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        self.etcd.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
