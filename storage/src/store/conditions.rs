//! Preconditions of a write: `If-None-Match: *` (the key must not exist) and `If-Match: <etag>`
//! (the current object must exist with that ETag). They are evaluated inside the transaction
//! that publishes the write, on the one writer connection, so a write or delete that commits
//! first is always seen: two `If-None-Match: *` writes of one key never both succeed (issue 11
//! E17). The S3 edge may also check them before reading a body, to fail early; that check is
//! advisory, this one decides.
//!
//! Secret: none. Atomic: read in the publishing transaction.

use super::db::{Tx, q};
use super::meta::DbError;

/// What `If-Match` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *`: any current object.
    Any,
    /// The current object's ETag (unquoted).
    ETag(String),
}

/// The preconditions of one write (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteCondition {
    /// `If-None-Match: *`.
    pub if_none_match_any: bool,
    pub if_match: Option<IfMatch>,
}

/// Why a publishing transaction did not publish: a precondition does not hold, or the bucket
/// is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionFailed {
    /// `If-None-Match: *` and the key exists (412).
    Exists,
    /// `If-Match` and no object has the key (AWS: 404 NoSuchKey).
    Missing,
    /// `If-Match` and the object has another ETag (412).
    ETagDiffers,
    /// The bucket was deleted while the write was in flight (DeleteBucket aborted its version):
    /// 404 NoSuchBucket, and nothing was published.
    BucketGone,
}

impl WriteCondition {
    pub fn is_none(&self) -> bool {
        !self.if_none_match_any && self.if_match.is_none()
    }

    /// Evaluate against the ETag of the key's current object (`None`: no object).
    pub fn check(&self, current: Option<&str>) -> Result<(), ConditionFailed> {
        if self.if_none_match_any && current.is_some() {
            return Err(ConditionFailed::Exists);
        }
        match (&self.if_match, current) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(ConditionFailed::Missing),
            (Some(IfMatch::Any), Some(_)) => Ok(()),
            (Some(IfMatch::ETag(want)), Some(have)) if want == have => Ok(()),
            (Some(IfMatch::ETag(_)), Some(_)) => Err(ConditionFailed::ETagDiffers),
        }
    }
}

/// Evaluate `cond` inside the publishing transaction.
pub(crate) async fn check_tx(
    tx: &mut Tx<'_>,
    bucket: &str,
    key: &str,
    cond: &WriteCondition,
) -> Result<Result<(), ConditionFailed>, DbError> {
    if cond.is_none() {
        return Ok(Ok(()));
    }
    let etag: Option<String> = q("SELECT etag FROM objects WHERE bucket = $1 AND key = $2")
        .bind(bucket)
        .bind(key)
        .scalar_optional(tx.ex())
        .await?;
    Ok(cond.check(etag.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_hold_or_name_why_not() {
        let none = WriteCondition::default();
        assert_eq!(none.check(None), Ok(()));
        assert_eq!(none.check(Some("e")), Ok(()));
        let absent = WriteCondition {
            if_none_match_any: true,
            if_match: None,
        };
        assert_eq!(absent.check(None), Ok(()));
        assert_eq!(absent.check(Some("e")), Err(ConditionFailed::Exists));
        let m = WriteCondition {
            if_none_match_any: false,
            if_match: Some(IfMatch::ETag("e".into())),
        };
        assert_eq!(m.check(Some("e")), Ok(()));
        assert_eq!(m.check(Some("f")), Err(ConditionFailed::ETagDiffers));
        assert_eq!(m.check(None), Err(ConditionFailed::Missing));
        let any = WriteCondition {
            if_none_match_any: false,
            if_match: Some(IfMatch::Any),
        };
        assert_eq!(any.check(Some("e")), Ok(()));
        assert_eq!(any.check(None), Err(ConditionFailed::Missing));
    }
}
