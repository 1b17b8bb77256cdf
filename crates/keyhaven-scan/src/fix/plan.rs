//! The plan of a fix: keyhaven writes and file rewrites, built before anything changes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::{ExposeSecret as _, SecretString};

/// Where values go and how the rewritten files refer to them.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The KV v2 mount, without slashes.
    pub mount: String,
    /// The path template below the mount, with `<namespace>` and `<name>`.
    pub path_template: String,
    /// The reference written in config files, with `<var>`, `<mount>`, `<path>`, `<key>`.
    pub reference: String,
}

impl Ctx {
    /// The KV path (below the mount) for an object or file.
    pub fn kv_path(&self, namespace: &str, name: &str) -> String {
        let t = self.path_template.trim_matches('/');
        // `secret/<namespace>/<name>` names the mount too; it is the same path.
        let t = t
            .strip_prefix(&format!("{}/", self.mount))
            .unwrap_or(t)
            .replace("<namespace>", &segment(namespace))
            .replace("<name>", &segment(name));
        t.split('/')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The reference that replaces a value in a config file.
    pub fn reference(&self, var: &str, path: &str, key: &str) -> String {
        self.reference
            .replace("<var>", var)
            .replace("<mount>", &self.mount)
            .replace("<path>", path)
            .replace("<key>", key)
    }
}

/// A path segment from a name: lower case, `[a-z0-9._-]`, others as `-`.
pub fn segment(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '-' || c == '.').to_owned();
    if s.is_empty() {
        "unnamed".to_owned()
    } else {
        s
    }
}

/// An environment-variable name from a key: upper case, `[A-Z0-9_]`.
pub fn env_var(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{s}")
    } else {
        s
    }
}

/// The values to store at one KV path.
pub struct KvWrite {
    /// Key → value.
    pub data: BTreeMap<String, SecretString>,
    /// Where each value came from (`file:line`), for messages.
    pub sources: Vec<String>,
}

/// One file's new contents.
pub struct FileChange {
    /// The file.
    pub path: PathBuf,
    /// As shown to the user.
    pub display: String,
    /// The contents the plan was made from.
    pub before: String,
    /// The new contents.
    pub after: String,
}

/// An `auth/kubernetes` role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Role name.
    pub name: String,
    /// Bound ServiceAccount names.
    pub service_accounts: Vec<String>,
    /// Bound namespaces.
    pub namespaces: Vec<String>,
    /// Policies its tokens get.
    pub policies: Vec<String>,
}

/// Everything a fix does.
#[derive(Default)]
pub struct Plan {
    /// KV path (below the mount) → values.
    pub kv: BTreeMap<String, KvWrite>,
    /// File rewrites.
    pub files: Vec<FileChange>,
    /// Policy name → HCL text.
    pub policies: BTreeMap<String, String>,
    /// Roles.
    pub roles: Vec<Role>,
    /// What was left alone and why.
    pub notes: Vec<String>,
    /// Leaked credentials to rotate: (where, what).
    pub leaked: Vec<(String, String)>,
}

impl Plan {
    /// Add a value; two different values for one path and key are refused.
    pub fn add_kv(
        &mut self,
        path: &str,
        key: &str,
        value: &str,
        source: &str,
    ) -> Result<(), String> {
        let entry = self.kv.entry(path.to_owned()).or_insert_with(|| KvWrite {
            data: BTreeMap::new(),
            sources: Vec::new(),
        });
        if let Some(existing) = entry.data.get(key) {
            if existing.expose_secret() != value {
                return Err(format!(
                    "{source}: key {key:?} at {path} already takes a different value from {}",
                    entry.sources.join(", ")
                ));
            }
        } else {
            entry
                .data
                .insert(key.to_owned(), SecretString::from(value.to_owned()));
        }
        if !entry.sources.iter().any(|s| s == source) {
            entry.sources.push(source.to_owned());
        }
        Ok(())
    }

    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty() && self.files.is_empty()
    }

    /// The read policy for `paths` (below `mount`), named after its first path.
    pub fn add_policy(&mut self, name: &str, mount: &str, paths: &[String]) {
        let mut text = String::from("# Written by `keyhaven scan --fix`: read the moved values.\n");
        let mut sorted = paths.to_vec();
        sorted.sort();
        sorted.dedup();
        for p in sorted {
            text.push_str(&format!(
                "path \"{mount}/data/{p}\" {{\n  capabilities = [\"read\"]\n}}\n"
            ));
        }
        self.policies.insert(name.to_owned(), text);
    }
}

/// The policy name for a group of paths.
pub fn policy_name(namespace: &str, name: &str) -> String {
    format!("scan-fix-{}-{}", segment(namespace), segment(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(t: &str) -> Ctx {
        Ctx {
            mount: "secret".into(),
            path_template: t.into(),
            reference: "${<var>}".into(),
        }
    }

    #[test]
    fn the_template_may_name_the_mount_and_names_become_segments() {
        assert_eq!(
            ctx("secret/<namespace>/<name>").kv_path("team-a", "db"),
            "team-a/db"
        );
        assert_eq!(
            ctx("<namespace>/<name>").kv_path("Team A", "app.env"),
            "team-a/app.env"
        );
        assert_eq!(ctx("apps/<name>").kv_path("x", "../../etc"), "apps/etc");
        assert_eq!(
            env_var("spring.datasource.password"),
            "SPRING_DATASOURCE_PASSWORD"
        );
    }

    #[test]
    fn one_key_cannot_take_two_values() {
        let mut p = Plan::default();
        p.add_kv("a/b", "k", "v1", "f:1").unwrap();
        p.add_kv("a/b", "k", "v1", "f:2").unwrap();
        let e = p.add_kv("a/b", "k", "v2", "g:3").unwrap_err();
        assert!(
            e.contains("g:3") && e.contains("f:1") && !e.contains("v2"),
            "{e}"
        );
    }
}
