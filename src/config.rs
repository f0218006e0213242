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
    /// Default 12 MiB: room for 8 MiB of input files in base64 and a 100 KiB script even when
    /// JSON escaping inflates it.
    pub max_body_bytes: usize,
    /// Bytes of request bodies the service receives at once, all requests together (each
    /// holds what it announces, or `max_body_bytes`); beyond them a request gets 503 `busy`.
    /// Default 64 MiB: five of the largest bodies at once.
    pub body_budget_bytes: usize,
    /// A client must send a request's headers within this, in milliseconds, or the connection
    /// is closed (slowloris); a new connection must bring its first request within it too.
    /// Default 10,000.
    pub header_read_timeout_ms: u64,
    /// ... and its whole body within this (408 otherwise), however it trickles. Default 10,000.
    pub body_read_timeout_ms: u64,
    /// A connection with no request for this long is closed (keep-alive HTTP/1.1, HTTP/2).
    /// Default 60,000.
    pub idle_timeout_ms: u64,
    /// Connections open at once; beyond them a new one is answered 503 and closed at once.
    /// Default 1,000, and never more than the open-files limit allows.
    pub max_connections: usize,
    /// The Google Cloud project whose Cloud Trace a request's trace id belongs to, so JSON
    /// logs link to it (`projects/<project>/traces/<id>`). Default none (the bare id); env
    /// `GOOGLE_CLOUD_PROJECT`.
    pub trace_project: Option<String>,
    /// After SIGTERM, in-flight executions get this long to finish before they are stopped
    /// and answered 503. Default 8,000: under Cloud Run's 10 s. Env `PYEXEC_SHUTDOWN_GRACE_MS`.
    pub shutdown_grace_ms: u64,
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
    /// Which jail profile runs scripts: `auto` (default: `strict` where this kernel allows it,
    /// else `cloudrun` with a loud warning), `strict` or `cloudrun`; env `PYEXEC_PROFILE`.
    pub profile: ProfileChoice,
    /// The weakest profile the service may run with. `strict` makes a deployment refuse to
    /// start (fail closed) rather than degrade to `cloudrun`. Default `cloudrun`;
    /// env `PYEXEC_REQUIRE_PROFILE`.
    pub require: Profile,
    /// The directory holding the profiles (`strict.cfg`, `cloudrun.cfg`). Default `nsjail`,
    /// relative to the working directory;
    /// env `PYEXEC_PROFILE_DIR`.
    pub profile_dir: PathBuf,
    /// Where the instance's directory (`pyexec-<block>`) holding each execution's private
    /// directory is made. Default `/tmp`; env `PYEXEC_WORK_ROOT`.
    pub work_root: PathBuf,
    /// The first of 64 blocks of 1000 uids. Each instance on the host takes the first free
    /// block for as long as it runs, and its executions run as host uid = gid = block + slot,
    /// one slot per concurrent execution, so no two running scripts share a uid and everything
    /// a finished one left behind can be found and removed by uid. Those ids must belong to
    /// nothing else on the host. Default 990000.
    pub uid_base: u32,
    /// Bound each execution's memory and processes with a cgroup of its own where the host
    /// lets the service create one (default true). False forces rlimits only, which is all
    /// Cloud Run's first generation offers.
    pub cgroups: bool,
    /// Sandboxes running at once; further requests wait. 0 (default) means one per CPU;
    /// env `PYEXEC_MAX_CONCURRENCY`.
    pub max_concurrency: usize,
    /// Requests that may wait for a sandbox; beyond them the answer is 503 at once.
    /// Default 16; env `PYEXEC_MAX_QUEUE`.
    pub max_queue: usize,
    /// How long a request may wait for a sandbox before it gets 503, in milliseconds.
    /// Default 10,000.
    pub queue_timeout_ms: u64,
    /// Run scripts on the warm path (a zygote that imported the harness and `preload` once
    /// forks a fresh jail per script) where it starts; false runs every script in a cold
    /// jail. Default true; env `PYEXEC_WARM`.
    pub warm: bool,
    /// Modules the warm path imports once, so scripts do not pay for them. Default
    /// `["numpy", "pandas"]`.
    pub preload: Vec<String>,
    /// Executions one zygote may fork before a fresh one takes over: its children share what a
    /// fork cannot renew (the hash secret, the address layout, `AT_RANDOM`). Default 1000.
    pub zygote_max_executions: u64,
    /// Seconds a zygote may serve before a fresh one takes over, for the same reason.
    /// Default 600.
    pub zygote_max_age_secs: u64,
}

/// Per-execution limits. `GET /` publishes them as [`crate::protocol::ServiceLimits`], whose
/// names and words are the API's; these are the operator's.
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
    /// Memory per execution, in bytes: a cgroup limit where cgroups are writable, else an
    /// address-space rlimit. Default 512 MiB (numpy and pandas need about 70 MiB resident).
    pub memory_bytes: u64,
    /// Processes and threads per execution. Default 64.
    pub processes: u64,
    /// CPU seconds per execution (all threads together). Default 60.
    pub cpu_secs: u64,
    /// Size of the private `/tmp` (strict profile), in bytes. Default 64 MiB.
    pub tmp_bytes: u64,
    /// Largest file a script may write, in bytes. Default 64 MiB.
    pub file_bytes: u64,
    /// Open file descriptors per process. Default 256.
    pub open_files: u64,
    /// Input files a request may bring. Default 64.
    pub input_files: usize,
    /// Their total size once decoded, in bytes. Default 8 MiB: a real CSV, and with base64's
    /// third more it still fits the request body limit.
    pub input_bytes: u64,
    /// Files an answer may return. Default 64.
    pub output_files: usize,
    /// Their total size, in bytes. Default 8 MiB.
    pub output_files_bytes: u64,
}

/// A jail profile, weakest first: `cloudrun` < `strict`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[strum(
    serialize_all = "lowercase",
    parse_err_ty = String,
    parse_err_fn = strongest_first
)]
pub enum Profile {
    /// No namespaces: Cloud Run's first generation (gVisor).
    CloudRun,
    /// Every namespace, a private root, cgroup limits where available.
    Strict,
}

/// The configured profile: one, or `auto` to probe for the strongest.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::VariantNames,
)]
#[strum(
    serialize_all = "lowercase",
    parse_err_ty = String,
    parse_err_fn = expected::<Self>
)]
pub enum ProfileChoice {
    Auto,
    Strict,
    CloudRun,
}

/// The log line format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::VariantNames,
)]
#[strum(
    serialize_all = "lowercase",
    parse_err_ty = String,
    parse_err_fn = expected::<Self>
)]
pub enum LogFormat {
    Text,
    Json,
}

impl Profile {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl ProfileChoice {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// The settings that are one of a few names. Their spellings are strum's alone: the file
/// and the environment both read them through `FromStr`, so they accept the same names and
/// refuse others with the same words.
macro_rules! deserialize_by_name {
    ($($name:ty),*) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                name.parse()
                    .map_err(|expected| serde::de::Error::custom(format!("{name:?}: {expected}")))
            }
        }
    )*};
}

deserialize_by_name!(Profile, ProfileChoice, LogFormat);

/// Why a name is not one of `T`'s: "expected `a`, `b` or `c`".
fn expected<T: strum::VariantNames>(_refused: &str) -> String {
    one_of(T::VARIANTS.iter())
}

/// As [`expected`], strongest first, as `auto` is followed in [`ProfileChoice`]'s message.
fn strongest_first(_refused: &str) -> String {
    one_of(<Profile as strum::VariantNames>::VARIANTS.iter().rev())
}

fn one_of<'a>(names: impl ExactSizeIterator<Item = &'a &'static str>) -> String {
    let last = names.len().saturating_sub(1);
    let mut message = "expected ".to_owned();
    for (at, name) in names.enumerate() {
        let joint = match at {
            0 => "",
            _ if at == last => " or ",
            _ => ", ",
        };
        message.extend([joint, "`", name, "`"]);
    }
    message
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            log_format: LogFormat::Text,
            max_body_bytes: 12 << 20,
            body_budget_bytes: 64 << 20,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 1000,
            trace_project: None,
            shutdown_grace_ms: 8_000,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            nsjail: PathBuf::from("/opt/pyexec/bin/nsjail"),
            python: PathBuf::from("/opt/pyexec/sandbox/bin/python3"),
            profile: ProfileChoice::Auto,
            require: Profile::CloudRun,
            profile_dir: PathBuf::from("nsjail"),
            work_root: PathBuf::from("/tmp"),
            uid_base: 990_000,
            cgroups: true,
            max_concurrency: 0,
            max_queue: 16,
            queue_timeout_ms: 10_000,
            warm: true,
            preload: vec!["numpy".to_owned(), "pandas".to_owned()],
            zygote_max_executions: 1000,
            zygote_max_age_secs: 600,
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
            memory_bytes: 512 << 20,
            processes: 64,
            cpu_secs: 60,
            tmp_bytes: 64 << 20,
            file_bytes: 64 << 20,
            open_files: 256,
            input_files: 64,
            input_bytes: 8 << 20,
            output_files: 64,
            output_files_bytes: 8 << 20,
        }
    }
}

/// The least memory an execution may be given: with less, Python cannot start with numpy.
pub const MIN_MEMORY_BYTES: u64 = 64 << 20;

impl Limits {
    pub fn time_limit(&self) -> Duration {
        Duration::from_millis(self.time_limit_ms)
    }

    /// The least memory a request may ask for: [`MIN_MEMORY_BYTES`], or all there is when
    /// the limit is lower (which only tests can configure; [`Config::load`] refuses it).
    pub fn memory_floor(&self) -> u64 {
        MIN_MEMORY_BYTES.min(self.memory_bytes)
    }
}

impl ServerConfig {
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

impl Config {
    /// The backstop for a whole request: the longest a request can legitimately take (wait for
    /// a sandbox, run, read its body) plus a margin, so the runner, which kills the jail,
    /// always answers first, and nothing can hang the service or its shutdown.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(
            self.sandbox.queue_timeout_ms
                + self.limits.time_limit_ms
                + self.server.body_read_timeout_ms,
        ) + Duration::from_secs(10)
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
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's own error spans several lines (a caret under the spot); this is its one line.
    #[error("invalid config file {path}{}: {message}", .line.map(|line| format!(", line {line}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        message: String,
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
        if let Some(project) = env("GOOGLE_CLOUD_PROJECT") {
            server.trace_project = Some(project);
        }
        override_from(&env, "PYEXEC_NSJAIL", &mut sandbox.nsjail)?;
        override_from(&env, "PYEXEC_PYTHON", &mut sandbox.python)?;
        override_from(&env, "PYEXEC_PROFILE", &mut sandbox.profile)?;
        override_from(&env, "PYEXEC_REQUIRE_PROFILE", &mut sandbox.require)?;
        override_from(&env, "PYEXEC_PROFILE_DIR", &mut sandbox.profile_dir)?;
        override_from(&env, "PYEXEC_WORK_ROOT", &mut sandbox.work_root)?;
        override_from(&env, "PYEXEC_MAX_CONCURRENCY", &mut sandbox.max_concurrency)?;
        override_from(&env, "PYEXEC_MAX_QUEUE", &mut sandbox.max_queue)?;
        override_from(&env, "PYEXEC_WARM", &mut sandbox.warm)?;
        override_from(
            &env,
            "PYEXEC_SHUTDOWN_GRACE_MS",
            &mut server.shutdown_grace_ms,
        )?;
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
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            line: error
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1),
            message: error.message().to_owned(),
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
                self.server.body_budget_bytes < self.server.max_body_bytes
                    || u32::try_from(self.server.body_budget_bytes).is_err(),
                "server.body_budget_bytes must be at least server.max_body_bytes, and below 4 GiB",
            ),
            (
                self.server.max_connections == 0,
                "server.max_connections must be at least 1",
            ),
            (
                self.sandbox.concurrency() > 999,
                "sandbox.max_concurrency must be at most 999 (a block of uids, less the zygote's)",
            ),
            (
                self.sandbox.uid_base > u32::MAX - 64_000,
                "sandbox.uid_base leaves no room for 64 blocks of 1000 uids",
            ),
            (
                limits.result_bytes == 0,
                "limits.result_bytes must be at least 1",
            ),
            (
                self.sandbox.uid_base < 1000,
                "sandbox.uid_base must be at least 1000: never root or a system user",
            ),
            (
                limits.memory_bytes < MIN_MEMORY_BYTES,
                "limits.memory_bytes must be at least 64 MiB",
            ),
            (limits.processes == 0, "limits.processes must be at least 1"),
            (
                self.sandbox.zygote_max_executions == 0 || self.sandbox.zygote_max_age_secs == 0,
                "sandbox.zygote_max_executions and sandbox.zygote_max_age_secs must be at least 1",
            ),
            (
                limits.input_bytes > limits.tmp_bytes,
                "limits.input_bytes must be at most limits.tmp_bytes: input files live in /tmp",
            ),
            (
                self.sandbox.profile == ProfileChoice::CloudRun
                    && self.sandbox.require == Profile::Strict,
                "sandbox.profile is `cloudrun` but sandbox.require is `strict`: \
                 set profile to `auto` or `strict`",
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
    fn a_bad_file_is_one_line_naming_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[server]\nport = 80\n[limits]\ntime_limit = 5\n").unwrap();
        let error = Config::from_file(&path).unwrap_err().to_string();
        assert!(!error.contains('\n'), "{error}");
        assert!(
            error.starts_with(&format!("invalid config file {}, line 4: ", path.display())),
            "{error}"
        );
        assert!(error.contains("time_limit"), "{error}");
        let error = Config::from_file(&dir.path().join("missing.toml")).unwrap_err();
        let chain = crate::telemetry::ErrorChain(&error).to_string();
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }

    #[test]
    fn named_settings_take_the_same_spellings_from_the_file_and_the_environment() {
        assert_eq!("strict".parse(), Ok(Profile::Strict));
        assert_eq!("cloudrun".parse(), Ok(Profile::CloudRun));
        assert_eq!("auto".parse(), Ok(ProfileChoice::Auto));
        assert_eq!("cloudrun".parse(), Ok(ProfileChoice::CloudRun));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(Profile::CloudRun.name(), "cloudrun");
        assert_eq!(ProfileChoice::Auto.name(), "auto");
        let config: Config = toml::from_str(
            "[server]\nlog_format = \"json\"\n[sandbox]\nprofile = \"cloudrun\"\nrequire = \"strict\"\n",
        )
        .unwrap();
        assert_eq!(config.server.log_format, LogFormat::Json);
        assert_eq!(config.sandbox.profile, ProfileChoice::CloudRun);
        assert_eq!(config.sandbox.require, Profile::Strict);
        // Exactly these: no other case, no `cloud_run`.
        assert!("Strict".parse::<Profile>().is_err());
        assert!("cloud_run".parse::<ProfileChoice>().is_err());
    }

    #[test]
    fn a_bad_name_says_which_names_are_expected() {
        assert_eq!(
            "fast".parse::<Profile>(),
            Err("expected `strict` or `cloudrun`".to_owned())
        );
        assert_eq!(
            "fast".parse::<ProfileChoice>(),
            Err("expected `auto`, `strict` or `cloudrun`".to_owned())
        );
        assert_eq!(
            "yaml".parse::<LogFormat>(),
            Err("expected `text` or `json`".to_owned())
        );
        let error = Config::load(env(&[("PYEXEC_PROFILE", "fast")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid value \"fast\" in environment variable PYEXEC_PROFILE: \
             expected `auto`, `strict` or `cloudrun`"
        );
        let error = toml::from_str::<Config>("[server]\nlog_format = \"yaml\"\n").unwrap_err();
        assert!(
            error
                .message()
                .contains("\"yaml\": expected `text` or `json`"),
            "{error}"
        );
    }

    #[test]
    fn a_profile_weaker_than_required_is_refused() {
        let error = Config::load(env(&[
            ("PYEXEC_PROFILE", "cloudrun"),
            ("PYEXEC_REQUIRE_PROFILE", "strict"),
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("sandbox.require"), "{error}");
    }

    #[test]
    fn a_root_sandbox_uid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.toml");
        std::fs::write(&path, "[sandbox]\nuid_base = 0\n").unwrap();
        let path = path.to_str().unwrap().to_owned();
        let error =
            Config::load(move |name| (name == "PYEXEC_CONFIG").then(|| path.clone())).unwrap_err();
        assert!(error.to_string().contains("root"), "{error}");
    }
}
