//! Forged and malformed bearer tokens: every one is refused with its own
//! reason before anything reaches the backend, attacker-named key URLs are
//! never fetched, and made-up kids cost the provider at most the documented
//! number of JWKS fetches.

use std::sync::atomic::Ordering;

use base64::Engine;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};

use crate::fixture::{get, start_counting_listener, Env};

const PATH: &str = "/v1/x?deploymentId=support";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// `header.payload` of the JSON texts, base64url without padding.
fn signing_input(header: &Value, payload: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    )
}

fn hmac(alg: Algorithm, key: &[u8], input: &str) -> String {
    let algorithm = match alg {
        Algorithm::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
        Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
        _ => unreachable!(),
    };
    let tag = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(algorithm, key), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// A DER element: tag, length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::new();
    if bytes[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(bytes);
    der(0x02, &content)
}

/// The provider's RSA public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo):
/// the text an HS/RS confusion attack keys its HMAC with.
fn rsa_public_pem(jwk: &Value) -> String {
    let n = unb64(jwk["n"].as_str().unwrap());
    let e = unb64(jwk["e"].as_str().unwrap());
    let rsa_key = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    let mut bit_string = vec![0u8];
    bit_string.extend(rsa_key);
    let algorithm = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01],
            ),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let spki = der(0x30, &[algorithm, der(0x03, &bit_string)].concat());
    let body = base64::engine::general_purpose::STANDARD.encode(spki);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// An attacker's own P-256 key: its JWK, a self-signed certificate, and a
/// signer for ES256 tokens.
struct Attacker {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    jwk: Value,
    cert_der: Vec<u8>,
}

impl Attacker {
    fn new() -> Attacker {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["evil.example".to_string()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pair.serialize_der(),
        )
        .unwrap();
        let point = pair.public_key_raw();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        Attacker {
            key,
            jwk,
            cert_der: cert.der().to_vec(),
        }
    }

    fn sign(&self, header: &Value, payload: &Value) -> String {
        let input = signing_input(header, payload);
        let sig = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// `token` with its last segment's last character replaced by `c`.
fn with_last_char(token: &str, c: char) -> String {
    let mut t = token.to_string();
    t.pop();
    t.push(c);
    t
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_refused_with_their_reason() {
    let mut env = Env::start().await;
    let idp = env.idp.clone();
    let issuer = idp.issuer().to_string();
    let (rsa_kid, ec_kid) = idp.current_kids();
    let now = idp.now();
    let claims = |extra: Value| {
        let mut c = json!({
            "iss": issuer, "sub": "alice", "aud": "api://messaging",
            "iat": now, "exp": now + 300,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let signed = |alg: Algorithm, extra: Value| idp.sign(Header::new(alg), &claims(extra));

    // Positive controls: the set-up admits real tokens, and they reach the backend.
    let good = signed(Algorithm::RS256, json!({}));
    let id_token = idp.mint_id_token("alice", Algorithm::ES256, None);
    for (case, token) in [
        ("control: access token", &good),
        ("control: ID token", &id_token),
    ] {
        let before = env.received.total();
        let (status, body) = get(
            &env.proxy,
            PATH,
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
        if status != 200 || env.received.total() == before {
            env.fail(
                case,
                format!("a valid token was not admitted: {status} {body}"),
            );
        }
        env.secrets
            .push(token.rsplit('.').next().unwrap().to_string());
    }

    let attacker = Attacker::new();
    let (listener, fetched) = start_counting_listener().await;
    let attacker_url = format!("http://{listener}/keys.json");
    let rsa_jwk = idp.public_jwk(&rsa_kid).unwrap();
    let pem = rsa_public_pem(&rsa_jwk);
    assert!(pem.contains("BEGIN PUBLIC KEY"));

    let mut cases: Vec<(String, String, &str)> = Vec::new();
    let mut case = |name: &str, token: String, reason: &'static str| {
        cases.push((name.to_string(), token, reason));
    };

    // 1. alg none, every spelling, with and without a signature segment.
    let good_sig = good.rsplit('.').next().unwrap().to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let input = signing_input(&json!({"alg": alg, "typ": "JWT"}), &claims(json!({})));
        case(
            &format!("alg {alg}, empty signature"),
            format!("{input}."),
            "algorithm_not_allowed",
        );
        case(
            &format!("alg {alg}, a real signature"),
            format!("{input}.{good_sig}"),
            "algorithm_not_allowed",
        );
        case(
            &format!("alg {alg}, no signature segment"),
            input.clone(),
            "token_malformed",
        );
        let with_kid = signing_input(&json!({"alg": alg, "kid": rsa_kid}), &claims(json!({})));
        case(
            &format!("alg {alg} with the provider's kid"),
            format!("{with_kid}."),
            "algorithm_not_allowed",
        );
    }

    // 2. HS/RS confusion: HMAC keyed with the provider's public key.
    let n_text = rsa_jwk["n"].as_str().unwrap().to_string();
    let n_bytes = unb64(&n_text);
    for alg in [Algorithm::HS256, Algorithm::HS384] {
        let header = json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": rsa_kid});
        let input = signing_input(&header, &claims(json!({})));
        case(
            &format!("{alg:?} keyed with the PEM"),
            hmac(alg, pem.as_bytes(), &input),
            "algorithm_not_allowed",
        );
        case(
            &format!("{alg:?} keyed with the PEM, no newline"),
            hmac(alg, pem.trim_end().as_bytes(), &input),
            "algorithm_not_allowed",
        );
        case(
            &format!("{alg:?} keyed with the JWK's n text"),
            hmac(alg, n_text.as_bytes(), &input),
            "algorithm_not_allowed",
        );
        case(
            &format!("{alg:?} keyed with the JWK's n bytes"),
            hmac(alg, &n_bytes, &input),
            "algorithm_not_allowed",
        );
        let no_kid = signing_input(&json!({"alg": format!("{alg:?}")}), &claims(json!({})));
        case(
            &format!("{alg:?} without kid"),
            hmac(alg, pem.as_bytes(), &no_kid),
            "algorithm_not_allowed",
        );
    }
    let lower = signing_input(&json!({"alg": "hs256", "kid": rsa_kid}), &claims(json!({})));
    case(
        "hs256 lower case",
        hmac(Algorithm::HS256, pem.as_bytes(), &lower),
        "algorithm_not_allowed",
    );

    // 3. The attacker's own key, embedded or pointed at.
    let own = |extra: Value| {
        let mut h = json!({"alg": "ES256", "typ": "JWT"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let payload = claims(json!({}));
    case(
        "jwk injected, no kid",
        attacker.sign(&own(json!({"jwk": attacker.jwk})), &payload),
        "bad_signature",
    );
    case(
        "jwk injected, the provider's kid",
        attacker.sign(&own(json!({"jwk": attacker.jwk, "kid": ec_kid})), &payload),
        "bad_signature",
    );
    case(
        "jku to the attacker, the provider's kid",
        attacker.sign(&own(json!({"jku": attacker_url, "kid": ec_kid})), &payload),
        "bad_signature",
    );
    case(
        "x5u to the attacker, the provider's kid",
        attacker.sign(&own(json!({"x5u": attacker_url, "kid": ec_kid})), &payload),
        "bad_signature",
    );
    let x5c = base64::engine::general_purpose::STANDARD.encode(&attacker.cert_der);
    case(
        "x5c with the attacker's certificate",
        attacker.sign(&own(json!({"x5c": [x5c]})), &payload),
        "bad_signature",
    );
    case(
        "x5c with the attacker's certificate, the provider's kid",
        attacker.sign(&own(json!({"x5c": [x5c], "kid": ec_kid})), &payload),
        "bad_signature",
    );

    // 4. Header and payload shapes signed with the provider's real key.
    let raw = |header: &str, payload: &str| idp.sign_raw(Algorithm::RS256, header, payload);
    let header = format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{rsa_kid}"}}"#);
    let body =
        |rest: &str| format!(r#"{{"iss":"{issuer}","aud":"api://messaging","iat":{now},{rest}}}"#);
    case(
        "crit with an unknown extension",
        raw(
            &format!(r#"{{"alg":"RS256","kid":"{rsa_kid}","crit":["exp-ext"],"exp-ext":1}}"#),
            &claims(json!({})).to_string(),
        ),
        "token_malformed",
    );
    case(
        "nested JWS (cty JWT)",
        raw(
            &format!(r#"{{"alg":"RS256","kid":"{rsa_kid}","cty":"JWT"}}"#),
            &good,
        ),
        "token_malformed",
    );
    case(
        "two sub",
        raw(
            &header,
            &body(&format!(
                r#""sub":"alice","sub":"admin","exp":{}"#,
                now + 300
            )),
        ),
        "duplicate_claim",
    );
    case(
        "two exp",
        raw(
            &header,
            &body(&format!(
                r#""sub":"alice","exp":{},"exp":{}"#,
                now + 300,
                now + 999_999
            )),
        ),
        "duplicate_claim",
    );
    // The first reader keeps the last `alg`, the header parser refuses the repeat.
    case(
        "two alg in the header, none last",
        raw(
            &format!(r#"{{"alg":"RS256","alg":"none","kid":"{rsa_kid}"}}"#),
            &claims(json!({})).to_string(),
        ),
        "algorithm_not_allowed",
    );
    case(
        "two alg in the header, RS256 last",
        raw(
            &format!(r#"{{"alg":"none","alg":"RS256","kid":"{rsa_kid}"}}"#),
            &claims(json!({})).to_string(),
        ),
        "token_malformed",
    );
    case(
        "b64 false",
        raw(
            &format!(r#"{{"alg":"RS256","kid":"{rsa_kid}","b64":false,"crit":["b64"]}}"#),
            &claims(json!({})).to_string(),
        ),
        "token_malformed",
    );

    // 5. Claims.
    case(
        "expired",
        signed(
            Algorithm::RS256,
            json!({"iat": now - 900, "exp": now - 600}),
        ),
        "token_expired",
    );
    case(
        "nbf in the future",
        signed(Algorithm::ES256, json!({"nbf": now + 3600})),
        "token_not_yet_valid",
    );
    case(
        "iat in the future",
        signed(Algorithm::RS256, json!({"iat": now + 3600})),
        "token_issued_in_future",
    );
    case(
        "no exp",
        signed(Algorithm::RS256, json!({"exp": null})),
        "missing_claim",
    );
    case(
        "no sub",
        signed(Algorithm::RS256, json!({"sub": null})),
        "missing_claim",
    );
    case(
        "wrong iss",
        signed(Algorithm::RS256, json!({"iss": "https://evil.example"})),
        "wrong_issuer",
    );
    case(
        "iss with a trailing slash",
        signed(Algorithm::RS256, json!({"iss": format!("{issuer}/")})),
        "wrong_issuer",
    );
    case(
        "wrong aud",
        signed(Algorithm::ES256, json!({"aud": "api://elsewhere"})),
        "wrong_audience",
    );
    case(
        "no aud",
        signed(Algorithm::ES256, json!({"aud": null})),
        "wrong_audience",
    );
    let client_id = idp.options().client_id.clone();
    case(
        "ID token, several aud, no azp",
        signed(
            Algorithm::RS256,
            json!({"aud": [client_id, "other-client"]}),
        ),
        "wrong_audience",
    );
    case(
        "ID token, several aud, azp another client",
        signed(
            Algorithm::RS256,
            json!({"aud": [client_id, "other-client"], "azp": "other-client"}),
        ),
        "wrong_audience",
    );
    case(
        "ID token, one aud, azp another client",
        signed(
            Algorithm::RS256,
            json!({"aud": client_id, "azp": "other-client"}),
        ),
        "wrong_audience",
    );
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let forged = b64(claims(json!({"sub": "admin"})).to_string().as_bytes());
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    case(
        "tampered payload, original signature",
        tampered,
        "bad_signature",
    );
    let header_swapped = {
        let parts: Vec<&str> = good.split('.').collect();
        let h = b64(json!({"alg": "RS512", "kid": rsa_kid})
            .to_string()
            .as_bytes());
        format!("{h}.{}.{}", parts[1], parts[2])
    };
    case(
        "header swapped to an algorithm not allowed",
        header_swapped,
        "algorithm_not_allowed",
    );
    case(
        "oversize",
        signed(Algorithm::RS256, json!({"pad": "x".repeat(9000)})),
        "token_too_large",
    );

    // 6. Non-canonical base64url of a token that is otherwise valid.
    let es = signed(Algorithm::ES256, json!({}));
    let parts: Vec<String> = es.split('.').map(str::to_string).collect();
    case(
        "padding on the header",
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        "token_malformed",
    );
    case(
        "padding on the payload",
        format!("{}.{}==.{}", parts[0], parts[1], parts[2]),
        "bad_signature",
    );
    case(
        "padding on the signature",
        format!("{es}=="),
        "token_malformed",
    );
    // The signature covers the header and payload text as sent, so a
    // payload spelled another way no longer matches it.
    // 64 signature bytes are 86 characters; the last one carries 4 bits and
    // 2 zero bits. Setting those bits encodes the same signature.
    let last = es.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.find(last).unwrap();
    let trailing = alphabet.chars().nth(index | 0b11).unwrap();
    assert_ne!(trailing, last);
    case(
        "non-zero trailing bits in the signature",
        with_last_char(&es, trailing),
        "token_malformed",
    );
    // The same for the payload, whose last character may carry spare bits.
    let payload_len = parts[1].len();
    if payload_len % 4 != 0 {
        let last = parts[1].chars().last().unwrap();
        let spare = if payload_len % 4 == 2 { 0b1111 } else { 0b11 };
        let index = alphabet.find(last).unwrap();
        let bumped = alphabet.chars().nth(index | spare).unwrap();
        if bumped != last {
            let mut p = parts[1].clone();
            p.pop();
            p.push(bumped);
            case(
                "non-zero trailing bits in the payload",
                format!("{}.{p}.{}", parts[0], parts[2]),
                "bad_signature",
            );
        }
    }
    // Standard-alphabet characters: re-mint until the signature has - or _.
    let std_alphabet = (0..50)
        .map(|_| signed(Algorithm::ES256, json!({})))
        .find(|t| t.rsplit('.').next().unwrap().contains(['-', '_']))
        .expect("a signature with - or _");
    let (input, sig) = std_alphabet.rsplit_once('.').unwrap();
    case(
        "+ and / in the signature",
        format!("{input}.{}", sig.replace('-', "+").replace('_', "/")),
        "token_malformed",
    );
    case(
        "whitespace inside the payload",
        format!(
            "{}.{} {}.{}",
            parts[0],
            &parts[1][..10],
            &parts[1][10..],
            parts[2]
        ),
        "bad_signature",
    );
    case(
        "a tab inside the signature",
        format!(
            "{}.{}.{}\t{}",
            parts[0],
            parts[1],
            &parts[2][..10],
            &parts[2][10..]
        ),
        "token_malformed",
    );
    case(
        "four segments",
        format!("{es}.{}", parts[2]),
        "token_malformed",
    );

    let hits_before_cases = idp.jwks_hits();
    for (name, token, reason) in &cases {
        let before = env.received.total();
        let (status, body) = get(
            &env.proxy,
            PATH,
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
        env.expect_refusal(
            name,
            before,
            (status, &body),
            (401, "invalid_token", reason),
        );
        if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() >= 20) {
            if body.contains(sig) {
                env.fail(name, "the body echoes the token".into());
            }
            env.secrets.push(sig.to_string());
        }
    }
    // None of them had an unknown kid: no JWKS fetch at all.
    if idp.jwks_hits() != hits_before_cases {
        env.fail(
            "known kids",
            format!("{} JWKS fetches", idp.jwks_hits() - hits_before_cases),
        );
    }

    // 7. Unknown kids: 200 made-up kids, the attacker's key named by
    // jku/x5u among them. With `jwks_refetch_interval: 1h` the documented
    // budget is one refetch per sixth of it: at most 1 fetch here.
    let hits_before = idp.jwks_hits();
    for i in 0..200 {
        let kid = format!("made-up-{i}-{:08x}", rand_u32());
        let token = match i % 3 {
            0 => attacker.sign(&own(json!({"kid": kid, "jku": attacker_url})), &payload),
            1 => attacker.sign(
                &own(json!({"kid": kid, "x5u": attacker_url, "jwk": attacker.jwk})),
                &payload,
            ),
            _ => {
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some(kid);
                idp.sign(header, &payload)
            }
        };
        let before = env.received.total();
        let (status, body) = get(
            &env.proxy,
            PATH,
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
        env.expect_refusal(
            &format!("unknown kid {i}"),
            before,
            (status, &body),
            (401, "invalid_token", "unknown_key"),
        );
        env.secrets
            .push(token.rsplit('.').next().unwrap().to_string());
    }
    let fetches = idp.jwks_hits() - hits_before;
    if fetches > 1 {
        env.fail(
            "unknown-kid flood",
            format!("{fetches} JWKS fetches, the budget is 1"),
        );
    }
    let attacker_fetches = fetched.load(Ordering::SeqCst);
    if attacker_fetches != 0 {
        env.fail(
            "jku/x5u",
            format!("the attacker's URL was fetched {attacker_fetches} times"),
        );
    }
    // The real key still works after the flood.
    let before = env.received.total();
    let (status, _) = get(
        &env.proxy,
        PATH,
        &[("Authorization", &format!("Bearer {good}"))],
    )
    .await;
    if status != 200 || env.received.total() == before {
        env.fail("control after the flood", format!("{status}"));
    }
    env.finish("forged JWTs").await;
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    u32::from_le_bytes(bytes)
}
