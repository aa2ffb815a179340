//! `coffer-kms admin key …` and `admin alias …`: the admin CLI of named KMS keys (SSE-KMS).
//! Keys are named by key id, key ARN, alias or alias ARN. Output is the API's JSON.
//!
//! Secret: nothing (key material never leaves the KMS).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use coffer_common::kms_api::{
    self as api, KmsAliasRequest, KmsCreateKeyRequest, KmsRotationPeriodRequest,
    KmsScheduleDeletionRequest,
};
use reqwest::Method;

use super::admin::{Client, print};

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a key (Enabled, version 1).
    Create {
        #[arg(long, default_value = "")]
        description: String,
        /// Also create this alias (alias/NAME).
        #[arg(long)]
        alias: Option<String>,
        /// Automatic rotation period in days (90-2560; default off).
        #[arg(long)]
        rotation_period_days: Option<u32>,
    },
    /// List keys.
    List,
    /// Describe a key.
    Describe { key: String },
    /// Enable a key.
    Enable { key: String },
    /// Disable a key (data keys under it can be neither generated nor decrypted).
    Disable { key: String },
    /// Add a new key version (new data keys use it; older versions keep decrypting).
    Rotate { key: String },
    /// Schedule the key's destruction after a waiting period (it is unusable meanwhile).
    Delete {
        key: String,
        /// 7-30 days (default 30).
        #[arg(long)]
        window_days: Option<u32>,
        /// Only report what depends on the key (data keys per bucket and key version).
        #[arg(long)]
        dry_run: bool,
    },
    /// Cancel a scheduled deletion (the key becomes Disabled).
    CancelDeletion { key: String },
    /// Set (`--days N`, 90-2560) or turn off (`--off`) automatic rotation.
    RotationPeriod {
        key: String,
        #[arg(long, conflicts_with = "off", required_unless_present = "off")]
        days: Option<u32>,
        #[arg(long)]
        off: bool,
    },
}

#[derive(Subcommand)]
pub enum AliasCmd {
    /// Create alias/NAME pointing at KEY.
    Create { alias: String, key: String },
    /// Point alias/NAME at another KEY.
    Update { alias: String, key: String },
    /// Delete an alias (the key stays).
    Delete { alias: String },
    /// List aliases.
    List,
}

fn key_path(key: &str, action: &str) -> String {
    if action.is_empty() {
        format!("{}/{key}", api::PATH_ADMIN_KMS_KEYS)
    } else {
        format!("{}/{key}/{action}", api::PATH_ADMIN_KMS_KEYS)
    }
}

fn check_ref(s: &str) -> Result<()> {
    if s.is_empty() || s.contains(['?', '#', '%']) || s.chars().any(char::is_whitespace) {
        bail!("{s:?} is not a key id, ARN or alias");
    }
    Ok(())
}

/// Run `admin key …`.
pub async fn key(c: &Client, cmd: KeyCmd) -> Result<ExitCode> {
    let post = |key: &str, action: &str| {
        let p = key_path(key, action);
        c.request(Method::POST, &p)
    };
    let v = match cmd {
        KeyCmd::Create {
            description,
            alias,
            rotation_period_days,
        } => {
            let req = KmsCreateKeyRequest {
                description,
                alias,
                rotation_period_days,
            };
            c.json(c.request(Method::POST, api::PATH_ADMIN_KMS_KEYS).json(&req))
                .await?
        }
        KeyCmd::List => {
            c.json(c.request(Method::GET, api::PATH_ADMIN_KMS_KEYS))
                .await?
        }
        KeyCmd::Describe { key } => {
            check_ref(&key)?;
            c.json(c.request(Method::GET, &key_path(&key, ""))).await?
        }
        KeyCmd::Enable { key } => {
            check_ref(&key)?;
            c.json(post(&key, "enable")).await?
        }
        KeyCmd::Disable { key } => {
            check_ref(&key)?;
            c.json(post(&key, "disable")).await?
        }
        KeyCmd::Rotate { key } => {
            check_ref(&key)?;
            c.json(post(&key, "rotate")).await?
        }
        KeyCmd::CancelDeletion { key } => {
            check_ref(&key)?;
            c.json(post(&key, "cancel-deletion")).await?
        }
        KeyCmd::Delete {
            key,
            window_days,
            dry_run,
        } => {
            check_ref(&key)?;
            let req = KmsScheduleDeletionRequest {
                pending_window_days: window_days,
                dry_run,
            };
            c.json(post(&key, "schedule-deletion").json(&req)).await?
        }
        KeyCmd::RotationPeriod { key, days, off } => {
            check_ref(&key)?;
            let req = KmsRotationPeriodRequest {
                days: if off { None } else { days },
            };
            c.json(post(&key, "rotation-period").json(&req)).await?
        }
    };
    print(&v)
}

/// Run `admin alias …`.
pub async fn alias(c: &Client, cmd: AliasCmd) -> Result<ExitCode> {
    let v = match cmd {
        AliasCmd::Create { alias, key } => {
            let req = KmsAliasRequest {
                alias,
                target_key_id: key,
            };
            c.json(c.request(Method::POST, api::PATH_ADMIN_ALIASES).json(&req))
                .await?
        }
        AliasCmd::Update { alias, key } => {
            check_ref(&alias)?;
            let p = format!("{}/{alias}", api::PATH_ADMIN_ALIASES);
            let req = KmsAliasRequest {
                alias,
                target_key_id: key,
            };
            c.json(c.request(Method::PUT, &p).json(&req)).await?
        }
        AliasCmd::Delete { alias } => {
            check_ref(&alias)?;
            let p = format!("{}/{alias}", api::PATH_ADMIN_ALIASES);
            c.json(c.request(Method::DELETE, &p)).await?
        }
        AliasCmd::List => {
            c.json(c.request(Method::GET, api::PATH_ADMIN_ALIASES))
                .await?
        }
    };
    print(&v)
}
