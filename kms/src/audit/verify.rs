//! Offline verification of an audit export (`coffer-kms audit verify FILE --public-key FILE`).
//!
//! Checks, in one pass: records are numbered 1, 2, 3... without gaps or reordering; each record's
//! hash matches its content and links to the previous record; each checkpoint is signed by the
//! KMS audit key and matches the chain at its position; the export ends with a `final` checkpoint
//! over its last record. Reports the first bad record. Nothing secret is involved (public key only).

use std::collections::HashMap;
use std::io::BufRead;

use ed25519_dalek::VerifyingKey;

use super::{ExportLine, GENESIS_HASH};

/// An intact export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub checkpoints: u64,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("first bad record: seq {seq} (line {line}): {reason}")]
pub struct Tampered {
    pub seq: u64,
    pub line: usize,
    pub reason: String,
}

/// Verify an export read from `input`.
pub fn verify(input: impl BufRead, key: &VerifyingKey) -> Result<Verified, Tampered> {
    let mut expected = 1u64;
    let mut prev_hash = GENESIS_HASH.to_string();
    // Hashes of records since the last good checkpoint (bounded by the checkpoint interval).
    let mut pending: HashMap<u64, String> = HashMap::new();
    let mut last_good_cp = 0u64;
    let mut last_good_hash = GENESIS_HASH.to_string();
    let mut checkpoints = 0u64;
    let mut finished = false;
    let mut last_line = 0;
    for (i, line) in input.lines().enumerate() {
        let lineno = i + 1;
        last_line = lineno;
        let bad = |seq: u64, reason: String| Tampered {
            seq,
            line: lineno,
            reason,
        };
        let line = line.map_err(|e| bad(expected, format!("unreadable: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = serde_json::from_str(&line)
            .map_err(|_| bad(expected, "line is not a valid record or checkpoint".into()))?;
        match parsed {
            ExportLine::Record(r) => {
                if finished {
                    return Err(bad(
                        r.seq,
                        "record after the final signed checkpoint (appended or forged)".into(),
                    ));
                }
                if r.seq != expected {
                    return Err(bad(
                        expected,
                        format!(
                            "expected seq {expected}, found seq {}: a record was deleted, reordered or inserted",
                            r.seq
                        ),
                    ));
                }
                if r.compute_hash() != r.hash {
                    return Err(bad(
                        r.seq,
                        "content does not match its hash (edited)".into(),
                    ));
                }
                if r.prev_hash != prev_hash {
                    return Err(bad(
                        r.seq,
                        "does not link to the previous record (the chain was altered)".into(),
                    ));
                }
                prev_hash = r.hash.clone();
                pending.insert(r.seq, r.hash);
                expected += 1;
            }
            ExportLine::Checkpoint(cp) => {
                let first_unverified = last_good_cp + 1;
                if !cp.verify(key) {
                    return Err(bad(
                        first_unverified,
                        format!(
                            "checkpoint at seq {} has an invalid signature (forged); records after seq {last_good_cp} are unverified",
                            cp.seq
                        ),
                    ));
                }
                let at_head = if cp.seq == last_good_cp {
                    cp.head_hash == last_good_hash
                } else {
                    pending.get(&cp.seq) == Some(&cp.head_hash)
                };
                if !at_head || cp.seq < last_good_cp {
                    return Err(bad(
                        first_unverified,
                        format!(
                            "signed checkpoint at seq {} does not match the chain: records {first_unverified}..={} were rewritten",
                            cp.seq, cp.seq
                        ),
                    ));
                }
                if cp.seq + 1 != expected {
                    return Err(bad(
                        cp.seq + 1,
                        format!(
                            "record not covered by the signed checkpoint that follows it (checkpoint head is seq {}): inserted or forged",
                            cp.seq
                        ),
                    ));
                }
                pending.clear();
                last_good_cp = cp.seq;
                last_good_hash = cp.head_hash;
                checkpoints += 1;
                finished = cp.is_final;
            }
        }
    }
    if !finished {
        return Err(Tampered {
            seq: last_good_cp + 1,
            line: last_line + 1,
            reason: format!(
                "log truncated: the final signed checkpoint is missing; nothing after seq {last_good_cp} is covered by a signature"
            ),
        });
    }
    Ok(Verified {
        records: expected - 1,
        checkpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditRecord, Checkpoint, now_rfc3339};
    use ed25519_dalek::SigningKey;

    fn export(n: u64, every: u64, key: &SigningKey) -> Vec<String> {
        let mut lines = Vec::new();
        let mut prev = GENESIS_HASH.to_string();
        for seq in 1..=n {
            let mut r = AuditRecord {
                seq,
                time: now_rfc3339(),
                request_id: format!("r{seq}"),
                identity: "node".into(),
                client: "-".into(),
                operation: "unwrap".into(),
                bucket: Some("b".into()),
                key_version: Some(1),
                key_id: None,
                result: "ok".into(),
                detail: None,
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            lines.push(serde_json::to_string(&ExportLine::Record(r)).unwrap());
            if seq % every == 0 {
                let cp = Checkpoint::sign(key, seq, &prev, false);
                lines.push(serde_json::to_string(&ExportLine::Checkpoint(cp)).unwrap());
            }
        }
        let cp = Checkpoint::sign(key, n, &prev, true);
        lines.push(serde_json::to_string(&ExportLine::Checkpoint(cp)).unwrap());
        lines
    }

    fn run(lines: &[String], key: &SigningKey) -> Result<Verified, Tampered> {
        verify(lines.join("\n").as_bytes(), &key.verifying_key())
    }

    #[test]
    fn intact_export_verifies_and_tampering_is_located() {
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let lines = export(12, 5, &key);
        assert_eq!(
            run(&lines, &key),
            Ok(Verified {
                records: 12,
                checkpoints: 3
            })
        );
        // Wrong public key.
        let other = SigningKey::from_bytes(&[6u8; 32]);
        assert!(verify(lines.join("\n").as_bytes(), &other.verifying_key()).is_err());
        // Deleted record 3 (line index 2).
        let mut del = lines.clone();
        del.remove(2);
        assert_eq!(run(&del, &key).unwrap_err().seq, 3);
        // Edited record 4.
        let mut ed = lines.clone();
        ed[3] = ed[3].replace("\"result\":\"ok\"", "\"result\":\"denied\"");
        assert_eq!(run(&ed, &key).unwrap_err().seq, 4);
        // Truncated tail: last checkpoint and two records gone; last good checkpoint at 10.
        let tr = lines[..lines.len() - 3].to_vec();
        let e = run(&tr, &key).unwrap_err();
        assert_eq!(e.seq, 11);
        assert!(e.reason.contains("truncated"), "{e}");
    }
}
