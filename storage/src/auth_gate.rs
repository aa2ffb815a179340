//! Authentication checks made before a request reaches s3s, on the request line and headers
//! only (no body is read): SigV2 in any form is refused (it signs no body and its presigned
//! `Expires` was never checked, so a captured request could be replayed with a new body), a
//! presigned SigV4 URL must carry every query parameter with `1 <= X-Amz-Expires <= 604800` and
//! not be past its expiry, and a credential scope must name this node's region. Answers follow
//! AWS S3 (codes, statuses, messages; see docs/s3-compat.md). Nothing secret: signatures and
//! access keys are never echoed.

use http::HeaderMap;

/// The longest validity of a presigned SigV4 URL (seven days, as AWS).
pub const MAX_PRESIGNED_EXPIRES: i64 = 604_800;

/// Why a request was refused before s3s saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// SigV2 (header, query or POST form): 400 InvalidRequest.
    SigV2,
    /// A malformed or out-of-range presigned query parameter: 400
    /// AuthorizationQueryParametersError with this message.
    QueryParameters(String),
    /// A presigned URL past its expiry: 403 AccessDenied.
    Expired,
    /// The Authorization header's credential names another region.
    HeaderRegion { got: String, expected: String },
    /// The presigned URL's credential names another region.
    QueryRegion { got: String, expected: String },
}

/// AWS's answer to SigV2 in a region that supports SigV4 only.
pub const SIGV2_MESSAGE: &str =
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.";

/// The decoded query parameters (names and values percent-decoded, `+` kept as is, as s3s).
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// The region of a SigV4 credential (`AK/yyyymmdd/region/service/aws4_request`); `None` when
/// the credential does not have that shape (s3s then refuses it as malformed).
pub fn credential_region(credential: &str) -> Option<&str> {
    let parts: Vec<&str> = credential.rsplitn(5, '/').collect();
    // rsplitn yields from the end: terminator, service, region, date, access key.
    if parts.len() != 5 || parts[0] != "aws4_request" {
        return None;
    }
    Some(parts[2])
}

/// The credential of a SigV4 Authorization header.
fn header_credential(auth: &str) -> Option<&str> {
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256")?;
    let at = rest.find("Credential=")?;
    let cred = &rest[at + "Credential=".len()..];
    Some(cred.split([',', ' ']).next().unwrap_or(cred))
}

/// Parse `X-Amz-Date` (`yyyymmddThhmmssZ`).
pub fn parse_amz_date(s: &str) -> Option<time::OffsetDateTime> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, &fmt)
        .ok()
        .map(|t| t.assume_utc())
}

const PRESIGNED_REQUIRED: [&str; 6] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
];

fn check_presigned(
    q: &[(String, String)],
    region: &str,
    now: time::OffsetDateTime,
) -> Result<(), Refusal> {
    let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if PRESIGNED_REQUIRED.iter().any(|n| get(n).is_none()) {
        return Err(Refusal::QueryParameters(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.".into(),
        ));
    }
    let expires = get("X-Amz-Expires").unwrap_or_default();
    let Ok(expires) = expires.parse::<i64>() else {
        return Err(Refusal::QueryParameters(
            "X-Amz-Expires should be a number".into(),
        ));
    };
    if expires < 0 {
        return Err(Refusal::QueryParameters(
            "X-Amz-Expires must be non-negative".into(),
        ));
    }
    if expires == 0 {
        return Err(Refusal::QueryParameters(
            "X-Amz-Expires must be at least 1 second".into(),
        ));
    }
    if expires > MAX_PRESIGNED_EXPIRES {
        return Err(Refusal::QueryParameters(
            "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires must be less than 604800 seconds".into(),
        ));
    }
    let Some(date) = parse_amz_date(get("X-Amz-Date").unwrap_or_default()) else {
        return Err(Refusal::QueryParameters(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"".into(),
        ));
    };
    if let Some(got) = credential_region(get("X-Amz-Credential").unwrap_or_default())
        && got != region
    {
        return Err(Refusal::QueryRegion {
            got: got.to_string(),
            expected: region.to_string(),
        });
    }
    if now > date + time::Duration::seconds(expires) {
        return Err(Refusal::Expired);
    }
    Ok(())
}

/// Check a request's authentication parameters (never its signature: s3s does that next).
pub fn check(
    headers: &HeaderMap,
    query: Option<&str>,
    region: &str,
    now: time::OffsetDateTime,
) -> Result<(), Refusal> {
    let q = query_pairs(query);
    let has = |name: &str| q.iter().any(|(k, _)| k == name);
    if has("AWSAccessKeyId") || (has("Signature") && !has("X-Amz-Signature")) {
        return Err(Refusal::SigV2);
    }
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(auth) = &auth {
        if auth.starts_with("AWS ") {
            return Err(Refusal::SigV2);
        }
        if let Some(got) = header_credential(auth).and_then(credential_region)
            && got != region
        {
            return Err(Refusal::HeaderRegion {
                got: got.to_string(),
                expected: region.to_string(),
            });
        }
    }
    if auth.is_none() && (has("X-Amz-Signature") || has("X-Amz-Credential")) {
        check_presigned(&q, region, now)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status, code and message as the node's error table answers `r`.
    fn parts(r: &Refusal) -> (http::StatusCode, &'static str, String) {
        let w = crate::s3::errors::ApiError::Refused(r.clone()).wire();
        (w.status, w.code, w.message.into_owned())
    }

    fn now() -> time::OffsetDateTime {
        parse_amz_date("20250101T120000Z").unwrap()
    }

    fn presigned(expires: &str, date: &str, region: &str) -> String {
        format!(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20250101%2F{region}%2Fs3%2Faws4_request&X-Amz-Date={date}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host&X-Amz-Signature=ab"
        )
    }

    fn q(query: &str) -> Result<(), Refusal> {
        check(&HeaderMap::new(), Some(query), "us-east-1", now())
    }

    #[test]
    fn sigv2_is_refused_in_every_form() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "AWS AK:c2lnbmF0dXJl".parse().unwrap());
        assert_eq!(check(&h, None, "us-east-1", now()), Err(Refusal::SigV2));
        assert_eq!(
            q("AWSAccessKeyId=AK&Expires=99&Signature=x"),
            Err(Refusal::SigV2)
        );
        assert_eq!(q("Signature=x"), Err(Refusal::SigV2));
        assert_eq!(parts(&Refusal::SigV2).1, "InvalidRequest");
        assert_eq!(parts(&Refusal::SigV2).0, http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn presigned_expires_bounds() {
        let date = "20250101T115900Z";
        assert_eq!(q(&presigned("3600", date, "us-east-1")), Ok(()));
        assert_eq!(q(&presigned("604800", date, "us-east-1")), Ok(()));
        for bad in ["604801", "0", "-5", "abc"] {
            let r = q(&presigned(bad, date, "us-east-1"));
            assert!(
                matches!(r, Err(Refusal::QueryParameters(_))),
                "{bad}: {r:?}"
            );
        }
        assert_eq!(
            q(&presigned("59", date, "us-east-1")),
            Err(Refusal::Expired)
        );
        assert_eq!(q(&presigned("60", date, "us-east-1")), Ok(()));
        let (status, code, msg) = parts(&Refusal::Expired);
        assert_eq!((status.as_u16(), code), (403, "AccessDenied"));
        assert_eq!(msg, "Request has expired");
        assert!(matches!(
            q("X-Amz-Signature=ab&X-Amz-Credential=x"),
            Err(Refusal::QueryParameters(_))
        ));
    }

    #[test]
    fn other_region_is_refused() {
        let r = q(&presigned("3600", "20250101T115900Z", "eu-west-1"));
        assert_eq!(
            r,
            Err(Refusal::QueryRegion {
                got: "eu-west-1".into(),
                expected: "us-east-1".into()
            })
        );
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AK/20250101/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=ab"
                .parse()
                .unwrap(),
        );
        let r = check(&h, None, "us-east-1", now()).unwrap_err();
        let (status, code, msg) = parts(&r);
        assert_eq!(
            (status.as_u16(), code),
            (400, "AuthorizationHeaderMalformed")
        );
        assert!(msg.contains("expecting 'us-east-1'"), "{msg}");
        assert!(check(&h, None, "eu-west-1", now()).is_ok());
        // a malformed credential is left to s3s
        assert_eq!(credential_region("AK/20250101/us-east-1/s3"), None);
        assert_eq!(
            credential_region("A/K/20250101/us-east-1/s3/aws4_request"),
            Some("us-east-1")
        );
    }
}
