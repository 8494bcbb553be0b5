//! Masking of credentials in URLs before they reach a log line or an event: presigned URLs carry a
//! signature and an access key (S3 `X-Amz-Signature` / `X-Amz-Credential`, GCS `X-Goog-*`, Azure SAS
//! `sig`, S3 v2 `Signature` / `AWSAccessKeyId`), and URLs may carry `user:password@`.

/// `text` with the values of credential-bearing query parameters and URL user info replaced by `***`.
/// Works on any text (a URL, or an error message that quotes one).
pub fn redact(text: &str) -> String {
    mask_query(&mask_user_info(text))
}

/// Query parameters whose values are credentials (compared case-insensitively).
const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "awsaccesskeyid",
    "x-goog-signature",
    "x-goog-credential",
    "googleaccessid",
    "sig",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
];

/// Where a URL component ends inside running text (an error message quoting a URL).
fn ends_component(b: u8) -> bool {
    b.is_ascii_whitespace() || b"&#`\"'()<>[],;".contains(&b)
}

fn mask_query(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        if matches!(bytes[i], b'?' | b'&') {
            let name_start = i + 1;
            let mut j = name_start;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || b"-_.%".contains(&bytes[j])) {
                j += 1;
            }
            let name = &text[name_start..j];
            if j < bytes.len() && bytes[j] == b'=' && SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name)) {
                let mut k = j + 1;
                while k < bytes.len() && !ends_component(bytes[k]) {
                    k += 1;
                }
                out.push_str(&text[copied..=j]);
                out.push_str("***");
                (i, copied) = (k, k);
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// `scheme://user:password@host` → `scheme://***@host`.
fn mask_user_info(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail.bytes().position(|b| b"/?#".contains(&b) || ends_component(b)).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_query_values_and_user_info_are_masked() {
        let url = "https://b.s3.example/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=deadbeef0123&X-Amz-Security-Token=tok3n";
        let shown = redact(url);
        for secret in ["AKIAEXAMPLE", "deadbeef0123", "tok3n"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // What is not a credential stays, so the message still says which object it was.
        assert!(shown.starts_with("https://b.s3.example/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256&"), "{shown}");
        assert!(shown.contains("X-Amz-Signature=***") && shown.contains("X-Amz-Expires=3600"), "{shown}");

        let cases = [
            ("error sending request for url (https://h/k?sig=S1gn%3D&se=2025)", "S1gn"),
            ("HTTP 403 from https://h/k?AWSAccessKeyId=AKIA2&Signature=v2sig&Expires=1", "v2sig"),
            ("HTTP 403 from https://h/k?AWSAccessKeyId=AKIA2&Signature=v2sig&Expires=1", "AKIA2"),
            ("https://h/k?x-goog-signature=g00g&x-goog-credential=svc%40p", "g00g"),
            ("https://h/k?x-goog-signature=g00g&x-goog-credential=svc%40p", "svc%40p"),
            ("unsupported URL `ftp://bob:hunter2@h/k`", "hunter2"),
            ("https://h/k?token=abc123#frag", "abc123"),
            ("https://h/k?a=1&ACCESS_TOKEN=zz9\"", "zz9"),
        ];
        for (text, secret) in cases {
            let shown = redact(text);
            assert!(!shown.contains(secret), "{text} -> {shown}");
        }
        assert_eq!(redact("unsupported URL `ftp://bob:hunter2@h/k`"), "unsupported URL `ftp://***@h/k`");
        assert_eq!(redact("https://h/k?sig=S1gn%3D&se=2025)"), "https://h/k?sig=***&se=2025)");
        // Nothing to hide: unchanged.
        for plain in ["s3://bucket/key", "https://h/a?b=c&signed=no", "host `h` is not in fetch.allowed_hosts"] {
            assert_eq!(redact(plain), plain);
        }
    }
}
