//! The seccomp policy, the one definition of it: which system calls a jailed process may not
//! make, compiled to BPF with `seccompiler`. The harness installs it before any user code runs
//! (`no_new_privs` first), in the cold path and in every warm child alike; the warm path's
//! zygote, which must still create namespaces and mounts for its children, installs the part
//! that applies to it too.
//!
//! Denied calls fail with `EPERM`, so Python raises `PermissionError` and the caller reads a
//! traceback, not a dead process; `clone3` fails with `ENOSYS`, since its flags live in memory
//! a filter cannot read, and the C library then falls back to `clone`, whose flags it can.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the seccomp policy lists x86_64 system calls; add the other architecture's");

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Denied to every process in a jail, the zygote included: debugging or reading other
/// processes, kernel code and BPF, keyrings, `io_uring`, every socket but a Unix `socketpair`,
/// System V IPC and message queues (they outlive the process that made them), the clock,
/// and file handles that bypass paths.
const EVERYONE: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("socket", libc::SYS_socket),
    ("shmget", libc::SYS_shmget),
    ("msgget", libc::SYS_msgget),
    ("semget", libc::SYS_semget),
    ("mq_open", libc::SYS_mq_open),
    ("acct", libc::SYS_acct),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("setdomainname", libc::SYS_setdomainname),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("quotactl", libc::SYS_quotactl),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
];

/// Denied to scripts only (the zygote needs them to build its children's jails): mounts,
/// namespaces, the hostname, leaving the process group or session.
const SCRIPTS: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("sethostname", libc::SYS_sethostname),
    ("setsid", libc::SYS_setsid),
    ("setpgid", libc::SYS_setpgid),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
];

/// The `clone` flags that make a namespace: none may be made by a script.
const CLONE_NEW: [i32; 8] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    0x80, // CLONE_NEWTIME
];

/// The socket options that grow a buffer: denied, so each socket holds at most the kernel's
/// default (what the memory watchdog counts it at).
const BUFFER_OPTIONS: [i32; 4] = [
    libc::SO_SNDBUF,
    libc::SO_RCVBUF,
    libc::SO_SNDBUFFORCE,
    libc::SO_RCVBUFFORCE,
];

/// Who a set of filters is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The warm path's zygote: everything but what it needs to jail its children.
    Zygote,
    /// A script: everything.
    Script,
}

/// The filters for `subject`, each as the bytes of its `sock_filter` array (8 bytes an
/// instruction, native byte order), to be installed in order.
pub fn filters(subject: Subject) -> Vec<Vec<u8>> {
    let mut denied = rules(EVERYONE);
    condition_rule(&mut denied, libc::SYS_socketpair, |rules| {
        rules.push(rule(&[(0, SeccompCmpOp::Ne, arg(libc::AF_UNIX))]));
    });
    if subject == Subject::Script {
        denied.extend(rules(SCRIPTS));
        condition_rule(&mut denied, libc::SYS_clone, |rules| {
            for flag in CLONE_NEW.map(arg) {
                rules.push(rule(&[(0, SeccompCmpOp::MaskedEq(flag), flag)]));
            }
        });
        condition_rule(&mut denied, libc::SYS_setsockopt, |rules| {
            for option in BUFFER_OPTIONS {
                rules.push(rule(&[
                    (1, SeccompCmpOp::Eq, arg(libc::SOL_SOCKET)),
                    (2, SeccompCmpOp::Eq, arg(option)),
                ]));
            }
        });
    }
    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    [(denied, EPERM), (clone3, ENOSYS)]
        .into_iter()
        .map(|(rules, errno)| compile(rules, errno))
        .collect()
}

/// A C `int` constant as the 64-bit value a condition compares (all of these are positive).
fn arg(value: i32) -> u64 {
    u64::from(value.unsigned_abs())
}

fn rules(calls: &[(&str, i64)]) -> BTreeMap<i64, Vec<SeccompRule>> {
    calls
        .iter()
        .map(|&(_, number)| (number, Vec::new()))
        .collect()
}

/// Adds conditional rules for `call` (a call with no rules at all is denied outright).
fn condition_rule(
    rules: &mut BTreeMap<i64, Vec<SeccompRule>>,
    call: i64,
    add: impl FnOnce(&mut Vec<SeccompRule>),
) {
    add(rules.entry(call).or_default());
}

/// A rule matching when every `(argument, comparison, value)` holds (32-bit comparisons: the
/// arguments compared are all C `int`s or `unsigned long` flags that fit).
fn rule(conditions: &[(u8, SeccompCmpOp, u64)]) -> SeccompRule {
    let conditions = conditions
        .iter()
        .map(|(argument, op, value)| {
            SeccompCondition::new(*argument, SeccompCmpArgLen::Dword, op.clone(), *value)
                .unwrap_or_else(|error| unreachable!("a fixed condition is valid: {error}"))
        })
        .collect();
    SeccompRule::new(conditions)
        .unwrap_or_else(|error| unreachable!("a fixed rule is valid: {error}"))
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: u32) -> Vec<u8> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        TargetArch::x86_64,
    )
    .unwrap_or_else(|error| unreachable!("a fixed policy compiles: {error}"));
    let program: BpfProgram = filter
        .try_into()
        .unwrap_or_else(|error| unreachable!("a fixed policy compiles: {error:?}"));
    program
        .iter()
        .flat_map(|instruction| {
            let mut bytes = Vec::with_capacity(8);
            bytes.extend_from_slice(&instruction.code.to_ne_bytes());
            bytes.push(instruction.jt);
            bytes.push(instruction.jf);
            bytes.extend_from_slice(&instruction.k.to_ne_bytes());
            bytes
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_get_more_denied_than_the_zygote() {
        let zygote = filters(Subject::Zygote);
        let script = filters(Subject::Script);
        assert_eq!((zygote.len(), script.len()), (2, 2));
        assert!(script[0].len() > zygote[0].len());
        for program in zygote.iter().chain(&script) {
            assert_eq!(program.len() % 8, 0);
        }
    }
}
