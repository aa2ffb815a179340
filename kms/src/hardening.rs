//! Process hardening for a daemon that holds keys: no core dumps (`RLIMIT_CORE = 0`, not
//! dumpable), memory locked so keys are not swapped out (`mlockall`), and a terminal prompt with
//! echo off for the passphrase. Each step warns instead of failing when not permitted.
//!
//! This is the only module with `unsafe` (libc calls); each block states why it is sound.
#![allow(unsafe_code)]

use std::io::{BufRead, Write};

/// Disable core dumps and ptrace-style dumping of this process.
pub fn disable_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid, initialized rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not disable core dumps (RLIMIT_CORE)");
    }
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not mark the process non-dumpable");
    }
}

/// Lock current and future memory (`mlockall`); warn when not permitted (e.g. RLIMIT_MEMLOCK).
pub fn lock_memory() {
    // SAFETY: mlockall takes integer flags only.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "mlockall failed: keys may be swapped to disk (raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK)"
        );
    } else {
        tracing::info!("memory locked (mlockall)");
    }
}

/// Read one line from the terminal with echo off. `None` when there is no terminal.
pub fn prompt_hidden(prompt: &str) -> Option<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tty);
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd or fails.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open terminal for the lifetime of `tty`; term is a valid pointer.
    if unsafe { libc::tcgetattr(fd, &mut term) } != 0 {
        return None;
    }
    let original = term;
    term.c_lflag &= !libc::ECHO;
    term.c_lflag |= libc::ECHONL;
    // SAFETY: as above; we restore `original` below.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
    let mut writer = &tty;
    let _ = writer.write_all(prompt.as_bytes());
    let _ = writer.flush();
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: restores the settings read above on the same fd.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &original) };
    read.ok()?;
    Some(line)
}
