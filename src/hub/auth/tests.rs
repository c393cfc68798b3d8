use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_800_000_000;

fn verify(token: &str) -> Result<Grant, AuthError> {
    Verifier::new(KEY).verify(token, NOW)
}

/// A token with any header and payload, HMAC-SHA256-signed under `KEY` whatever the header says.
fn signed(header: &str, payload: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = EncodingKey::from_secret(KEY);
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

/// An HS256 token with `payload` as its claims.
fn with_claims(payload: &str) -> String {
    signed(r#"{"alg":"HS256","typ":"JWT"}"#, payload)
}

fn patterns(list: &[&str]) -> Vec<Pattern> {
    list.iter().map(|s| Pattern::parse(s).unwrap()).collect()
}

#[test]
fn an_issued_token_verifies_to_its_grant() {
    let token = issue(
        KEY,
        "alice",
        NOW + 60,
        &["prices.*", "chat:lobby"],
        &["chat:lobby"],
    );
    let grant = verify(&token).unwrap();
    assert_eq!(
        grant,
        Grant {
            user: "alice".into(),
            expires: NOW + 60,
            subscribe: patterns(&["prices.*", "chat:lobby"]),
            publish: patterns(&["chat:lobby"]),
        }
    );
    assert!(grant.may_subscribe("prices.AAPL") && grant.may_subscribe("chat:lobby"));
    assert!(!grant.may_subscribe("chat:other") && !grant.may_publish("prices.AAPL"));
    assert!(grant.may_publish("chat:lobby"));
}

#[test]
fn a_token_made_with_the_library_directly_verifies_the_same_way() {
    #[derive(Serialize)]
    struct Channels<'a> {
        sub: Vec<&'a str>,
        #[serde(rename = "pub")]
        publish: Vec<&'a str>,
    }
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        nbf: u64,
        iat: u64,
        channels: Channels<'a>,
    }
    let claims = Claims {
        sub: "bob",
        exp: NOW + 3_600,
        nbf: NOW,
        iat: NOW,
        channels: Channels {
            sub: vec!["*"],
            publish: vec!["news"],
        },
    };
    let header = Header::new(Algorithm::HS256);
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(KEY)).unwrap();
    let grant = verify(&token).unwrap();
    assert_eq!(grant.user, "bob");
    assert_eq!(grant.expires, NOW + 3_600);
    assert_eq!(grant.subscribe, patterns(&["*"]));
    assert_eq!(grant.publish, patterns(&["news"]));
    assert_eq!(
        verify(&token),
        verify(&issue(KEY, "bob", NOW + 3_600, &["*"], &["news"]))
    );

    // And the other way round: the library accepts what `issue` signs.
    #[derive(Deserialize)]
    struct Back {
        sub: String,
        exp: u64,
    }
    let token = issue(KEY, "carol", u64::from(u32::MAX) * 2, &[], &[]);
    let back = jsonwebtoken::decode::<Back>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(KEY),
        &jsonwebtoken::Validation::new(Algorithm::HS256),
    )
    .unwrap();
    assert_eq!(
        (back.claims.sub.as_str(), back.claims.exp),
        ("carol", u64::from(u32::MAX) * 2)
    );
}

#[test]
fn signatures_and_algorithms() {
    let good = issue(KEY, "alice", NOW + 60, &["*"], &[]);
    let (message, signature) = good.rsplit_once('.').unwrap();

    // A changed character in the middle of the signature (the last one may only carry padding
    // bits, and then it is a base64 error instead).
    let mut bad = signature.as_bytes().to_vec();
    bad[10] = if bad[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{message}.{}", String::from_utf8(bad).unwrap());
    assert_eq!(verify(&tampered), Err(AuthError::BadSignature));

    // Claims swapped under the original signature.
    let (header, _) = message.split_once('.').unwrap();
    let other = issue(KEY, "mallory", NOW + 60, &["*"], &["*"]);
    let other_claims = other.split('.').nth(1).unwrap();
    let swapped = format!("{header}.{other_claims}.{signature}");
    assert_eq!(verify(&swapped), Err(AuthError::BadSignature));

    // Another key.
    let foreign = issue(
        b"another secret entirely, 32 bytes",
        "alice",
        NOW + 60,
        &["*"],
        &[],
    );
    assert_eq!(verify(&foreign), Err(AuthError::BadSignature));

    let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
    // `alg: none`, with an empty signature or a valid-looking one.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(&claims)
    );
    assert_eq!(verify(&unsigned), Err(AuthError::BadSignature));
    assert_eq!(
        verify(&signed(r#"{"alg":"none"}"#, &claims)),
        Err(AuthError::BadSignature)
    );
    // Other algorithms, even with a signature that is a valid HS256 one over the bytes.
    for alg in [
        "RS256", "HS384", "HS512", "ES256", "EdDSA", "hs256", "XX999",
    ] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        assert_eq!(
            verify(&signed(&header, &claims)),
            Err(AuthError::BadSignature),
            "{alg}"
        );
    }
    assert!(verify(&signed(r#"{"alg":"HS256"}"#, &claims)).is_ok());
}

#[test]
fn malformed_tokens() {
    let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
    let good = with_claims(&claims);
    let long = format!("{good}{}", "A".repeat(MAX_TOKEN_LEN));
    let no_alg = signed(r#"{"typ":"JWT"}"#, &claims);
    let crit = signed(r#"{"alg":"HS256","crit":["x"],"x":1}"#, &claims);
    // Without `crit`, the same extra header field is fine.
    assert!(verify(&signed(r#"{"alg":"HS256","x":1,"kid":"k1"}"#, &claims)).is_ok());
    let not_json = with_claims("not json");
    // The library reads `exp`, `nbf`, `aud`... out of the claims before they reach us, and
    // refuses claims that are not an object as it would refuse any non-JSON.
    let array = with_claims("[1,2,3]");
    let string = with_claims(r#""alice""#);
    let two_parts = good.rsplit_once('.').unwrap().0.to_owned();
    let four_parts = format!("{good}.x");
    for token in [
        "",
        "abc",
        "a.b.c",
        "...",
        "eyJ.eyJ.%%%",
        two_parts.as_str(),
        four_parts.as_str(),
        long.as_str(),
        no_alg.as_str(),
        crit.as_str(),
        not_json.as_str(),
        array.as_str(),
        string.as_str(),
    ] {
        assert_eq!(verify(token), Err(AuthError::Malformed), "{token:.60}");
    }
}

#[test]
fn time_has_no_leeway() {
    let at = |claims: String| verify(&with_claims(&claims));
    // RFC 7519 §4.1.4: valid only while now < exp, so exp == now is expired.
    assert_eq!(
        at(format!(r#"{{"sub":"a","exp":{NOW}}}"#)),
        Err(AuthError::Expired)
    );
    assert_eq!(
        at(format!(r#"{{"sub":"a","exp":{}}}"#, NOW - 1)),
        Err(AuthError::Expired)
    );
    assert!(at(format!(r#"{{"sub":"a","exp":{}}}"#, NOW + 1)).is_ok());
    // §4.1.5: valid from nbf on.
    let e = NOW + 60;
    assert_eq!(
        at(format!(r#"{{"sub":"a","exp":{e},"nbf":{}}}"#, NOW + 1)),
        Err(AuthError::NotYetValid)
    );
    assert!(at(format!(r#"{{"sub":"a","exp":{e},"nbf":{NOW}}}"#)).is_ok());
    assert!(at(format!(r#"{{"sub":"a","exp":{e},"nbf":null}}"#)).is_ok());
    // Fractions round to the stricter side: exp down, nbf up.
    assert_eq!(
        at(format!(r#"{{"sub":"a","exp":{NOW}.9}}"#)),
        Err(AuthError::Expired)
    );
    assert!(at(format!(
        r#"{{"sub":"a","exp":{e}.9e0,"nbf":{}.5}}"#,
        NOW - 1
    ))
    .is_ok());
    assert_eq!(
        at(format!(r#"{{"sub":"a","exp":{e},"nbf":{NOW}.1}}"#)),
        Err(AuthError::NotYetValid)
    );
    // Not yet valid is reported before expired.
    assert_eq!(
        at(format!(r#"{{"sub":"a","exp":{NOW},"nbf":{e}}}"#)),
        Err(AuthError::NotYetValid)
    );
    // The same token at another time.
    let token = issue(KEY, "a", NOW, &[], &[]);
    assert!(Verifier::new(KEY).verify(&token, NOW - 1).is_ok());
    assert_eq!(
        Verifier::new(KEY).verify(&token, NOW),
        Err(AuthError::Expired)
    );
}

#[test]
fn bad_claims() {
    let e = NOW + 60;
    let long_user = "u".repeat(MAX_USER_LEN + 1);
    let max_user = "u".repeat(MAX_USER_LEN);
    let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("\"c{i}\"")).collect();
    let too_many = format!(
        r#"{{"sub":"a","exp":{e},"channels":{{"sub":[{}]}}}}"#,
        many.join(",")
    );
    let enough = format!(
        r#"{{"sub":"a","exp":{e},"channels":{{"sub":[{}]}}}}"#,
        many[..MAX_PATTERNS].join(",")
    );
    let refused = [
        format!(r#"{{"exp":{e}}}"#),
        format!(r#"{{"sub":"","exp":{e}}}"#),
        format!(r#"{{"sub":null,"exp":{e}}}"#),
        format!(r#"{{"sub":42,"exp":{e}}}"#),
        format!(r#"{{"sub":"{long_user}","exp":{e}}}"#),
        format!(r#"{{"sub":"a\nb","exp":{e}}}"#),
        format!(r#"{{"sub":"anon:0.1.2","exp":{e}}}"#),
        format!(r#"{{"sub":"anon:","exp":{e}}}"#),
        r#"{"sub":"a"}"#.to_owned(),
        r#"{"sub":"a","exp":"soon"}"#.to_owned(),
        r#"{"sub":"a","exp":-1}"#.to_owned(),
        r#"{"sub":"a","exp":null}"#.to_owned(),
        format!(r#"{{"sub":"a","exp":{e},"nbf":"now"}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":[]}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":"*"}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":{{"sub":"*"}}}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":{{"sub":[1]}}}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":{{"pub":["a*b"]}}}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":{{"pub":[""]}}}}"#),
        format!(r#"{{"sub":"a","exp":{e},"aud":"elsewhere"}}"#),
        format!(r#"{{"sub":"a","exp":{e},"aud":["elsewhere"]}}"#),
        too_many,
    ];
    for claims in &refused {
        assert_eq!(
            verify(&with_claims(claims)),
            Err(AuthError::BadClaims),
            "{claims:.80}"
        );
    }
    let accepted = [
        format!(r#"{{"sub":"{max_user}","exp":{e}}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":null}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":{{}}}}"#),
        format!(r#"{{"sub":"a","exp":{e},"channels":{{"sub":null,"pub":[],"other":1}}}}"#),
        format!(r#"{{"sub":"ünïcödé","exp":{e},"iss":"anyone","extra":{{"x":1}}}}"#),
        enough,
    ];
    for claims in &accepted {
        assert!(verify(&with_claims(claims)).is_ok(), "{claims:.80}");
    }
    let bare = verify(&with_claims(&format!(r#"{{"sub":"a","exp":{e}}}"#))).unwrap();
    assert!(bare.subscribe.is_empty() && bare.publish.is_empty());
    assert!(!bare.may_subscribe("anything"));
}

#[test]
fn pattern_table() {
    let long = "c".repeat(crate::hub::wire::MAX_CHANNEL_LEN);
    let too_long = "c".repeat(crate::hub::wire::MAX_CHANNEL_LEN + 1);
    let long_prefix = format!("{long}*");
    let too_long_prefix = format!("{too_long}*");
    // (pattern, channel, matches)
    let table: &[(&str, &str, bool)] = &[
        ("prices.*", "prices.AAPL", true),
        ("prices.*", "prices.", true),
        ("prices.*", "prices", false),
        ("prices.*", "pricesX", false),
        ("prices.*", "other.AAPL", false),
        ("prices*", "prices.AAPL", true),
        ("prices*", "prices", true),
        ("*", "anything/at:all", true),
        ("chat:lobby", "chat:lobby", true),
        ("chat:lobby", "chat:lobby2", false),
        ("chat:lobby", "chat:lobb", false),
        ("chat:lobby", "Chat:lobby", false),
        (&long, &long, true),
        (&long_prefix, &long, true),
    ];
    for &(pattern, channel, expected) in table {
        let p = Pattern::parse(pattern).unwrap();
        assert_eq!(p.as_str(), pattern);
        assert_eq!(p.matches(channel), expected, "{pattern} ~ {channel}");
    }
    for bad in [
        "",
        "**",
        "a*b",
        "*a",
        "a**",
        "a b",
        "a\"",
        "é",
        &too_long,
        &too_long_prefix,
    ] {
        assert_eq!(Pattern::parse(bad), None, "{bad:.20}");
    }
}

#[test]
fn anonymous_grants_everything_forever() {
    let g = Grant::anonymous();
    assert_eq!(g.user, "");
    assert_eq!(g.expires, u64::MAX);
    assert!(g.may_subscribe("a") && g.may_publish("b/c:d"));
    assert!(!g.expired(u64::MAX - 1));
}

#[test]
fn where_the_token_comes_from() {
    let t = Some("tok");
    // (authorization, path, expected)
    let table: &[(Option<&str>, &str, Option<&str>)] = &[
        (Some("Bearer abc"), "/ws", Some("abc")),
        (Some("bearer abc"), "/ws", Some("abc")),
        (Some("BEARER   abc  "), "/ws", Some("abc")),
        (Some("Bearer abc"), "/ws?token=tok", Some("abc")),
        (Some("Basic dXNlcjpwYXNz"), "/ws?token=tok", t),
        (Some("Bearer"), "/ws?token=tok", t),
        (Some("Bearer "), "/ws?token=tok", t),
        (Some("Bearerabc"), "/ws", None),
        (Some(""), "/ws", None),
        (None, "/ws", None),
        (None, "/ws?token=tok", t),
        (None, "/ws?a=1&token=tok&b=2", t),
        (None, "/ws?token=tok&token=other", t),
        (None, "/ws?tokens=x&xtoken=y", None),
        (None, "/ws?token=", None),
        (None, "/ws?token", None),
        (None, "/ws?token=tok#frag", t),
        (None, "/ws?%74oken=tok", t),
        (None, "/ws?token=a%2Eb%2ec", Some("a.b.c")),
        (None, "/ws?token=a+b", Some("a+b")),
        (None, "/ws?token=100%", Some("100%")),
        (None, "/ws?token=%zz%4", Some("%zz%4")),
        (None, "/ws?token=%C3%A9", Some("é")),
        (None, "/ws?token=%FF", Some("\u{FFFD}")),
        (None, "/ws/token=tok", None),
    ];
    for &(authorization, path, expected) in table {
        assert_eq!(
            token_from(authorization, path).as_deref(),
            expected,
            "{authorization:?} {path}"
        );
    }
}

#[test]
fn origin_table() {
    let list: Vec<String> = vec![
        "https://app.example.com".into(),
        "http://localhost:3000/".into(),
    ];
    // (origin, allowed by `list`)
    let table: &[(Option<&str>, bool)] = &[
        (None, true),
        (Some("https://app.example.com"), true),
        (Some("HTTPS://App.Example.COM"), true),
        (Some("http://localhost:3000"), true),
        (Some("http://app.example.com"), false),
        (Some("https://app.example.com:8443"), false),
        (Some("https://evil.example.com"), false),
        (Some("https://app.example.com.evil.com"), false),
        (Some("http://localhost:30000"), false),
        (Some("null"), false),
        (Some(""), false),
    ];
    for &(origin, expected) in table {
        assert_eq!(origin_allowed(origin, &list), expected, "{origin:?}");
        assert!(
            origin_allowed(origin, &[]),
            "an empty list allows {origin:?}"
        );
    }
    assert!(origin_allowed(Some("null"), &["null".to_owned()]));
}

/// Splits a response into its head and body, checking `Content-Length` on the way.
fn parse_response(bytes: &[u8]) -> (String, String) {
    let text = std::str::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, body.len());
    assert!(head.contains("\r\nConnection: close"));
    assert_eq!(body.lines().count(), 1);
    (head.to_owned(), body.to_owned())
}

#[test]
fn error_responses() {
    use AuthError::*;
    for e in [
        Missing,
        Malformed,
        BadSignature,
        Expired,
        NotYetValid,
        BadClaims,
    ] {
        assert_eq!(e.http_status(), 401);
        let (head, body) = parse_response(&e.response());
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert_eq!(body, format!("{e}\n"));
        let challenge = head
            .lines()
            .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
            .unwrap();
        if e == Missing {
            assert_eq!(challenge, "Bearer");
        } else {
            assert!(
                challenge.starts_with(r#"Bearer error="invalid_token""#),
                "{challenge}"
            );
        }
    }
    let (head, body) = parse_response(FORBIDDEN_ORIGIN_RESPONSE);
    assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"));
    assert_eq!(body, "origin not allowed\n");
}

#[test]
fn the_verifier_does_not_print_its_key() {
    let printed = format!("{:?}", Verifier::new(b"hunter2-hunter2-hunter2-hunter2"));
    assert!(
        !printed.contains("hunter2") && !printed.contains("104"),
        "{printed}"
    );
}
