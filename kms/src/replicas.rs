//! What a replica on PostgreSQL runs besides serving: the lease keeper (`crate::lease`) and the
//! poller that picks up other replicas' changes of what every replica holds in memory.
//!
//! Propagation bound: identities (with their revocation) and root key versions are cached in
//! memory. Every committed change of them (and of named keys, which are read from the database
//! on every request anyway) increments `audit_head.changes` in its own transaction; each replica
//! reads that counter every [`POLL`] and reloads identities and root keys when it moved. A
//! revocation through one replica is therefore refused by every replica within [`POLL`] plus
//! one reload (well under the 2 s promised in `docs/kms-replicas.md`).
//!
//! Secret: root keys are unsealed here with the passphrase key the replica already holds; the
//! passphrase itself is not kept.

use std::sync::Weak;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::KmsState;

/// How often a replica looks for other replicas' changes.
pub const POLL: Duration = Duration::from_millis(250);

/// Renew (or take) the lease every third of its TTL until the state is dropped; reconnect when
/// the connection fails.
pub async fn lease_keeper(state: Weak<KmsState>, mut conn: PgConnection) {
    loop {
        let Some(st) = state.upgrade() else { return };
        let lease = st.lease.clone();
        let period = lease.ttl / 3;
        match lease.renew(&mut conn).await {
            Ok((Some(epoch), true)) => {
                tracing::info!(
                    epoch,
                    holder = %lease.holder_id,
                    "lease acquired: this replica signs checkpoints and runs background jobs"
                );
                st.rewrap_notify.notify_one();
            }
            Ok((Some(_), false)) => {}
            Ok((None, _)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed; reconnecting");
                if let Ok(opts) = pg_options(&st) {
                    match PgConnection::connect_with(&opts).await {
                        Ok(c) => conn = c,
                        Err(e) => tracing::warn!(error = %e, "lease keeper cannot reconnect"),
                    }
                }
            }
        }
        drop(st);
        tokio::time::sleep(period).await;
    }
}

fn pg_options(st: &KmsState) -> Result<sqlx::postgres::PgConnectOptions, ()> {
    match &st.pool {
        crate::store::Db::Pg(p) => Ok(p.connect_options().as_ref().clone()),
        crate::store::Db::Sqlite(_) => Err(()),
    }
}

/// Poll the `changes` counter every [`POLL`]; when it moved, reload identities and root keys.
pub async fn change_poller(state: Weak<KmsState>, pool: PgPool) {
    let mut seen: Option<i64> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let Some(st) = state.upgrade() else { return };
        let changes = match crate::store::pg_head(&pool).await {
            Ok((_, _, _, c)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "polling for other replicas' changes failed");
                continue;
            }
        };
        if seen == Some(changes) {
            continue;
        }
        // Read after the counter: what is loaded is at least as new as `changes`.
        match reload(&st).await {
            Ok(()) => seen = Some(changes),
            Err(e) => tracing::warn!(error = %e, "reloading identities and root keys failed"),
        }
    }
}

/// Shortest time between two reloads asked for by requests ([`on_demand`]).
const ON_DEMAND_EVERY: Duration = Duration::from_millis(100);

/// A request met an identity or root version this replica does not know: reload now unless a
/// reload ran less than [`ON_DEMAND_EVERY`] ago (so unknown names cannot make every request
/// query the database). True when what is loaded is fresh (reloaded now or just before).
pub async fn on_demand(st: &KmsState) -> bool {
    let mut last = st.on_demand_reload.lock().await;
    if last.is_some_and(|t| t.elapsed() < ON_DEMAND_EVERY) {
        return true;
    }
    let ok = match reload(st).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "reloading identities and root keys failed");
            false
        }
    };
    *last = Some(std::time::Instant::now());
    ok
}

/// Reload identities and root key versions from the database.
pub async fn reload(st: &KmsState) -> Result<(), String> {
    let rows = crate::store::identities_pool(&st.pool)
        .await
        .map_err(|e| e.to_string())?;
    let ids = rows
        .iter()
        .map(crate::identity_from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    st.identities.replace_all(ids);
    let sealed = crate::store::root_keys_pool(&st.pool)
        .await
        .map_err(|e| e.to_string())?;
    let pk = st.passphrase_key.lock().await;
    let Some(pk) = pk.as_ref() else {
        return Ok(()); // sealed by an admin: nothing to load
    };
    let mut added = false;
    let mut unsealed = Vec::new();
    for (version, row) in &sealed {
        let known = st
            .keyring
            .read()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.root(*version).is_some()))
            .unwrap_or(true);
        if known {
            continue;
        }
        if row.params != pk.params || row.salt != pk.salt {
            tracing::warn!(
                version,
                "root key version sealed under other KDF parameters; restart this replica to load it"
            );
            continue;
        }
        match pk.unseal(&row.sealed) {
            Ok(k) => unsealed.push((*version, k)),
            Err(e) => tracing::error!(version, error = %e, "root key version does not unseal"),
        }
    }
    if let Ok(mut ring) = st.keyring.write()
        && let Some(r) = ring.as_mut()
    {
        for (v, k) in unsealed {
            r.insert(v, k);
            added = true;
        }
        for v in r.versions() {
            if !sealed.iter().any(|(s, _)| *s == v) {
                r.remove(v);
            }
        }
    }
    if added {
        st.rewrap_notify.notify_one();
    }
    Ok(())
}
