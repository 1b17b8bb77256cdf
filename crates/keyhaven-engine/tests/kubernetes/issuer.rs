//! A test token issuer: an RSA and a P-256 key made in the test, exported as PEM and
//! JWK, signing ServiceAccount-shaped JWTs (and the forgeries the verifier must refuse).
//! Shared by the engine, server and CLI tests through `#[path]`.

#![allow(dead_code)]

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// Which key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

pub struct Issuer {
    pub iss: String,
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
}

pub const RSA_KID: &str = "rsa-1";
pub const EC_KID: &str = "ec-1";

fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// PEM-encode DER with 64-column lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Issuer {
    pub fn new(iss: &str) -> Issuer {
        Issuer {
            iss: iss.to_owned(),
            rsa: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
            ec: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        }
    }

    pub fn rsa_public_pem(&self) -> String {
        pem(
            "PUBLIC KEY",
            self.rsa.public_key().as_der().unwrap().as_ref(),
        )
    }

    pub fn ec_public_pem(&self) -> String {
        pem(
            "PUBLIC KEY",
            self.ec.public_key().as_der().unwrap().as_ref(),
        )
    }

    /// The raw bytes an attacker would use as an HMAC key in an algorithm-confusion
    /// attack: the PEM text of the public key.
    pub fn rsa_public_pem_bytes(&self) -> Vec<u8> {
        self.rsa_public_pem().into_bytes()
    }

    pub fn rsa_jwk(&self) -> Value {
        let pk = self.rsa.public_key();
        json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": RSA_KID,
            "n": b64u(pk.modulus().big_endian_without_leading_zero()),
            "e": b64u(pk.exponent().big_endian_without_leading_zero()),
        })
    }

    pub fn ec_jwk(&self) -> Value {
        let point = self.ec.public_key().as_ref();
        assert_eq!(point.len(), 65);
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": EC_KID,
            "x": b64u(&point[1..33]),
            "y": b64u(&point[33..65]),
        })
    }

    /// Both keys, as the cluster's `/openid/v1/jwks` publishes them.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.rsa_jwk(), self.ec_jwk()]})
    }

    /// Sign `claims` with the given key, `kid` set to the key's id.
    pub fn sign(&self, alg: Alg, claims: &Value) -> String {
        let kid = match alg {
            Alg::Rs256 => RSA_KID,
            Alg::Es256 => EC_KID,
        };
        let header = match alg {
            Alg::Rs256 => json!({"alg": "RS256", "kid": kid, "typ": "JWT"}),
            Alg::Es256 => json!({"alg": "ES256", "kid": kid, "typ": "JWT"}),
        };
        self.sign_with_header(alg, &header, claims)
    }

    /// Sign with an explicit header (e.g. no `kid`, or a lying `kid`).
    pub fn sign_with_header(&self, alg: Alg, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64u(header.to_string().as_bytes()),
            b64u(claims.to_string().as_bytes())
        );
        let sig = match alg {
            Alg::Rs256 => {
                let mut sig = vec![0u8; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(
                        &RSA_PKCS1_SHA256,
                        &SystemRandom::new(),
                        input.as_bytes(),
                        &mut sig,
                    )
                    .unwrap();
                sig
            }
            Alg::Es256 => self
                .ec
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", b64u(&sig))
    }

    /// HS256 keyed with `key` (the algorithm-confusion forgery when `key` is the public
    /// key).
    pub fn hs256(key: &[u8], kid: Option<&str>, claims: &Value) -> String {
        let header = match kid {
            Some(k) => json!({"alg": "HS256", "kid": k, "typ": "JWT"}),
            None => json!({"alg": "HS256", "typ": "JWT"}),
        };
        let input = format!(
            "{}.{}",
            b64u(header.to_string().as_bytes()),
            b64u(claims.to_string().as_bytes())
        );
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
            input.as_bytes(),
        );
        format!("{input}.{}", b64u(tag.as_ref()))
    }

    /// `alg: none`, with an empty or a junk signature segment.
    pub fn unsigned(claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            b64u(br#"{"alg":"none","typ":"JWT"}"#),
            b64u(claims.to_string().as_bytes())
        )
    }
}

/// Claims of a pod-bound projected ServiceAccount token (k8s-protocols §E.1).
pub fn sa_claims(iss: &str, namespace: &str, name: &str, aud: &[&str], now: i64) -> Value {
    json!({
        "aud": aud,
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": iss,
        "jti": "5b0a3c1e-6f7d-4a8e-9b1c-2d3e4f5a6b7c",
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-1", "uid": "9c1b2a3d-0000-4000-8000-000000000001"},
            "pod": {"name": format!("{name}-7d9f8b6c5-x2x4z"), "uid": "1f2e3d4c-0000-4000-8000-000000000002"},
            "serviceaccount": {"name": name, "uid": format!("uid-{namespace}-{name}")},
        },
    })
}
