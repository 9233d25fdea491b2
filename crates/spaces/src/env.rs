//! Python environments of Spaces, built once per content hash and shared.
//!
//! What defines an environment ([`EnvSpec`]): the SDK and its version, the interpreter's
//! `major.minor`, and the bytes of `requirements.txt`. Its SHA-256 names the directory
//! `ENVS/<hash>`, so a second start of a Space, another commit that changes only app code, or
//! another Space with the same requirements reuse it at once. A venv is not relocatable (its
//! scripts name their interpreter by absolute path), so it is built in place and a
//! `.hubmesh-complete` marker, written last, says it is usable; a directory without it (a
//! build that died) is removed and built again. One build per hash at a time: later callers
//! wait for the first and then find the marker.
//!
//! A build runs in the sandbox (`sandbox.rs`) as the build uid, with only its environment
//! directory and pip's cache writable: `python -m venv`, then `pip install <sdk>==<version>
//! -r requirements.txt`. Requirements run code at install time (sdists), which is why.

use crate::config::Sdk;
use crate::log::Log;
use crate::sandbox::{Jail, SandboxConfig};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// The marker file of a complete environment.
const COMPLETE: &str = ".hubmesh-complete";

/// Environment variables a build passes on from the node (package index, TLS, proxies); a
/// build sees nothing else of the node's environment.
const BUILD_PASSTHROUGH: &[&str] = &[
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// What defines an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    pub sdk: Sdk,
    pub sdk_version: Option<String>,
    /// The interpreter's `major.minor`.
    pub python: String,
    /// `requirements.txt` as committed (empty when there is none).
    pub requirements: Vec<u8>,
}

impl EnvSpec {
    /// The content hash naming the environment (hex SHA-256 of a length-prefixed encoding).
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"hubmesh-space-env-1\0");
        for part in [
            self.sdk.as_str().as_bytes(),
            self.sdk_version.as_deref().unwrap_or("").as_bytes(),
            self.python.as_bytes(),
            &self.requirements,
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        hex::encode(h.finalize())
    }
}

/// Why an environment could not be built; the build log has the details.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("{step} failed ({status}); see the build log")]
    Failed { step: &'static str, status: String },
    #[error("{step} could not start: {source}")]
    Spawn {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("prepare the environment directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the build took longer than {0:?}")]
    TimedOut(Duration),
}

/// The interpreter environments are built with.
#[derive(Debug, Clone)]
pub struct Python {
    /// Its real executable (not a shim).
    pub executable: PathBuf,
    /// `sys.base_prefix`, bound read-only into sandboxes when it is not under `/usr`.
    pub prefix: PathBuf,
    /// `major.minor`.
    pub version: String,
}

impl Python {
    /// Asks `program` (a name on `PATH` or a path) where it lives and which version it is.
    pub async fn probe(program: &Path) -> std::io::Result<Self> {
        let out = tokio::process::Command::new(program)
            .args([
                "-c",
                "import sys; print(sys.executable); print(sys.base_prefix); print('%d.%d' % sys.version_info[:2])",
            ])
            .stdin(Stdio::null())
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        match (
            out.status.success(),
            lines.next(),
            lines.next(),
            lines.next(),
        ) {
            (true, Some(exe), Some(prefix), Some(version)) => Ok(Self {
                executable: std::fs::canonicalize(exe)?,
                prefix: prefix.into(),
                version: version.to_owned(),
            }),
            _ => Err(std::io::Error::other(format!(
                "{} did not report its version ({})",
                program.display(),
                out.status
            ))),
        }
    }

    /// The directories a sandboxed process needs bound to run this interpreter.
    pub fn read_only_dirs(&self) -> Vec<PathBuf> {
        if self.prefix.starts_with("/usr") {
            Vec::new()
        } else {
            vec![self.prefix.clone()]
        }
    }
}

/// The shared store of environments.
#[derive(Debug)]
pub struct Envs {
    root: PathBuf,
    python: Python,
    sandbox: SandboxConfig,
    /// The uid builds run as, when the node runs as root.
    build_uid: Option<u32>,
    build_timeout: Duration,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Envs {
    pub fn new(
        root: PathBuf,
        python: Python,
        sandbox: SandboxConfig,
        build_uid: Option<u32>,
        build_timeout: Duration,
    ) -> Self {
        Self {
            root,
            python,
            sandbox,
            build_uid,
            build_timeout,
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn python(&self) -> &Python {
        &self.python
    }

    /// Where the environment of `spec` lives (built or not).
    pub fn dir(&self, spec: &EnvSpec) -> PathBuf {
        self.root.join(spec.hash())
    }

    /// Forgets the environment of `spec` (a factory rebuild).
    pub async fn remove(&self, spec: &EnvSpec) -> std::io::Result<()> {
        let lock = self.lock(&spec.hash());
        let _guard = lock.lock().await;
        match tokio::fs::remove_dir_all(self.dir(spec)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn lock(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(hash.to_owned())
            .or_default()
            .clone()
    }

    /// The environment of `spec`, built first if needed (with the requirements file at
    /// `app_dir/requirements.txt`, when the spec has one), logging to `log`.
    pub async fn ensure(
        &self,
        spec: &EnvSpec,
        app_dir: &Path,
        log: &Log,
    ) -> Result<PathBuf, BuildError> {
        let dir = self.dir(spec);
        let lock = self.lock(&spec.hash());
        let _guard = lock.lock().await;
        if dir.join(COMPLETE).exists() {
            log.push(&format!(
                "environment {} is cached; no build needed",
                spec.hash()
            ));
            return Ok(dir);
        }
        let started = Instant::now();
        match tokio::time::timeout(self.build_timeout, self.build(spec, &dir, app_dir, log)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log.push(&format!("build failed: {e}"));
                return Err(e);
            }
            Err(_) => {
                log.push(&format!("build timed out after {:?}", self.build_timeout));
                return Err(BuildError::TimedOut(self.build_timeout));
            }
        }
        let io = |source| BuildError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::write(dir.join(COMPLETE), spec.hash()).map_err(io)?;
        let elapsed = started.elapsed();
        log.push(&format!(
            "environment {} built in {:.1}s",
            spec.hash(),
            elapsed.as_secs_f64()
        ));
        tracing::info!(env = %spec.hash(), elapsed = ?elapsed, "Space environment built");
        Ok(dir)
    }

    async fn build(
        &self,
        spec: &EnvSpec,
        dir: &Path,
        app_dir: &Path,
        log: &Log,
    ) -> Result<(), BuildError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BuildError::Io { path, source }
        };
        if dir.exists() {
            log.push("removing an incomplete environment left by an earlier build");
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        let cache = self.root.join("pip-cache");
        // pip unpacks downloads under TMPDIR: on disk, not in the sandbox's small tmpfs.
        let tmp = self.root.join(format!("tmp-{}", spec.hash()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        for d in [dir, cache.as_path(), tmp.as_path()] {
            std::fs::create_dir_all(d).map_err(io(d))?;
            if let Some(uid) = self.build_uid {
                std::os::unix::fs::chown(d, Some(uid), Some(uid)).map_err(io(d))?;
            }
        }
        let package = spec.sdk.package().unwrap_or("pip");
        let requirement = match &spec.sdk_version {
            Some(v) => format!("{package}=={v}"),
            None => package.to_owned(),
        };
        log.push(&format!(
            "building environment {} (python {}, {requirement}{})",
            spec.hash(),
            spec.python,
            if spec.requirements.is_empty() {
                ""
            } else {
                " + requirements.txt"
            }
        ));
        let venv = vec![
            self.python.executable.clone().into_os_string(),
            "-m".into(),
            "venv".into(),
            dir.into(),
        ];
        let dirs = BuildDirs {
            env: dir,
            app: app_dir,
            cache: &cache,
            tmp: &tmp,
        };
        self.step("python -m venv", venv, &dirs, log).await?;
        let mut pip: Vec<OsString> = vec![
            dir.join("bin/python").into(),
            "-m".into(),
            "pip".into(),
            "install".into(),
            "--no-input".into(),
            "--disable-pip-version-check".into(),
            "--progress-bar".into(),
            "off".into(),
            "--cache-dir".into(),
            cache.clone().into(),
            requirement.into(),
        ];
        if !spec.requirements.is_empty() {
            pip.extend(["-r".into(), "/app/requirements.txt".into()]);
        }
        let result = self.step("pip install", pip, &dirs, log).await;
        if let Err(e) = std::fs::remove_dir_all(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a build's temporary directory");
        }
        result
    }

    /// Runs one build step in the sandbox, its output going to `log`.
    async fn step(
        &self,
        step: &'static str,
        command: Vec<OsString>,
        dirs: &BuildDirs<'_>,
        log: &Log,
    ) -> Result<(), BuildError> {
        let dir = dirs.env;
        let jail = Jail {
            app_dir: Some(dirs.app.to_owned()),
            env_dir: Some(dir.to_owned()),
            env_writable: true,
            read_only: self.python.read_only_dirs(),
            writable: vec![dirs.cache.to_owned(), dirs.tmp.to_owned()],
            uid: self.build_uid,
            command,
        };
        let argv = self.sandbox.argv(&jail);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", format!("{}/bin:/usr/bin:/bin", dir.display()))
            .env("HOME", "/tmp")
            .env("TMPDIR", dirs.tmp)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in BUILD_PASSTHROUGH {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|source| BuildError::Spawn { step, source })?;
        let out = child.stdout.take().map(|o| pump(o, log));
        let err = child.stderr.take().map(|e| pump(e, log));
        let (status, _, _) = tokio::join!(
            child.wait(),
            async {
                if let Some(f) = out {
                    f.await
                }
            },
            async {
                if let Some(f) = err {
                    f.await
                }
            }
        );
        let status = status.map_err(|source| BuildError::Spawn { step, source })?;
        if status.success() {
            Ok(())
        } else {
            Err(BuildError::Failed {
                step,
                status: status.to_string(),
            })
        }
    }
}

/// The directories of one build: the environment, the checkout (for `requirements.txt`),
/// pip's cache and the build's temporary directory (all but the checkout writable).
struct BuildDirs<'a> {
    env: &'a Path,
    app: &'a Path,
    cache: &'a Path,
    tmp: &'a Path,
}

/// Copies every line of `reader` into `log`.
pub(crate) async fn pump(reader: impl tokio::io::AsyncRead + Unpin, log: &Log) {
    let mut lines = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // A line is read whole; a line without a newline is cut by the log's bound, and a
        // pathological one cannot grow past this cap.
        match (&mut lines)
            .take(crate::log::MAX_LINE as u64 * 4)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => log.push(&String::from_utf8_lossy(&buf)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_changes_with_everything_that_defines_the_environment() {
        let base = EnvSpec {
            sdk: Sdk::Gradio,
            sdk_version: Some("5.0".into()),
            python: "3.11".into(),
            requirements: b"numpy\n".to_vec(),
        };
        let h = base.hash();
        assert_eq!(h.len(), 64);
        assert_eq!(h, base.clone().hash());
        let mut other = base.clone();
        other.sdk = Sdk::Streamlit;
        assert_ne!(other.hash(), h);
        let mut other = base.clone();
        other.sdk_version = Some("5.1".into());
        assert_ne!(other.hash(), h);
        let mut other = base.clone();
        other.python = "3.12".into();
        assert_ne!(other.hash(), h);
        let mut other = base.clone();
        other.requirements = b"numpy\npandas\n".to_vec();
        assert_ne!(other.hash(), h);
        // Field boundaries are part of the encoding.
        let a = EnvSpec {
            sdk_version: Some("5.01".into()),
            python: "1".into(),
            ..base.clone()
        };
        let b = EnvSpec {
            sdk_version: Some("5.0".into()),
            python: "11".into(),
            ..base
        };
        assert_ne!(a.hash(), b.hash());
    }
}
