//! TOML configuration files for both daemons, layered under the command line.
//!
//! A subcommand that has a `config` argument (`--config FILE`, or its environment variable)
//! reads FILE as a flat TOML table whose keys are the subcommand's argument ids (the long flag
//! with `_` for `-`, e.g. `data_dir`, `tls_cert`). Each setting found there is turned into the
//! flag it names, unless that flag was given on the command line or through its environment
//! variable, and the command line is parsed again. So the precedence is
//! **flag > environment > file > built-in default**, and every setting keeps one definition (the
//! clap argument) with one help text and one validation.
//!
//! Unknown keys and values of the wrong shape are errors naming the key: a typo in a config file
//! must not silently fall back to a default. The file holds no secrets, only paths to them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;

/// Id of the argument that names the config file.
pub const CONFIG_ARG: &str = "config";

/// Why a configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Command-line usage error (printed by clap with its own exit code).
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
    /// A key that is not a setting of this command.
    #[error("config file {path}: unknown setting `{key}` (settings: {known})")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The settings the command has.
        known: String,
    },
    /// A value of the wrong type for its setting.
    #[error("config file {path}: setting `{key}` {problem}")]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Parse `argv` with `cmd`, then apply the chosen subcommand's config file (if any) below the
/// flags and environment variables, and parse again. Returns the final matches.
pub fn matches_with_config(
    cmd: clap::Command,
    argv: Vec<OsString>,
) -> Result<ArgMatches, ConfigError> {
    let first = cmd.clone().try_get_matches_from(&argv)?;
    let Some((sub_name, sub)) = first.subcommand() else {
        return Ok(first);
    };
    let Some(sub_cmd) = cmd.find_subcommand(sub_name) else {
        return Ok(first);
    };
    if !sub_cmd.get_arguments().any(|a| a.get_id() == CONFIG_ARG) {
        return Ok(first);
    }
    let Some(path) = sub.get_one::<PathBuf>(CONFIG_ARG).cloned() else {
        return Ok(first);
    };
    let table = read_table(&path)?;
    let extra = file_flags(sub_cmd, sub, &path, &table)?;
    if extra.is_empty() {
        return Ok(first);
    }
    // Insert the file's flags right after the subcommand name, before the user's own flags.
    let at = argv
        .iter()
        .skip(1)
        .position(|a| a == sub_name)
        .map_or(argv.len(), |i| i + 2);
    let mut merged = argv[..at].to_vec();
    merged.extend(extra);
    merged.extend_from_slice(&argv[at..]);
    Ok(cmd.try_get_matches_from(merged)?)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The flags the file contributes: every key not already set on the command line or by env.
fn file_flags(
    cmd: &clap::Command,
    given: &ArgMatches,
    path: &Path,
    table: &toml::Table,
) -> Result<Vec<OsString>, ConfigError> {
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && a.get_long().is_some() && key != CONFIG_ARG);
        let Some(arg) = arg else {
            let known: Vec<&str> = cmd
                .get_arguments()
                .filter(|a| a.get_long().is_some() && a.get_id() != CONFIG_ARG)
                .filter(|a| a.get_id() != "help")
                .map(|a| a.get_id().as_str())
                .collect();
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                known: known.join(", "),
            });
        };
        if matches!(
            given.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let long = format!("--{}", arg.get_long().unwrap_or(key));
        let bad = |problem: &str| ConfigError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            problem: problem.to_string(),
        };
        let is_flag = !arg.get_action().takes_values();
        match value {
            toml::Value::Boolean(b) if is_flag => {
                if *b {
                    out.push(long.into());
                }
            }
            _ if is_flag => return Err(bad("must be true or false")),
            toml::Value::Array(items) => {
                for item in items {
                    out.push(long.clone().into());
                    out.push(scalar(item).ok_or_else(|| bad("must hold strings or numbers"))?);
                }
            }
            v => {
                out.push(long.into());
                out.push(scalar(v).ok_or_else(|| bad("must be a string, number or boolean"))?);
            }
        }
    }
    Ok(out)
}

fn scalar(v: &toml::Value) -> Option<OsString> {
    match v {
        toml::Value::String(s) => Some(s.into()),
        toml::Value::Integer(i) => Some(i.to_string().into()),
        toml::Value::Float(f) => Some(f.to_string().into()),
        toml::Value::Boolean(b) => Some(b.to_string().into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn cmd() -> Command {
        Command::new("d").subcommand(
            Command::new("serve")
                .arg(
                    Arg::new("config")
                        .long("config")
                        .env("T_CONFIG")
                        .value_parser(clap::value_parser!(PathBuf)),
                )
                .arg(Arg::new("listen").long("listen").default_value("a:1"))
                .arg(Arg::new("region").long("region").env("T_REGION_UNSET_X"))
                .arg(
                    Arg::new("timeout_ms")
                        .long("timeout-ms")
                        .value_parser(clap::value_parser!(u64)),
                )
                .arg(
                    Arg::new("verbose")
                        .long("verbose")
                        .action(ArgAction::SetTrue),
                )
                .arg(Arg::new("domain").long("domain").action(ArgAction::Append)),
        )
    }

    fn argv(extra: &[&str]) -> Vec<OsString> {
        ["d", "serve"]
            .iter()
            .chain(extra)
            .map(OsString::from)
            .collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let s = p.to_string_lossy().into_owned();
        (dir, s)
    }

    #[test]
    fn file_fills_in_and_flags_win() {
        let (_d, p) = file(
            "listen = \"b:2\"\nregion = \"eu\"\ntimeout_ms = 250\nverbose = true\ndomain = [\"x.test\", \"y.test\"]\n",
        );
        let m = matches_with_config(cmd(), argv(&["--config", &p, "--region", "us"])).unwrap();
        let (_, s) = m.subcommand().unwrap();
        assert_eq!(s.get_one::<String>("listen").unwrap(), "b:2");
        assert_eq!(s.get_one::<String>("region").unwrap(), "us");
        assert_eq!(*s.get_one::<u64>("timeout_ms").unwrap(), 250);
        assert!(s.get_flag("verbose"));
        let d: Vec<&String> = s.get_many::<String>("domain").unwrap().collect();
        assert_eq!(d, ["x.test", "y.test"]);
    }

    #[test]
    fn without_a_file_defaults_stay() {
        let m = matches_with_config(cmd(), argv(&[])).unwrap();
        let (_, s) = m.subcommand().unwrap();
        assert_eq!(s.get_one::<String>("listen").unwrap(), "a:1");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let (_d, p) = file("lisen = \"b:2\"\n");
        let e = matches_with_config(cmd(), argv(&["--config", &p])).unwrap_err();
        assert!(e.to_string().contains("unknown setting `lisen`"), "{e}");
        assert!(e.to_string().contains("listen"), "{e}");
        let (_d, p) = file("verbose = \"yes\"\n");
        let e = matches_with_config(cmd(), argv(&["--config", &p])).unwrap_err();
        assert!(
            e.to_string().contains("`verbose` must be true or false"),
            "{e}"
        );
        let (_d, p) = file("timeout_ms = \"soon\"\n");
        let e = matches_with_config(cmd(), argv(&["--config", &p])).unwrap_err();
        assert!(matches!(e, ConfigError::Usage(_)), "{e}");
        let (_d, p) = file("listen = [\n");
        let e = matches_with_config(cmd(), argv(&["--config", &p])).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = matches_with_config(cmd(), argv(&["--config", "/nonexistent/c.toml"])).unwrap_err();
        assert!(e.to_string().contains("cannot read config file"), "{e}");
    }
}
