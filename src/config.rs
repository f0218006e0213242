//! The service's configuration: one typed struct, its defaults, the optional TOML file and the
//! environment overrides. Loading only reads; a value that is set but malformed is an error,
//! never a silent default. `config/default.toml` documents every field and a test keeps it
//! equal to [`Config::default`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Everything the service can be told, grouped by who uses it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub sandbox: SandboxConfig,
    pub limits: Limits,
}

/// The HTTP side.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `0.0.0.0`; env `PYEXEC_HOST`.
    pub host: IpAddr,
    /// Port to listen on. Default 8080; env `PORT` (set by Cloud Run).
    pub port: u16,
    /// `text` (default) or `json` log lines; env `PYEXEC_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// Largest request body read, in bytes; larger bodies get 413 before they are buffered.
    /// Default 1 MiB: room for a 100 KiB script even when JSON escaping inflates it.
    pub max_body_bytes: usize,
}

/// How the sandbox is started.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The nsjail binary. Default `/opt/pyexec/bin/nsjail`; env `PYEXEC_NSJAIL`.
    pub nsjail: PathBuf,
    /// The sandbox interpreter (a venv of Debian's python3 with numpy and pandas).
    /// Default `/opt/pyexec/sandbox/bin/python3`; env `PYEXEC_PYTHON`.
    pub python: PathBuf,
    /// The jail profile: an nsjail config file (protobuf text format).
    /// Default `nsjail/cloudrun.cfg`, relative to the working directory; env `PYEXEC_NSJAIL_CONFIG`.
    pub profile: PathBuf,
    /// Where each execution's private directory is created. Default `/tmp`; env `PYEXEC_WORK_ROOT`.
    pub work_root: PathBuf,
    /// The unprivileged uid and gid scripts run as. Default 65534 (nobody/nogroup).
    pub uid: u32,
    pub gid: u32,
    /// Sandboxes running at once; further requests wait. 0 (default) means one per CPU;
    /// env `PYEXEC_MAX_CONCURRENCY`.
    pub max_concurrency: usize,
}

/// Per-execution limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest script, in bytes of UTF-8. Default 102,400 (100 KiB).
    pub script_bytes: usize,
    /// Wall-clock limit per execution, in milliseconds. Default 30,000; env `PYEXEC_TIME_LIMIT_MS`.
    pub time_limit_ms: u64,
    /// stdout and stderr kept per execution, in bytes each; the rest is discarded and flagged.
    /// Default 1 MiB.
    pub output_bytes: usize,
    /// Largest JSON encoding of `main()`'s return value, in bytes. Default 16 MiB.
    pub result_bytes: usize,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`".to_owned()),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            log_format: LogFormat::Text,
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            nsjail: PathBuf::from("/opt/pyexec/bin/nsjail"),
            python: PathBuf::from("/opt/pyexec/sandbox/bin/python3"),
            profile: PathBuf::from("nsjail/cloudrun.cfg"),
            work_root: PathBuf::from("/tmp"),
            uid: 65534,
            gid: 65534,
            max_concurrency: 0,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            script_bytes: 100 * 1024,
            time_limit_ms: 30_000,
            output_bytes: 1024 * 1024,
            result_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Limits {
    pub fn time_limit(&self) -> Duration {
        Duration::from_millis(self.time_limit_ms)
    }
}

impl ServerConfig {
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

impl SandboxConfig {
    /// The configured concurrency, with 0 resolved to the number of CPUs.
    pub fn concurrency(&self) -> usize {
        match self.max_concurrency {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value {value:?} in environment variable {name}: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then the file named by `PYEXEC_CONFIG` if set, then the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(|name| std::env::var(name).ok())
    }

    /// As [`Config::from_env`], with the environment injected so tests never mutate it.
    pub fn load(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = match env("PYEXEC_CONFIG") {
            Some(path) => Self::from_file(Path::new(&path))?,
            None => Self::default(),
        };
        let server = &mut config.server;
        let sandbox = &mut config.sandbox;
        let limits = &mut config.limits;
        override_from(&env, "PYEXEC_HOST", &mut server.host)?;
        override_from(&env, "PORT", &mut server.port)?;
        override_from(&env, "PYEXEC_LOG_FORMAT", &mut server.log_format)?;
        override_from(&env, "PYEXEC_NSJAIL", &mut sandbox.nsjail)?;
        override_from(&env, "PYEXEC_PYTHON", &mut sandbox.python)?;
        override_from(&env, "PYEXEC_NSJAIL_CONFIG", &mut sandbox.profile)?;
        override_from(&env, "PYEXEC_WORK_ROOT", &mut sandbox.work_root)?;
        override_from(&env, "PYEXEC_MAX_CONCURRENCY", &mut sandbox.max_concurrency)?;
        override_from(&env, "PYEXEC_TIME_LIMIT_MS", &mut limits.time_limit_ms)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file; fields it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let checks = [
            (
                limits.time_limit_ms == 0,
                "limits.time_limit_ms must be at least 1",
            ),
            (
                limits.script_bytes == 0,
                "limits.script_bytes must be at least 1",
            ),
            (
                self.server.max_body_bytes < limits.script_bytes,
                "server.max_body_bytes must be at least limits.script_bytes",
            ),
            (
                limits.result_bytes == 0,
                "limits.result_bytes must be at least 1",
            ),
            (
                self.sandbox.uid == 0 || self.sandbox.gid == 0,
                "sandbox.uid and sandbox.gid must not be 0 (root)",
            ),
        ];
        match checks.into_iter().find(|(failed, _)| *failed) {
            Some((_, message)) => Err(ConfigError::Invalid(message.to_owned())),
            None => Ok(()),
        }
    }
}

fn override_from<T>(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    field: &mut T,
) -> Result<(), ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    if let Some(value) = env(name) {
        *field = value.parse().map_err(|error: T::Err| ConfigError::Env {
            name,
            reason: error.to_string(),
            value,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn the_documented_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }

    #[test]
    fn environment_overrides_the_defaults() {
        let config =
            Config::load(env(&[("PORT", "9000"), ("PYEXEC_TIME_LIMIT_MS", "2000")])).unwrap();
        assert_eq!(config.server.port, 9000);
        assert_eq!(config.limits.time_limit(), Duration::from_secs(2));
        assert_eq!(config.sandbox, SandboxConfig::default());
    }

    #[test]
    fn malformed_override_is_an_error_not_a_silent_default() {
        let error = Config::load(env(&[("PORT", "eighty")])).unwrap_err();
        assert!(
            matches!(error, ConfigError::Env { name: "PORT", .. }),
            "{error}"
        );
        assert!(error.to_string().contains("eighty"), "{error}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let error = toml::from_str::<Config>("[limits]\ntime_limit = 5\n").unwrap_err();
        assert!(error.to_string().contains("time_limit"), "{error}");
    }

    #[test]
    fn a_root_sandbox_uid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.toml");
        std::fs::write(&path, "[sandbox]\nuid = 0\n").unwrap();
        let path = path.to_str().unwrap().to_owned();
        let error =
            Config::load(move |name| (name == "PYEXEC_CONFIG").then(|| path.clone())).unwrap_err();
        assert!(error.to_string().contains("root"), "{error}");
    }
}
