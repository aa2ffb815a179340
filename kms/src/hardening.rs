//! Process hardening for a daemon that holds keys: no core dumps (`RLIMIT_CORE = 0`, not
//! dumpable), memory locked so keys are not swapped out (`mlockall`), and a terminal prompt with
//! echo off for the passphrase. Each step warns instead of failing when not permitted. The
//! system calls go through `rustix`'s safe wrappers: no `unsafe` here.

use std::io::{BufRead, Write};

use rustix::mm::{MlockAllFlags, mlockall};
use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};

/// Disable core dumps and ptrace-style dumping of this process.
pub fn disable_core_dumps() {
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, zero) {
        tracing::warn!(error = %std::io::Error::from(e), "could not disable core dumps (RLIMIT_CORE)");
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %std::io::Error::from(e), "could not mark the process non-dumpable");
    }
}

/// Lock current and future memory (`mlockall`); warn when not permitted (e.g. RLIMIT_MEMLOCK).
pub fn lock_memory() {
    match mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE) {
        Err(e) => tracing::warn!(
            error = %std::io::Error::from(e),
            "mlockall failed: keys may be swapped to disk (raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)"
        ),
        Ok(()) => tracing::info!("memory locked (mlockall)"),
    }
}

/// Read one line from the terminal with echo off. `None` when there is no terminal.
pub fn prompt_hidden(prompt: &str) -> Option<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let original = tcgetattr(&tty).ok()?;
    let mut term = original.clone();
    term.local_modes.remove(LocalModes::ECHO);
    term.local_modes.insert(LocalModes::ECHONL);
    let _ = tcsetattr(&tty, OptionalActions::Now, &term);
    let mut writer = &tty;
    let _ = writer.write_all(prompt.as_bytes());
    let _ = writer.flush();
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // Restore the settings read above, whatever the read did.
    let _ = tcsetattr(&tty, OptionalActions::Now, &original);
    read.ok()?;
    Some(line)
}
