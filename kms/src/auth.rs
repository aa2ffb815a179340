//! Request authentication and authorization: EdDSA JWTs verified against the stored public key
//! of the identity their `kid` header names, looked up before any verification (audience,
//! expiry, `sub == kid`, method/path binding via `coffer_common::jwt`), replay refusal
//! through a cache of seen token ids, and scopes (bucket glob, operations). The order of the
//! checks and what a captured token allows: `docs/design.md` ("The KMS API and its
//! authentication").
//!
//! Secret: nothing (the KMS holds only public keys). Bearer tokens are never logged or audited;
//! a refused token is audited by its claimed subject only. Tokens issued before this process
//! started are refused, since the replay cache does not survive a restart.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;

use coffer_common::jwt::{self, JwtError};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

/// A service operation a scope can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Generate,
    Unwrap,
}

impl Op {
    /// Wire/CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Generate => "generate",
            Op::Unwrap => "unwrap",
        }
    }

    /// Parse `generate` / `unwrap`.
    pub fn parse(s: &str) -> Option<Op> {
        match s.trim() {
            "generate" => Some(Op::Generate),
            "unwrap" => Some(Op::Unwrap),
            _ => None,
        }
    }
}

/// Admin or service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Admin,
    Service,
}

/// An identity as the KMS knows it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub kind: Kind,
    pub public_key: VerifyingKey,
    pub bucket_glob: String,
    pub ops: HashSet<Op>,
    /// Named KMS key glob, matched against a key's id and each of its aliases; `""`: none.
    pub key_glob: String,
    pub revoked: bool,
}

impl Identity {
    /// Whether the scope allows `op` on `bucket_id`.
    pub fn allows(&self, op: Op, bucket_id: &str) -> bool {
        self.ops.contains(&op) && glob_match::glob_match(&self.bucket_glob, bucket_id)
    }

    /// Whether the scope allows one of `ops` on the named key known by `names` (its id and
    /// aliases). The glob `*` alone means every key; elsewhere `*` does not cross a `/` (so
    /// `alias/tenant-a-*` does not match `alias/tenant-a-x/y`; `**` does).
    pub fn allows_key<'a>(&self, ops: &[Op], names: impl IntoIterator<Item = &'a str>) -> bool {
        !self.key_glob.is_empty()
            && ops.iter().any(|o| self.ops.contains(o))
            && (self.key_glob == "*"
                || names
                    .into_iter()
                    .any(|n| glob_match::glob_match(&self.key_glob, n)))
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("{0}")]
    Token(JwtError),
    #[error("unknown identity")]
    UnknownIdentity,
    #[error("token was already used")]
    Replayed,
    #[error("token was issued before the KMS started")]
    IssuedBeforeStart,
    #[error("identity is revoked")]
    Revoked,
    #[error("admin routes need an admin identity")]
    NotAdmin,
    #[error("service routes need a service identity")]
    NotService,
}

impl AuthError {
    /// True when the token's signature verified against a known identity's key, so the refused
    /// call is that identity's (audited one-to-one); false for callers that proved nothing (no
    /// token, an unparsable or wrongly signed one, an unknown identity), whose refusals are
    /// audited in aggregate (`audit::refusals`).
    pub fn from_known_identity(&self) -> bool {
        match self {
            AuthError::Missing | AuthError::UnknownIdentity => false,
            AuthError::Token(j) => !matches!(
                j,
                JwtError::Malformed
                    | JwtError::WrongAlgorithm
                    | JwtError::MissingKeyId
                    | JwtError::BadSignature
                    | JwtError::Provider
            ),
            AuthError::Replayed
            | AuthError::IssuedBeforeStart
            | AuthError::Revoked
            | AuthError::NotAdmin
            | AuthError::NotService => true,
        }
    }
}

/// Seen token ids until they expire. Bounded by token lifetime (at most five minutes).
#[derive(Default)]
pub struct ReplayCache {
    inner: Mutex<ReplayInner>,
}

#[derive(Default)]
struct ReplayInner {
    seen: HashMap<[u8; 16], i64>,
    by_expiry: BinaryHeap<Reverse<(i64, [u8; 16])>>,
}

impl ReplayCache {
    /// Record `(sub, jti)`; false when it was already seen (a replay).
    pub fn check_and_insert(&self, sub: &str, jti: &str, exp: i64, now: i64) -> bool {
        let mut h = Sha256::new();
        h.update(sub.as_bytes());
        h.update([0u8]);
        h.update(jti.as_bytes());
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(d.get(..16).unwrap_or(&[0u8; 16]));
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        while let Some(Reverse((e, old))) = g.by_expiry.peek().copied() {
            if e >= now {
                break;
            }
            g.by_expiry.pop();
            g.seen.remove(&old);
        }
        if g.seen.contains_key(&id) {
            return false;
        }
        g.seen.insert(id, exp);
        g.by_expiry.push(Reverse((exp, id)));
        true
    }
}

/// Identities by name, cached in memory (loaded at start, updated after each committed change).
#[derive(Default)]
pub struct Identities {
    map: std::sync::RwLock<HashMap<String, Identity>>,
}

impl Identities {
    /// Replace or add an identity.
    pub fn put(&self, id: Identity) {
        if let Ok(mut m) = self.map.write() {
            m.insert(id.name.clone(), id);
        }
    }

    /// Mark revoked.
    pub fn revoke(&self, name: &str) {
        if let Ok(mut m) = self.map.write()
            && let Some(i) = m.get_mut(name)
        {
            i.revoked = true;
        }
    }

    /// Replace them all (a replica reloading after another replica's change).
    pub fn replace_all(&self, ids: Vec<Identity>) {
        if let Ok(mut m) = self.map.write() {
            *m = ids.into_iter().map(|i| (i.name.clone(), i)).collect();
        }
    }

    /// Look one up.
    pub fn get(&self, name: &str) -> Option<Identity> {
        self.map.read().ok()?.get(name).cloned()
    }
}

/// Claimed identity of a token (unverified: its `kid`, else its `sub`), for audit records of
/// refused requests.
pub fn claimed_subject(token: Option<&str>) -> Option<String> {
    let token = token?;
    let sub = match jwt::decode(token) {
        Ok(t) => t.kid,
        Err(_) => jwt::peek_claims(token).ok()?.sub,
    };
    // Bound and sanitize: this is attacker-controlled text.
    Some(sub.chars().filter(|c| !c.is_control()).take(128).collect())
}

/// Everything needed to check one request's token.
pub struct AuthContext<'a> {
    pub identities: &'a Identities,
    pub replay: &'a ReplayCache,
    pub started_unix: i64,
}

impl AuthContext<'_> {
    /// Authenticate a bearer token for `method path` with the given required kind.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        kind: Kind,
        method: &str,
        path: &str,
    ) -> Result<Identity, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let token = jwt::decode(token).map_err(AuthError::Token)?;
        let id = self
            .identities
            .get(&token.kid)
            .ok_or(AuthError::UnknownIdentity)?;
        let audience = match kind {
            Kind::Admin => jwt::AUD_ADMIN,
            Kind::Service => jwt::AUD_SERVICE,
        };
        let now = jwt::now_unix();
        let claims = token
            .verify(&id.public_key, audience, method, path, now)
            .map_err(AuthError::Token)?;
        if id.kind != kind {
            return Err(match kind {
                Kind::Admin => AuthError::NotAdmin,
                Kind::Service => AuthError::NotService,
            });
        }
        if claims.iat < self.started_unix {
            return Err(AuthError::IssuedBeforeStart);
        }
        if !self
            .replay
            .check_and_insert(&claims.sub, &claims.jti, claims.exp, now)
        {
            return Err(AuthError::Replayed);
        }
        if id.revoked {
            return Err(AuthError::Revoked);
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_common::jwt::{AUD_ADMIN, AUD_SERVICE, Claims};
    use ed25519_dalek::SigningKey;

    fn setup() -> (Identities, SigningKey, SigningKey) {
        let svc = SigningKey::from_bytes(&[1u8; 32]);
        let adm = SigningKey::from_bytes(&[2u8; 32]);
        let ids = Identities::default();
        ids.put(Identity {
            name: "node".into(),
            kind: Kind::Service,
            public_key: svc.verifying_key(),
            bucket_glob: "tenant-a-*".into(),
            ops: [Op::Unwrap].into_iter().collect(),
            key_glob: "alias/tenant-a-*".into(),
            revoked: false,
        });
        ids.put(Identity {
            name: "admin".into(),
            kind: Kind::Admin,
            public_key: adm.verifying_key(),
            bucket_glob: String::new(),
            ops: HashSet::new(),
            key_glob: String::new(),
            revoked: false,
        });
        (ids, svc, adm)
    }

    #[test]
    fn replayed_jti_is_refused_and_scopes_apply() {
        let (ids, svc, _) = setup();
        let replay = ReplayCache::default();
        let ctx = AuthContext {
            identities: &ids,
            replay: &replay,
            started_unix: jwt::now_unix() - 10,
        };
        let t = jwt::sign(&svc, &Claims::new("node", AUD_SERVICE, "POST", "/p", 60));
        let id = ctx
            .authenticate(Some(&t), Kind::Service, "POST", "/p")
            .unwrap();
        assert!(id.allows(Op::Unwrap, "tenant-a-1"));
        assert!(!id.allows(Op::Generate, "tenant-a-1"));
        assert!(!id.allows(Op::Unwrap, "tenant-b-1"));
        let key = "0b7c2c4e-6a3f-4f2e-9d7a-1c2b3d4e5f60";
        assert!(id.allows_key(&[Op::Unwrap], [key, "alias/tenant-a-x"]));
        assert!(!id.allows_key(&[Op::Generate], [key, "alias/tenant-a-x"]));
        assert!(!id.allows_key(&[Op::Unwrap], [key, "alias/tenant-b-x"]));
        let mut all = id.clone();
        all.key_glob = "*".into();
        assert!(all.allows_key(&[Op::Unwrap], [key]));
        assert!(all.allows_key(&[Op::Unwrap], ["alias/aws/s3"]));
        all.key_glob = String::new();
        assert!(!all.allows_key(&[Op::Unwrap], [key, "alias/tenant-a-x"]));
        assert_eq!(
            ctx.authenticate(Some(&t), Kind::Service, "POST", "/p")
                .err(),
            Some(AuthError::Replayed)
        );
        // A fresh token works again.
        let t2 = jwt::sign(&svc, &Claims::new("node", AUD_SERVICE, "POST", "/p", 60));
        assert!(
            ctx.authenticate(Some(&t2), Kind::Service, "POST", "/p")
                .is_ok()
        );
        ids.revoke("node");
        let t3 = jwt::sign(&svc, &Claims::new("node", AUD_SERVICE, "POST", "/p", 60));
        assert_eq!(
            ctx.authenticate(Some(&t3), Kind::Service, "POST", "/p")
                .err(),
            Some(AuthError::Revoked)
        );
    }

    #[test]
    fn audiences_kinds_and_restart_window_are_enforced() {
        let (ids, svc, adm) = setup();
        let replay = ReplayCache::default();
        let ctx = AuthContext {
            identities: &ids,
            replay: &replay,
            started_unix: jwt::now_unix() - 10,
        };
        // Service token on an admin route: wrong audience.
        let t = jwt::sign(&svc, &Claims::new("node", AUD_SERVICE, "GET", "/a", 60));
        assert_eq!(
            ctx.authenticate(Some(&t), Kind::Admin, "GET", "/a").err(),
            Some(AuthError::Token(JwtError::WrongAudience))
        );
        // Service key signing an admin-audience token: not an admin identity.
        let t = jwt::sign(&svc, &Claims::new("node", AUD_ADMIN, "GET", "/a", 60));
        assert_eq!(
            ctx.authenticate(Some(&t), Kind::Admin, "GET", "/a").err(),
            Some(AuthError::NotAdmin)
        );
        // Token claiming the admin identity but signed by the service key.
        let t = jwt::sign(&svc, &Claims::new("admin", AUD_ADMIN, "GET", "/a", 60));
        assert_eq!(
            ctx.authenticate(Some(&t), Kind::Admin, "GET", "/a").err(),
            Some(AuthError::Token(JwtError::BadSignature))
        );
        let t = jwt::sign(&adm, &Claims::new("admin", AUD_ADMIN, "GET", "/a", 60));
        assert!(ctx.authenticate(Some(&t), Kind::Admin, "GET", "/a").is_ok());
        let t = jwt::sign(&adm, &Claims::new("nobody", AUD_ADMIN, "GET", "/a", 60));
        assert_eq!(
            ctx.authenticate(Some(&t), Kind::Admin, "GET", "/a").err(),
            Some(AuthError::UnknownIdentity)
        );
        assert_eq!(
            ctx.authenticate(None, Kind::Admin, "GET", "/a").err(),
            Some(AuthError::Missing)
        );
        let mut c = Claims::new("admin", AUD_ADMIN, "GET", "/a", 60);
        c.iat -= 20;
        let t = jwt::sign(&adm, &c);
        assert_eq!(
            ctx.authenticate(Some(&t), Kind::Admin, "GET", "/a").err(),
            Some(AuthError::IssuedBeforeStart)
        );
    }

    #[test]
    fn key_is_looked_up_by_kid_and_sub_must_match_it() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use ed25519_dalek::Signer;
        let (ids, svc, _) = setup();
        let replay = ReplayCache::default();
        let ctx = AuthContext {
            identities: &ids,
            replay: &replay,
            started_unix: jwt::now_unix() - 10,
        };
        let forge = |kid: &str, claims: &Claims, key: &SigningKey| {
            let h = B64.encode(format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#));
            let c = B64.encode(serde_json::to_vec(claims).unwrap());
            let input = format!("{h}.{c}");
            format!(
                "{input}.{}",
                B64.encode(key.sign(input.as_bytes()).to_bytes())
            )
        };
        // kid names the admin, signed by the node's key: verified under the admin's key.
        let c = Claims::new("admin", AUD_ADMIN, "GET", "/a", 60);
        assert_eq!(
            ctx.authenticate(Some(&forge("admin", &c, &svc)), Kind::Admin, "GET", "/a")
                .err(),
            Some(AuthError::Token(JwtError::BadSignature))
        );
        // kid names the node (so its key verifies) while sub claims the admin.
        assert_eq!(
            ctx.authenticate(Some(&forge("node", &c, &svc)), Kind::Admin, "GET", "/a")
                .err(),
            Some(AuthError::Token(JwtError::WrongSubject))
        );
        // alg none / HS256 never reach a key lookup.
        for alg in ["none", "HS256"] {
            let h = B64.encode(format!(r#"{{"alg":"{alg}","kid":"node"}}"#));
            let c = B64.encode(serde_json::to_vec(&c).unwrap());
            assert_eq!(
                ctx.authenticate(Some(&format!("{h}.{c}.")), Kind::Admin, "GET", "/a")
                    .err(),
                Some(AuthError::Token(JwtError::WrongAlgorithm))
            );
        }
        assert_eq!(
            claimed_subject(Some(&forge("node", &c, &svc))).as_deref(),
            Some("node")
        );
    }

    #[test]
    fn replay_cache_forgets_expired_ids_only() {
        let c = ReplayCache::default();
        assert!(c.check_and_insert("a", "1", 100, 50));
        assert!(!c.check_and_insert("a", "1", 100, 60));
        assert!(c.check_and_insert("b", "1", 100, 60));
        assert!(c.check_and_insert("a", "2", 200, 150));
        assert!(
            c.check_and_insert("a", "1", 300, 150),
            "expired id forgotten"
        );
        assert!(!c.check_and_insert("a", "2", 200, 150));
    }
}
