//! The seam between launching a jail and supervising it, shared by both paths: a launcher
//! (`cold.rs`, `warm.rs`) gives a [`Launched`] jail, or a [`NotStarted`] when it could not
//! (the execution may then go the other way); supervision runs it to its end and says whether
//! the harness ever said `started`. That is the one fact that decides whether an execution may
//! be run again: before `started` no user code ran.

use std::io;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Instant;

use super::SandboxError;
use super::process::{self, Ended, Finished, Jailed, Pipes, Spawned, Watch};
use super::slots::Slot;
use super::zygote::Forked;
use crate::config::Profile;
use crate::harness;
use crate::job::Job;

/// Which way an execution ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPath {
    /// A child of the zygote.
    Warm,
    /// A jail of its own, started for it.
    Cold,
}

impl RunPath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

/// What a launcher needs of an execution.
#[derive(Debug)]
pub struct Run<'a> {
    pub profile: Profile,
    pub slot: &'a Slot,
    /// Its directory on the host, where it has one (no mount namespace).
    pub workdir: Option<&'a Path>,
    pub job: &'a Job,
}

/// A jail that is running, with its pipes, from when it was asked for.
#[derive(Debug)]
pub struct Launched {
    pub(super) jail: Jail,
    pub(super) pipes: Pipes,
    pub(super) started: Instant,
}

/// The process of a launched jail.
#[derive(Debug)]
pub enum Jail {
    Cold(Spawned),
    Warm(Forked),
}

impl Jailed for Jail {
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Self::Cold(spawned) => spawned.wait().await,
            Self::Warm(forked) => forked.wait().await,
        }
    }

    fn kill(&mut self) {
        match self {
            Self::Cold(spawned) => spawned.kill(),
            Self::Warm(forked) => forked.kill(),
        }
    }
}

/// No jail ran any user code of the execution, and why.
#[derive(Debug)]
pub struct NotStarted(pub String);

/// What supervising a launched jail came to.
#[derive(Debug)]
pub enum Ran {
    /// The harness said `started`: the script's outcome, whatever it is.
    Started(Box<Finished>),
    /// The jail ended before the harness started: the sandbox failed, not the script.
    NotStarted(NotStarted),
}

impl Launched {
    /// Runs the jail to its end, at most the deadline from when it was asked for.
    pub async fn supervise(mut self, watch: Watch<'_>) -> Result<Ran, SandboxError> {
        let finished = process::supervise(&mut self.jail, self.pipes, self.started, watch)
            .await
            .map_err(|source| SandboxError::Internal {
                context: "supervising the sandbox process failed",
                source,
            })?;
        let started = harness::started(&finished.result.bytes);
        Ok(match finished.ended {
            Ended::Exited(_) if !started => Ran::NotStarted(NotStarted(
                super::outcome::startup_failure(&finished.log, &finished.stderr),
            )),
            // A time limit or a shutdown is the execution's end, started or not.
            _ => Ran::Started(Box::new(finished)),
        })
    }
}
