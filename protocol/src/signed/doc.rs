//! Namespace identity documents and their signed, chained versions.
//!
//! Encodings (little-endian; `str8` is a `u8` length and UTF-8 bytes):
//!
//! ```text
//! NamespaceDoc        u8 version | u8 kind=1 | str8 name | u8 n | n × [32] delegate
//!                     | u8 threshold | u8 visibility (0 public, 1 private)
//!                     | private only: u16 m | m × [32] allowed peer
//! doc change payload  u8 version | u8 kind=3 | u8 has_previous | has_previous × [32] previous
//!                     | NamespaceDoc          (what each delegate signs, after the context)
//! SignedNamespaceDoc  u8 version | u8 kind=4 | u32 len | NamespaceDoc (len bytes)
//!                     | u8 has_previous | has_previous × [32] previous
//!                     | u8 s | s × ([32] signer | [64] signature)
//! ```
//!
//! Delegates, allowed peers and signers are sorted ascending without duplicates; decoders
//! reject any other order, so each document has exactly one encoding and one id.

use super::codec::{Reader, Writer};
use super::{DecodeError, DocId, InvalidError, PublicKey, Signature, SigningKey, kind};
use crate::name::validate_name_part;

/// Most delegates a namespace document lists (the count is one byte).
pub const MAX_DELEGATES: usize = 255;
/// Most peers a private namespace document allows.
pub const MAX_ALLOWED_PEERS: usize = 1024;
/// Most signatures a signed namespace document carries (at most one per delegate).
pub const MAX_DOC_SIGNATURES: usize = MAX_DELEGATES;

/// Upper bound of a [`NamespaceDoc`] encoding.
const MAX_DOC_LEN: usize =
    2 + 1 + crate::name::MAX_NAME_LEN + 1 + 32 * MAX_DELEGATES + 2 + 2 + 32 * MAX_ALLOWED_PEERS;
/// Upper bound of a [`SignedNamespaceDoc`] encoding.
const MAX_SIGNED_DOC_LEN: usize = 2 + 4 + MAX_DOC_LEN + 33 + 1 + 96 * MAX_DOC_SIGNATURES;

/// Who may see a namespace's repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// Announced in public gossip and served to anyone.
    Public,
    /// Never announced publicly; data is served only to these peers (node public keys) and
    /// to the delegates.
    Private { allowed: Vec<PublicKey> },
}

/// A namespace's identity document: who may sign for it and who may see it.
///
/// Build one with [`NamespaceDoc::new`], which sorts and deduplicates the key lists; the
/// fields are read-only so every value in hand is valid and canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceDoc {
    name: String,
    delegates: Vec<PublicKey>,
    threshold: u8,
    visibility: Visibility,
}

impl NamespaceDoc {
    /// A document for `name` whose changes need `threshold` of `delegates`.
    pub fn new(
        name: &str,
        mut delegates: Vec<PublicKey>,
        threshold: u8,
        mut visibility: Visibility,
    ) -> Result<Self, InvalidError> {
        delegates.sort_unstable();
        delegates.dedup();
        if let Visibility::Private { allowed } = &mut visibility {
            allowed.sort_unstable();
            allowed.dedup();
        }
        let doc = Self {
            name: name.to_owned(),
            delegates,
            threshold,
            visibility,
        };
        doc.validate()?;
        Ok(doc)
    }

    fn validate(&self) -> Result<(), InvalidError> {
        validate_name_part(&self.name).map_err(InvalidError::Name)?;
        if self.delegates.is_empty() {
            return Err(InvalidError::NoDelegates);
        }
        if self.delegates.len() > MAX_DELEGATES {
            return Err(InvalidError::TooMany {
                what: "delegates",
                count: self.delegates.len(),
                max: MAX_DELEGATES,
            });
        }
        if self.threshold == 0 || self.threshold as usize > self.delegates.len() {
            return Err(InvalidError::Threshold {
                threshold: self.threshold,
                delegates: self.delegates.len(),
            });
        }
        if let Visibility::Private { allowed } = &self.visibility
            && allowed.len() > MAX_ALLOWED_PEERS
        {
            return Err(InvalidError::TooMany {
                what: "allowed peers",
                count: allowed.len(),
                max: MAX_ALLOWED_PEERS,
            });
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The delegates, sorted.
    pub fn delegates(&self) -> &[PublicKey] {
        &self.delegates
    }

    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    pub fn visibility(&self) -> &Visibility {
        &self.visibility
    }

    pub fn is_delegate(&self, key: &PublicKey) -> bool {
        self.delegates.binary_search(key).is_ok()
    }

    /// The canonical encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(8 + self.name.len() + 32 * self.delegates.len());
        w.u8(super::FORMAT_VERSION);
        w.u8(kind::NAMESPACE_DOC);
        w.str8(&self.name);
        w.u8(self.delegates.len() as u8);
        for d in &self.delegates {
            w.bytes(&d.0);
        }
        w.u8(self.threshold);
        match &self.visibility {
            Visibility::Public => w.u8(0),
            Visibility::Private { allowed } => {
                w.u8(1);
                w.u16(allowed.len() as u16);
                for p in allowed {
                    w.bytes(&p.0);
                }
            }
        }
        w.finish()
    }

    /// Decodes a canonical encoding; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_DOC_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_DOC_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::NAMESPACE_DOC)?;
        let name = r.str8()?.to_owned();
        let n = r.u8()? as usize;
        let delegates = read_sorted_keys(&mut r, n, "delegates")?;
        let threshold = r.u8()?;
        let visibility = match r.u8()? {
            0 => Visibility::Public,
            1 => {
                let m = r.u16()? as usize;
                Visibility::Private {
                    allowed: read_sorted_keys(&mut r, m, "allowed peers")?,
                }
            }
            _ => return Err(DecodeError::NotCanonical("unknown visibility")),
        };
        r.end()?;
        let doc = Self {
            name,
            delegates,
            threshold,
            visibility,
        };
        doc.validate()?;
        Ok(doc)
    }

    /// The document id: BLAKE3 of [`NamespaceDoc::encode`].
    pub fn id(&self) -> DocId {
        DocId(*blake3::hash(&self.encode()).as_bytes())
    }

    /// The first document of a namespace, signed by `signers` (who must reach this document's
    /// own threshold for it to be accepted).
    pub fn sign_genesis(&self, signers: &[&SigningKey]) -> SignedNamespaceDoc {
        self.sign_change(None, signers)
    }

    /// This document as the successor of `previous` (`None` for a genesis), signed by
    /// `signers` (who must reach the threshold of the *previous* document).
    pub fn sign_change(
        &self,
        previous: Option<DocId>,
        signers: &[&SigningKey],
    ) -> SignedNamespaceDoc {
        let mut signed = SignedNamespaceDoc {
            doc: self.clone(),
            previous,
            signatures: Vec::new(),
        };
        for key in signers {
            signed.add_signature(key);
        }
        signed
    }
}

fn read_sorted_keys(
    r: &mut Reader<'_>,
    n: usize,
    what: &'static str,
) -> Result<Vec<PublicKey>, DecodeError> {
    r.expect_entries(n, 32)?;
    let mut keys: Vec<PublicKey> = Vec::with_capacity(n);
    for _ in 0..n {
        let key = PublicKey(r.array()?);
        if keys.last().is_some_and(|last| *last >= key) {
            return Err(DecodeError::NotCanonical(match what {
                "delegates" => "delegates not sorted or duplicated",
                _ => "allowed peers not sorted or duplicated",
            }));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// A namespace document with the id of the document it replaces and delegate signatures.
///
/// A genesis (`previous: None`) must be signed by a threshold of its own delegates; a change
/// by a threshold of the delegates of `previous`, which must be the namespace's current
/// document. Signatures cover [`SignedNamespaceDoc::payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNamespaceDoc {
    pub doc: NamespaceDoc,
    pub previous: Option<DocId>,
    /// `(signer, signature)`, sorted by signer, one per signer.
    pub signatures: Vec<(PublicKey, Signature)>,
}

impl SignedNamespaceDoc {
    /// What a delegate signs: `previous` and the document (see the module docs).
    pub fn payload(&self) -> Vec<u8> {
        let doc = self.doc.encode();
        let mut w = Writer::with_capacity(4 + 32 + doc.len());
        w.u8(super::FORMAT_VERSION);
        w.u8(kind::DOC_CHANGE);
        write_previous(&mut w, self.previous);
        w.bytes(&doc);
        w.finish()
    }

    /// Adds (or replaces) `key`'s signature, keeping the list sorted. Lets delegates on
    /// different machines sign one after another.
    pub fn add_signature(&mut self, key: &SigningKey) {
        let signature = key.sign_payload(&self.payload());
        let public = key.public();
        match self.signatures.binary_search_by(|(k, _)| k.cmp(&public)) {
            Ok(i) => self.signatures[i].1 = signature,
            Err(i) => self.signatures.insert(i, (public, signature)),
        }
    }

    /// The canonical wire encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let doc = self.doc.encode();
        let mut w = Writer::with_capacity(8 + doc.len() + 33 + 96 * self.signatures.len());
        w.u8(super::FORMAT_VERSION);
        w.u8(kind::SIGNED_NAMESPACE_DOC);
        w.u32(doc.len() as u32);
        w.bytes(&doc);
        write_previous(&mut w, self.previous);
        w.u8(self.signatures.len().min(MAX_DOC_SIGNATURES) as u8);
        for (key, sig) in self.signatures.iter().take(MAX_DOC_SIGNATURES) {
            w.bytes(&key.0);
            w.bytes(&sig.0);
        }
        w.finish()
    }

    /// Decodes the wire encoding. Signatures are *not* verified here: that needs the
    /// namespace's current document, which [`super::RefState`] has.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_SIGNED_DOC_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_SIGNED_DOC_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::SIGNED_NAMESPACE_DOC)?;
        let len = r.u32()? as usize;
        let doc = NamespaceDoc::decode(r.take(len)?)?;
        let previous = read_previous(&mut r)?;
        let n = r.u8()? as usize;
        r.expect_entries(n, 96)?;
        let mut signatures: Vec<(PublicKey, Signature)> = Vec::with_capacity(n);
        for _ in 0..n {
            let key = PublicKey(r.array()?);
            let sig = Signature(r.array()?);
            if signatures.last().is_some_and(|(last, _)| *last >= key) {
                return Err(DecodeError::NotCanonical(
                    "signatures not sorted by signer or duplicated",
                ));
            }
            signatures.push((key, sig));
        }
        r.end()?;
        Ok(Self {
            doc,
            previous,
            signatures,
        })
    }
}

fn write_previous(w: &mut Writer, previous: Option<DocId>) {
    match previous {
        None => w.u8(0),
        Some(id) => {
            w.u8(1);
            w.bytes(&id.0);
        }
    }
}

fn read_previous(r: &mut Reader<'_>) -> Result<Option<DocId>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(DocId(r.array()?))),
        _ => Err(DecodeError::NotCanonical("previous flag is not 0 or 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    #[test]
    fn new_sorts_dedups_and_validates() {
        let (a, b) = (key(1).public(), key(2).public());
        let doc = NamespaceDoc::new("org", vec![b, a, b], 2, Visibility::Public).unwrap();
        let mut sorted = [a, b];
        sorted.sort();
        assert_eq!(doc.delegates(), &sorted[..]);
        assert!(doc.is_delegate(&a) && !doc.is_delegate(&key(3).public()));
        assert!(matches!(
            NamespaceDoc::new("org", vec![a], 2, Visibility::Public),
            Err(InvalidError::Threshold { .. })
        ));
        assert!(matches!(
            NamespaceDoc::new("org", vec![a], 0, Visibility::Public),
            Err(InvalidError::Threshold { .. })
        ));
        assert_eq!(
            NamespaceDoc::new("org", vec![], 1, Visibility::Public),
            Err(InvalidError::NoDelegates)
        );
        assert!(matches!(
            NamespaceDoc::new("../x", vec![a], 1, Visibility::Public),
            Err(InvalidError::Name(_))
        ));
    }

    /// Pins the format: if this changes, every stored id and signature changes with it, and
    /// the version byte must move.
    #[test]
    fn golden_encoding() {
        let doc = NamespaceDoc::new(
            "ab",
            vec![PublicKey([2; 32]), PublicKey([1; 32])],
            1,
            Visibility::Private {
                allowed: vec![PublicKey([9; 32])],
            },
        )
        .unwrap();
        let mut expected = vec![1, 1, 2, b'a', b'b', 2];
        expected.extend([1; 32]);
        expected.extend([2; 32]);
        expected.extend([1, 1, 1, 0]);
        expected.extend([9; 32]);
        assert_eq!(doc.encode(), expected);
        assert_eq!(doc.id(), DocId(*blake3::hash(&expected).as_bytes()));
    }

    #[test]
    fn non_canonical_encodings_are_rejected() {
        let doc = NamespaceDoc::new(
            "ab",
            vec![PublicKey([1; 32]), PublicKey([2; 32])],
            1,
            Visibility::Public,
        )
        .unwrap();
        let good = doc.encode();
        // Swap the two delegates: same set, other order.
        let mut swapped = good.clone();
        swapped[6..38].copy_from_slice(&[2; 32]);
        swapped[38..70].copy_from_slice(&[1; 32]);
        assert!(matches!(
            NamespaceDoc::decode(&swapped),
            Err(DecodeError::NotCanonical(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            NamespaceDoc::decode(&trailing),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut version = good.clone();
        version[0] = 2;
        assert_eq!(NamespaceDoc::decode(&version), Err(DecodeError::Version(2)));
        let mut kind = good;
        kind[1] = 2;
        assert!(matches!(
            NamespaceDoc::decode(&kind),
            Err(DecodeError::Kind { .. })
        ));
        // A hostile signature count with no bytes behind it allocates nothing.
        let signed = doc.sign_genesis(&[&key(1)]).encode();
        let mut hostile = signed[..signed.len() - 97].to_vec();
        hostile.push(255);
        assert_eq!(
            SignedNamespaceDoc::decode(&hostile),
            Err(DecodeError::Truncated)
        );
    }

    fn arb_doc() -> impl Strategy<Value = NamespaceDoc> {
        (
            "[a-z][a-z0-9_]{0,20}",
            proptest::collection::vec(any::<[u8; 32]>(), 1..6),
            any::<u8>(),
            proptest::option::of(proptest::collection::vec(any::<[u8; 32]>(), 0..4)),
        )
            .prop_map(|(name, delegates, t, allowed)| {
                let delegates: Vec<_> = delegates.into_iter().map(PublicKey).collect();
                let visibility = match allowed {
                    None => Visibility::Public,
                    Some(a) => Visibility::Private {
                        allowed: a.into_iter().map(PublicKey).collect(),
                    },
                };
                let threshold = 1 + t % delegates.len() as u8;
                // Duplicates may shrink the list below the threshold: fall back to 1.
                NamespaceDoc::new(&name, delegates.clone(), threshold, visibility.clone())
                    .or_else(|_| NamespaceDoc::new(&name, delegates, 1, visibility))
                    .unwrap()
            })
    }

    proptest! {
        #[test]
        fn doc_round_trips(doc in arb_doc()) {
            let bytes = doc.encode();
            let back = NamespaceDoc::decode(&bytes).unwrap();
            prop_assert_eq!(back.id(), doc.id());
            prop_assert_eq!(back, doc);
        }

        #[test]
        fn signed_doc_round_trips(doc in arb_doc(), previous in proptest::option::of(any::<[u8; 32]>())) {
            let signed = doc.sign_change(previous.map(DocId), &[&key(3), &key(1)]);
            let bytes = signed.encode();
            prop_assert_eq!(SignedNamespaceDoc::decode(&bytes).unwrap(), signed);
        }

        /// Arbitrary bytes never panic; whatever decodes is canonical. Half the inputs get a
        /// valid header so the fuzzing reaches past the first two bytes.
        #[test]
        fn decode_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..300), header in 0..3usize) {
            let mut bytes = match header {
                0 => vec![],
                1 => vec![1, kind::NAMESPACE_DOC],
                _ => vec![1, kind::SIGNED_NAMESPACE_DOC],
            };
            bytes.extend(tail);
            if let Ok(doc) = NamespaceDoc::decode(&bytes) {
                prop_assert_eq!(doc.encode(), bytes.clone());
            }
            if let Ok(signed) = SignedNamespaceDoc::decode(&bytes) {
                prop_assert_eq!(signed.encode(), bytes);
            }
        }

        /// Mutating or truncating a valid encoding either fails or yields another canonical value.
        #[test]
        fn decode_mutated(doc in arb_doc(), pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
            let signed = doc.sign_genesis(&[&key(1)]).encode();
            let mut mutated = signed.clone();
            let i = pos % mutated.len();
            mutated[i] = byte;
            if let Ok(back) = SignedNamespaceDoc::decode(&mutated) {
                prop_assert_eq!(back.encode(), mutated);
            }
            let cut = cut % signed.len();
            prop_assert!(SignedNamespaceDoc::decode(&signed[..cut]).is_err());
        }
    }
}
