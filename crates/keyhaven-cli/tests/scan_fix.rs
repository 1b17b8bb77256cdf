//! `keyhaven scan --fix` against a real dev server: fixtures of real-world shape (a
//! Helm-rendered app whose literal Secret is read through env and a volume, a Deployment
//! with inline credentials, a `.env` and a properties file) are fixed; afterwards the scan
//! finds no secret, the values are in keyhaven and readable only through the generated
//! role, the manifests validate against the Kubernetes schemas, and the CSI provider
//! mounting the generated SecretProviderClass returns the original values. Dry runs write
//! nothing, conflicts stop the run before any file changes, a second run is a no-op, and
//! bad input is left alone with a message.
//!
//! The credentials are generated at test time, so no file of the repository holds one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use keyhaven_k8s::proto::csi::MountRequest;
use keyhaven_k8s::proto::csi::csi_driver_provider_client::CsiDriverProviderClient;
use serde_json::{Value, json};

use crate::csi_provider::{ISSUER, Key, Pod, ProviderProcess, keypair, pod_token};
use crate::support::{TestServer, call, keyhaven_bin};

const SHOP: Pod = Pod {
    ns: "shop",
    sa: "shop",
    name: "shop-web-6f7d",
};
const WORKER: Pod = Pod {
    ns: "jobs",
    sa: "worker",
    name: "worker-1a2b",
};

/// A credential-shaped random value: letters, digits and symbols.
fn credential(prefix: &str) -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{prefix}Q7{hex}!zK%")
}

struct Values {
    db_user: String,
    db_password: String,
    api_token: String,
    worker_token: String,
    env_password: String,
    props_password: String,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Write the fixtures under `dir`.
fn fixtures(dir: &Path) -> Values {
    let v = Values {
        db_user: "shop".into(),
        db_password: credential("Db"),
        api_token: credential("Tk"),
        worker_token: credential("Wk"),
        env_password: credential("Ev"),
        props_password: credential("Pp"),
    };
    std::fs::create_dir_all(dir.join("helm")).unwrap();
    std::fs::create_dir_all(dir.join("deploy")).unwrap();
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(
        dir.join("helm/rendered.yaml"),
        format!(
            r#"---
# Source: shop/templates/serviceaccount.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: shop
  namespace: shop
  labels:
    app.kubernetes.io/name: shop
    helm.sh/chart: shop-1.4.2
---
# Source: shop/templates/secret.yaml
apiVersion: v1
kind: Secret
metadata:
  name: shop-db
  namespace: shop
  labels:
    app.kubernetes.io/name: shop
type: Opaque
data:
  username: {user}
  password: {password}
stringData:
  api-token: "{token}"
---
# Source: shop/templates/service.yaml
apiVersion: v1
kind: Service
metadata:
  name: shop-web
  namespace: shop
spec:
  selector:
    app.kubernetes.io/name: shop
  ports:
    - port: 80
      targetPort: http
---
# Source: shop/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop-web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels:
      app.kubernetes.io/name: shop
  template:
    metadata:
      labels:
        app.kubernetes.io/name: shop
    spec:
      serviceAccountName: shop
      containers:
        - name: web
          image: "ghcr.io/example/shop:1.4.2"
          ports:
            - name: http
              containerPort: 8080
          env:
            - name: DB_USER
              valueFrom:
                secretKeyRef:
                  name: shop-db
                  key: username
            - name: DB_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: shop-db
                  key: password
            - name: LOG_LEVEL
              value: info
          volumeMounts:
            - name: db-creds
              mountPath: /etc/shop/db
              readOnly: true
      volumes:
        - name: db-creds
          secret:
            secretName: shop-db
            defaultMode: 0400
"#,
            user = b64(&v.db_user),
            password = b64(&v.db_password),
            token = v.api_token,
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("deploy/worker.yaml"),
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: worker
  namespace: jobs
spec:
  selector:
    matchLabels:
      app: worker
  template:
    metadata:
      labels:
        app: worker
    spec:
      serviceAccountName: worker
      containers:
        - name: worker
          image: example/worker:2.0
          env:
            - name: QUEUE_URL
              value: "amqp://queue.jobs.svc:5672"
            - name: API_TOKEN
              value: "{token}"
"#,
            token = v.worker_token
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("app/.env"),
        format!(
            "# local settings\nAPP_ENV=production\nDB_HOST=db.internal\nDB_PASSWORD={}\nexport DEBUG=false\n",
            v.env_password
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("app/application.properties"),
        format!(
            "server.port=8080\nspring.datasource.url=jdbc:postgresql://db.internal:5432/shop\nspring.datasource.username=shop\nspring.datasource.password = {}\n",
            v.props_password
        ),
    )
    .unwrap();
    v
}

fn run(args: &[&str]) -> Output {
    Command::new(keyhaven_bin())
        .args(args)
        .env_remove("KEYHAVEN_TOKEN")
        .env_remove("VAULT_TOKEN")
        .env_remove("KEYHAVEN_ADDR")
        .env_remove("VAULT_ADDR")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    crate::support::files_under(dir)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

struct Server {
    server: TestServer,
    root: String,
    key: Key,
}

impl Server {
    fn start() -> Server {
        let server = TestServer::dev();
        let root = server.root_token();
        let key = keypair();
        let s = Server { server, root, key };
        s.ok("POST", "sys/auth/kubernetes", json!({"type": "kubernetes"}));
        s.ok(
            "POST",
            "auth/kubernetes/config",
            json!({"pem_keys": [s.key.public_pem.clone()], "issuer": ISSUER}),
        );
        s
    }

    fn v1(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.server.addr())
    }

    fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (st, b) = call(method, &self.v1(path), Some(&self.root), Some(&body));
        assert!((200..300).contains(&st), "{method} {path}: {st} {b}");
        b
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        call("GET", &self.v1(path), Some(token), None)
    }

    fn fix(&self, extra: &[&str], dir: &Path) -> Output {
        let addr = self.server.addr();
        let mut args = vec!["scan", "--fix", "--address", &addr, "--token", &self.root];
        args.extend_from_slice(extra);
        args.push(dir.to_str().unwrap());
        run(&args)
    }

    /// Log in through `role` as `pod`: the client token, or the status and body.
    fn login(&self, role: &str, pod: Pod) -> Result<String, (u16, Value)> {
        let jwt = pod_token(&self.key, pod, "keyhaven", 600);
        let (st, b) = call(
            "POST",
            &self.v1("auth/kubernetes/login"),
            None,
            Some(&json!({"role": role, "jwt": jwt})),
        );
        if st == 200 {
            Ok(b["auth"]["client_token"].as_str().unwrap().to_owned())
        } else {
            Err((st, b))
        }
    }
}

fn secret_findings(dir: &Path) -> (i32, String) {
    let o = run(&[
        "scan",
        "--no-posture",
        "--format",
        "json",
        dir.to_str().unwrap(),
    ]);
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn scan_fix_moves_everything_and_the_generated_role_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let v = fixtures(dir.path());
    let s = Server::start();
    let (code, report) = secret_findings(dir.path());
    assert_eq!(code, 1, "the fixtures hold findings: {report}");
    let before = snapshot(dir.path());
    let all = [
        &v.db_password,
        &v.api_token,
        &v.worker_token,
        &v.env_password,
        &v.props_password,
    ];

    // Dry run: the diff and the writes, values redacted; nothing changes anywhere.
    let dry = s.fix(&["--dry-run"], dir.path());
    let out = text(&dry);
    assert_eq!(dry.status.code(), Some(0), "{out}");
    for value in all {
        assert!(!out.contains(value.as_str()), "a value was printed:\n{out}");
    }
    for expected in [
        "--- a/",
        "+++ b/",
        "secret/data/shop/shop-db",
        "secret/data/jobs/worker-env",
        "secret/data/app/env",
        "secret/data/app/application.properties",
        "-DB_PASSWORD=",
        "+DB_PASSWORD=${DB_PASSWORD}",
        "+spring.datasource.password = ${SPRING_DATASOURCE_PASSWORD}",
        "kind: SecretProviderClass",
        "keyhaven policy scan-fix-shop-shop-db",
        "auth/kubernetes role shop-shop-db: service accounts [shop] in namespaces [shop]",
        "****(",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    assert_eq!(snapshot(dir.path()), before, "the dry run changed a file");
    assert_eq!(s.get("secret/data/shop/shop-db", &s.root).0, 404);
    assert_eq!(
        s.get("sys/policies/acl/scan-fix-shop-shop-db", &s.root).0,
        404
    );
    assert_eq!(s.get("auth/kubernetes/role/shop-shop-db", &s.root).0, 404);

    // The real run.
    let fixed = s.fix(&[], dir.path());
    let out = text(&fixed);
    assert_eq!(fixed.status.code(), Some(0), "{out}");
    for value in all {
        assert!(!out.contains(value.as_str()), "a value was printed:\n{out}");
    }
    assert!(out.contains("Rotate every moved credential"), "{out}");
    assert!(
        out.contains("git filter-repo --sensitive-data-removal --replace-text"),
        "{out}"
    );
    let (code, report) = secret_findings(dir.path());
    assert_eq!(code, 0, "secrets remain after --fix: {report}");
    let after = snapshot(dir.path());
    for (path, bytes) in &after {
        for value in all {
            assert!(
                !crate::support::contains(bytes, value.as_bytes()),
                "{path} still holds a value"
            );
        }
    }
    let env = String::from_utf8(after["app/.env"].clone()).unwrap();
    assert_eq!(
        env,
        "# local settings\nAPP_ENV=production\nDB_HOST=db.internal\nDB_PASSWORD=${DB_PASSWORD}\nexport DEBUG=false\n",
        "only the value changes"
    );

    // The values are in keyhaven, as they were.
    let data =
        |path: &str| s.get(&format!("secret/data/{path}"), &s.root).1["data"]["data"].clone();
    assert_eq!(
        data("shop/shop-db"),
        json!({"username": v.db_user, "password": v.db_password, "api-token": v.api_token})
    );
    assert_eq!(
        data("jobs/worker-env"),
        json!({"API_TOKEN": v.worker_token})
    );
    assert_eq!(data("app/env"), json!({"DB_PASSWORD": v.env_password}));
    assert_eq!(
        data("app/application.properties"),
        json!({"spring.datasource.password": v.props_password})
    );

    // Readable through the generated role by the workload's ServiceAccount only.
    let shop = s.login("shop-shop-db", SHOP).unwrap();
    let (st, b) = s.get("secret/data/shop/shop-db", &shop);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["data"]["password"], json!(v.db_password));
    assert_eq!(s.get("secret/data/jobs/worker-env", &shop).0, 403);
    assert_eq!(s.get("secret/data/app/env", &shop).0, 403);
    let (st, _) = s.login("shop-shop-db", WORKER).unwrap_err();
    assert_eq!(st, 403, "another ServiceAccount logged in through the role");
    let worker = s.login("jobs-worker-env", WORKER).unwrap();
    assert_eq!(s.get("secret/data/jobs/worker-env", &worker).0, 200);
    assert_eq!(s.get("secret/data/shop/shop-db", &worker).0, 403);
    assert!(s.login("jobs-worker-env", SHOP).is_err());

    // The rewritten manifests.
    let rendered = String::from_utf8(after["helm/rendered.yaml"].clone()).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&rendered).unwrap();
    let find = |kind: &str, docs: &[Value]| -> Value {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    assert!(docs.iter().all(|d| d["kind"] != "Secret"), "{rendered}");
    assert!(rendered.contains("# Source: shop/templates/secret.yaml"));
    let spc = find("SecretProviderClass", &docs);
    assert_eq!(spc["spec"]["provider"], "keyhaven");
    assert_eq!(spc["spec"]["parameters"]["roleName"], "shop-shop-db");
    assert_eq!(spc["spec"]["secretObjects"][0]["secretName"], "shop-db");
    let deployment = find("Deployment", &docs);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0],
        json!({"name": "db-creds", "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": true, "volumeAttributes": {"secretProviderClass": "shop-db"}}})
    );
    assert_eq!(
        pod["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"],
        json!({"name": "shop-db", "key": "password"}),
        "env consumers read the synced Secret"
    );
    let worker_docs: Vec<Value> =
        serde_saphyr::from_multiple(std::str::from_utf8(&after["deploy/worker.yaml"]).unwrap())
            .unwrap();
    let wd = find("Deployment", &worker_docs);
    let wpod = &wd["spec"]["template"]["spec"];
    assert_eq!(
        wpod["containers"][0]["env"][1],
        json!({"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "worker-env", "key": "API_TOKEN"}}})
    );
    assert_eq!(
        wpod["containers"][0]["env"][0]["value"],
        "amqp://queue.jobs.svc:5672"
    );
    assert_eq!(
        wpod["volumes"][0]["csi"]["volumeAttributes"]["secretProviderClass"], "worker-env",
        "the driver syncs the Secret only for a mounted volume"
    );
    assert_eq!(
        find("SecretProviderClass", &worker_docs)["spec"]["secretObjects"][0]["data"],
        json!([{"objectName": "API_TOKEN", "key": "API_TOKEN"}])
    );
    validate(&[
        dir.path().join("helm/rendered.yaml"),
        dir.path().join("deploy/worker.yaml"),
    ]);

    // The CSI provider mounting the generated class returns the original values.
    let pdir = tempfile::tempdir().unwrap();
    let provider = ProviderProcess::start(pdir.path(), &s.server.addr(), None);
    let files = mount(&provider, &s.key, &spc, SHOP);
    assert_eq!(
        files["password"],
        (0o400, v.db_password.as_bytes().to_vec())
    );
    assert_eq!(files["username"].1, v.db_user.as_bytes());
    assert_eq!(files["api-token"].1, v.api_token.as_bytes());
    let files = mount(
        &provider,
        &s.key,
        &find("SecretProviderClass", &worker_docs),
        WORKER,
    );
    assert_eq!(files["API_TOKEN"].1, v.worker_token.as_bytes());

    // A second run changes nothing.
    let version = |path: &str| {
        s.get(&format!("secret/metadata/{path}"), &s.root).1["data"]["current_version"].clone()
    };
    assert_eq!(version("shop/shop-db"), json!(1));
    let again = s.fix(&[], dir.path());
    let out = text(&again);
    assert_eq!(again.status.code(), Some(0), "{out}");
    assert!(out.contains("Nothing to move"), "{out}");
    assert_eq!(snapshot(dir.path()), after, "the second run changed a file");
    assert_eq!(version("shop/shop-db"), json!(1));
    assert_eq!(version("app/env"), json!(1));
}

/// Call the provider's `Mount` as the driver does with the class's parameters; returns
/// file name → (mode, contents).
fn mount(
    provider: &ProviderProcess,
    key: &Key,
    spc: &Value,
    pod: Pod,
) -> BTreeMap<String, (i32, Vec<u8>)> {
    let mut a: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in spc["spec"]["parameters"].as_object().unwrap() {
        a.insert(k.clone(), v.as_str().unwrap().to_owned());
    }
    a.insert(
        "secretProviderClass".into(),
        spc["metadata"]["name"].as_str().unwrap().into(),
    );
    a.insert("csi.storage.k8s.io/pod.name".into(), pod.name.into());
    a.insert("csi.storage.k8s.io/pod.namespace".into(), pod.ns.into());
    a.insert(
        "csi.storage.k8s.io/pod.uid".into(),
        "4b8f2a1c-3e5d-4c6b-8a9f-1d2e3f4a5b6c".into(),
    );
    a.insert(
        "csi.storage.k8s.io/serviceAccount.name".into(),
        pod.sa.into(),
    );
    let tokens = json!({"keyhaven": {"token": pod_token(key, pod, "keyhaven", 600), "expirationTimestamp": "2099-01-01T00:00:00Z"}});
    a.insert(
        "csi.storage.k8s.io/serviceAccount.tokens".into(),
        tokens.to_string(),
    );
    let attributes = serde_json::to_string(&a).unwrap();
    let socket = provider.socket.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(async move {
            let channel = keyhaven_k8s::socket::connect(&socket).await.unwrap();
            CsiDriverProviderClient::new(channel)
                .mount(MountRequest {
                    attributes,
                    secrets: "null".into(),
                    target_path: "/var/lib/kubelet/pods/4b8f2a1c/volumes/kubernetes.io~csi/s/mount"
                        .into(),
                    permission: "420".into(),
                    current_object_version: Vec::new(),
                })
                .await
        })
        .unwrap_or_else(|e| panic!("mount refused: {e:?}"))
        .into_inner();
    r.files
        .into_iter()
        .map(|f| (f.path, (f.mode, f.contents)))
        .collect()
}

/// Validate manifests against the Kubernetes schemas, as the deploy test does.
fn validate(files: &[std::path::PathBuf]) {
    let root = crate::deploy::repo_root();
    let out = Command::new(crate::deploy::tools().join("python"))
        .arg(root.join("tests/deploy/validate.py"))
        .args(files)
        .env("KUBERNETES_VERSIONS", "1.30.0 1.37.0")
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains(", 0 failure(s)"), "{report}");
}

#[test]
fn scan_fix_stops_on_a_conflict_before_changing_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let v = fixtures(dir.path());
    let s = Server::start();
    s.ok(
        "POST",
        "secret/data/app/env",
        json!({"data": {"DB_PASSWORD": "a-different-value"}}),
    );
    let before = snapshot(dir.path());
    let o = s.fix(&[], dir.path());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("stopped before changing anything"), "{out}");
    assert!(
        out.contains("secret/data/app/env: key \"DB_PASSWORD\" already holds a different value"),
        "{out}"
    );
    assert!(
        !out.contains("a-different-value") && !out.contains(&v.env_password),
        "{out}"
    );
    assert_eq!(snapshot(dir.path()), before);
    // Nothing else was written either.
    assert_eq!(s.get("secret/data/shop/shop-db", &s.root).0, 404);
    assert_eq!(
        s.get("secret/data/app/env", &s.root).1["data"]["data"],
        json!({"DB_PASSWORD": "a-different-value"})
    );
}

#[test]
fn scan_fix_leaves_bad_input_alone_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let pw = credential("An");
    // A Secret with an anchor and alias, in a multi-document file with a good Secret.
    std::fs::write(
        p.join("anchors.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: anchored\n  namespace: a\nstringData:\n  password: &pw \"{pw}\"\n  again: *pw\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: plain\n  namespace: a\nstringData:\n  token: \"{}\"\n",
            credential("Pl")
        ),
    )
    .unwrap();
    // A Helm template.
    std::fs::create_dir_all(p.join("chart/templates")).unwrap();
    let template = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{{{ .Release.Name }}}}-db\nstringData:\n  password: \"{}\"\n",
        credential("Hm")
    );
    std::fs::write(p.join("chart/templates/secret.yaml"), &template).unwrap();
    // A binary file holding a credential.
    let mut binary = vec![0u8, 1, 2, 0, 0xff];
    binary.extend_from_slice(format!("\nDB_PASSWORD={}\n", credential("Bn")).as_bytes());
    std::fs::write(p.join("blob.env"), &binary).unwrap();
    // A YAML config whose value is a block scalar.
    std::fs::write(
        p.join("settings.yml"),
        format!("database:\n  password: |\n    {}\n", credential("Bl")),
    )
    .unwrap();

    let s = Server::start();
    let dry = s.fix(&["--dry-run", "--include-binary"], p);
    let out = text(&dry);
    assert_eq!(dry.status.code(), Some(0), "{out}");
    let o = s.fix(&["--include-binary"], p);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("Secret a/anchored: left alone: it uses YAML anchors or aliases"),
        "{out}"
    );
    assert!(
        out.contains("secret.yaml: left alone: a Helm or Go template"),
        "{out}"
    );
    assert!(out.contains("blob.env: left alone: a binary file"), "{out}");
    assert!(!out.contains(&pw), "{out}");
    // The files left alone are byte for byte as they were.
    assert_eq!(std::fs::read(p.join("blob.env")).unwrap(), binary);
    assert_eq!(
        std::fs::read_to_string(p.join("chart/templates/secret.yaml")).unwrap(),
        template
    );
    let anchors = std::fs::read_to_string(p.join("anchors.yaml")).unwrap();
    assert!(
        anchors.contains(&format!("password: &pw \"{pw}\"\n  again: *pw\n")),
        "{anchors}"
    );
    // The other Secret of the multi-document file moved; the anchored one did not.
    assert!(
        !anchors.contains("name: plain\n  namespace: a\nstringData"),
        "{anchors}"
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&anchors).unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["kind"], "SecretProviderClass");
    assert_eq!(s.get("secret/data/a/anchored", &s.root).0, 404);
    assert_eq!(s.get("secret/data/a/plain", &s.root).0, 200);
}

#[test]
fn scan_fix_targets_external_secrets_and_vault_references() {
    let dir = tempfile::tempdir().unwrap();
    let v = fixtures(dir.path());
    let s = Server::start();
    let o = s.fix(
        &[
            "--target",
            "external-secrets",
            "--path-template",
            "secret/apps/<namespace>-<name>",
            "--reference",
            "vault:<mount>/data/<path>#<key>",
        ],
        dir.path(),
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(secret_findings(dir.path()).0, 0);
    let props = std::fs::read_to_string(dir.path().join("app/application.properties")).unwrap();
    assert!(
        props.ends_with("spring.datasource.password = vault:secret/data/apps/app-application.properties#spring.datasource.password\n"),
        "{props}"
    );
    let rendered = std::fs::read_to_string(dir.path().join("helm/rendered.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&rendered).unwrap();
    let es = docs.iter().find(|d| d["kind"] == "ExternalSecret").unwrap();
    assert_eq!(es["spec"]["target"]["name"], "shop-db");
    assert_eq!(
        es["spec"]["data"][1]["remoteRef"],
        json!({"key": "apps/shop-shop-db", "property": "password"})
    );
    let store = docs.iter().find(|d| d["kind"] == "SecretStore").unwrap();
    assert_eq!(
        store["spec"]["provider"]["vault"]["auth"]["kubernetes"]["role"],
        "shop-shop-db"
    );
    assert_eq!(
        store["spec"]["provider"]["vault"]["auth"]["kubernetes"]["serviceAccountRef"]["name"],
        "shop"
    );
    // The workload keeps reading the Secret the operator recreates.
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "shop-db"
    );
    assert_eq!(
        s.get("secret/data/apps/shop-shop-db", &s.root).1["data"]["data"]["password"],
        json!(v.db_password)
    );
    let shop = s.login("shop-shop-db", SHOP).unwrap();
    assert_eq!(s.get("secret/data/apps/shop-shop-db", &shop).0, 200);
    validate(&[
        dir.path().join("helm/rendered.yaml"),
        dir.path().join("deploy/worker.yaml"),
    ]);
}
