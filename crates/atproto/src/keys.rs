//! Repository signing keys: DID-document key entries (Multikey and the
//! legacy `EcdsaSecp256k1VerificationKey2019` / `...r1...` forms), `did:key`,
//! and atproto's signature rule (compact 64-byte `r || s`, low-S only).
//!
//! The curve arithmetic is libsecp256k1's (the `secp256k1` crate: a
//! verification costs about half of k256's here, and signatures decide
//! verified ingest) and p256's, the multibase decoding the `multibase`
//! crate's. What is written here is the atproto glue: which DID-document
//! entry holds the key and the low-S rule (the RustCrypto verifiers accept
//! high-S signatures, atproto does not; libsecp256k1 rejects them, and the
//! check here names the reason).

use serde_json::Value;

/// Why a key could not be read or a signature did not verify.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum KeyError {
    #[error("signature does not verify against the DID document's key")]
    BadSignature,
    #[error("signature is not low-S")]
    HighS,
    #[error("signature is not 64 bytes (r || s)")]
    SignatureFormat,
    #[error("signing key: {0}")]
    Malformed(String),
}

impl KeyError {
    /// A short stable name, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            KeyError::BadSignature => "bad_signature",
            KeyError::HighS => "high_s",
            KeyError::SignatureFormat => "signature_format",
            KeyError::Malformed(_) => "key",
        }
    }
}

/// A repo signing key.
#[derive(Debug, Clone, PartialEq)]
pub enum PublicKey {
    K256(secp256k1::PublicKey),
    P256(p256::ecdsa::VerifyingKey),
}

/// libsecp256k1's verification context (creating one costs nothing since
/// its 0.4, but one is enough).
static SECP256K1: std::sync::LazyLock<secp256k1::Secp256k1<secp256k1::VerifyOnly>> =
    std::sync::LazyLock::new(secp256k1::Secp256k1::verification_only);

/// Multicodec prefixes of the two key types (varint-encoded).
const SECP256K1_PUB: [u8; 2] = [0xe7, 0x01];
const P256_PUB: [u8; 2] = [0x80, 0x24];

pub(crate) fn multibase_bytes(s: &str) -> Result<Vec<u8>, KeyError> {
    let (base, bytes) =
        multibase::decode(s).map_err(|e| KeyError::Malformed(format!("multibase: {e}")))?;
    if base != multibase::Base::Base58Btc {
        return Err(KeyError::Malformed(format!("{base:?} is not base58btc")));
    }
    Ok(bytes)
}

impl PublicKey {
    /// A key from SEC1 bytes (compressed or not) of the given curve.
    pub(crate) fn from_sec1(curve_k256: bool, bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let bad =
            |e: &dyn std::fmt::Display| KeyError::Malformed(format!("not a curve point: {e}"));
        Ok(if curve_k256 {
            // Compressed or uncompressed SEC1 only: libsecp256k1 would also
            // take the "hybrid" 0x06/0x07 form, which no DID document uses.
            match (bytes.len(), bytes.first()) {
                (33, Some(2 | 3)) | (65, Some(4)) => {}
                _ => return Err(bad(&"not a compressed or uncompressed SEC1 key")),
            }
            PublicKey::K256(secp256k1::PublicKey::from_slice(bytes).map_err(|e| bad(&e))?)
        } else {
            PublicKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map_err(|e| bad(&e))?)
        })
    }

    /// A `Multikey` value: multibase of the multicodec-prefixed compressed key.
    pub fn from_multikey(s: &str) -> Result<PublicKey, KeyError> {
        let bytes = multibase_bytes(s)?;
        match bytes.get(..2) {
            Some(p) if p == SECP256K1_PUB => PublicKey::from_sec1(true, &bytes[2..]),
            Some(p) if p == P256_PUB => PublicKey::from_sec1(false, &bytes[2..]),
            _ => Err(KeyError::Malformed("unknown multicodec key type".into())),
        }
    }

    /// A `did:key`.
    pub fn from_did_key(did: &str) -> Result<PublicKey, KeyError> {
        let s = did
            .strip_prefix("did:key:")
            .ok_or_else(|| KeyError::Malformed(format!("{did:?} is not a did:key")))?;
        PublicKey::from_multikey(s)
    }

    /// The `#atproto` verification method of a DID document, in the current
    /// (`Multikey`) or legacy (`EcdsaSecp256k1VerificationKey2019`,
    /// `EcdsaSecp256r1VerificationKey2019`: multibase of the bare key) form.
    pub fn from_did_document(doc: &Value) -> Result<PublicKey, KeyError> {
        let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
        let methods = doc
            .get("verificationMethod")
            .and_then(Value::as_array)
            .ok_or_else(|| KeyError::Malformed("DID document has no verificationMethod".into()))?;
        let method = methods
            .iter()
            .find(|m| {
                let mid = m.get("id").and_then(Value::as_str).unwrap_or_default();
                mid == "#atproto" || mid == format!("{id}#atproto")
            })
            .ok_or_else(|| KeyError::Malformed("DID document has no #atproto key".into()))?;
        let multibase = method
            .get("publicKeyMultibase")
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::Malformed("#atproto key has no publicKeyMultibase".into()))?;
        match method.get("type").and_then(Value::as_str) {
            Some("Multikey") => PublicKey::from_multikey(multibase),
            Some("EcdsaSecp256k1VerificationKey2019") => {
                PublicKey::from_sec1(true, &multibase_bytes(multibase)?)
            }
            Some("EcdsaSecp256r1VerificationKey2019") => {
                PublicKey::from_sec1(false, &multibase_bytes(multibase)?)
            }
            other => Err(KeyError::Malformed(format!(
                "unsupported key type {other:?}"
            ))),
        }
    }

    /// Verifies an atproto signature over `message` (hashed with SHA-256 by
    /// the verifier): exactly 64 bytes `r || s`, with `s` in the lower half.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        use p256::ecdsa::signature::Verifier;
        let Ok(compact) = <&[u8; 64]>::try_from(sig) else {
            return Err(KeyError::SignatureFormat);
        };
        match self {
            PublicKey::K256(key) => {
                let parsed = secp256k1::ecdsa::Signature::from_compact(compact)
                    .map_err(|_| KeyError::SignatureFormat)?;
                // libsecp256k1 rejects a high-S signature too; this says why.
                let mut low = parsed;
                low.normalize_s();
                if low != parsed {
                    return Err(KeyError::HighS);
                }
                let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(message).into();
                SECP256K1
                    .verify_ecdsa(secp256k1::Message::from_digest(digest), &parsed, key)
                    .map_err(|_| KeyError::BadSignature)
            }
            PublicKey::P256(key) => {
                let sig = p256::ecdsa::Signature::from_slice(sig)
                    .map_err(|_| KeyError::SignatureFormat)?;
                if sig.normalize_s().is_some() {
                    return Err(KeyError::HighS);
                }
                key.verify(message, &sig)
                    .map_err(|_| KeyError::BadSignature)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn the_interop_signature_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/interop/crypto/signature-fixtures.json"
        );
        let vectors: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(vectors.len(), 6);
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        for v in &vectors {
            let message = b64.decode(v["messageBase64"].as_str().unwrap()).unwrap();
            let sig = b64
                .decode(v["signatureBase64"].as_str().unwrap().trim_end_matches('='))
                .unwrap();
            let from_did = PublicKey::from_did_key(v["publicKeyDid"].as_str().unwrap()).unwrap();
            let k256 = v["algorithm"] == "ES256K";
            let raw = multibase_bytes(v["publicKeyMultibase"].as_str().unwrap()).unwrap();
            let from_doc = PublicKey::from_sec1(k256, &raw).unwrap();
            assert_eq!(from_did, from_doc, "{}", v["comment"]);
            let got = from_did.verify(&message, &sig);
            assert_eq!(
                got.is_ok(),
                v["validSignature"].as_bool().unwrap(),
                "{}: {got:?}",
                v["comment"]
            );
            let tags: Vec<&str> = v["tags"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if tags.contains(&"high-s") {
                assert_eq!(got, Err(KeyError::HighS), "{}", v["comment"]);
            }
            if tags.contains(&"der-encoded") {
                assert_eq!(got, Err(KeyError::SignatureFormat), "{}", v["comment"]);
            }
        }
    }

    #[test]
    fn legacy_documents() {
        let legacy: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/repos/greenground.didDoc.json"
            ))
            .unwrap(),
        )
        .unwrap();
        assert!(matches!(
            PublicKey::from_did_document(&legacy),
            Ok(PublicKey::K256(_))
        ));
    }
}
