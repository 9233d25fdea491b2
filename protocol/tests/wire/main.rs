//! Golden tests for every peer wire encoding: each message is built from fixed inputs (fixed
//! keys, so the deterministic ed25519 signatures are fixed too), encoded, and compared byte
//! for byte with a committed file under `protocol/tests/golden/`; the committed bytes must
//! also still decode to the same message. A refactor that changes one byte of what peers
//! exchange fails here, whatever the round-trip tests say.
//!
//! A change of encoding that is meant (a new format version) regenerates the files:
//!
//! ```text
//! HUBMESH_BLESS=1 cargo nextest run --workspace -E 'package(hub-protocol)'
//! ```
//!
//! and the diff of `protocol/tests/golden/` is reviewed like code. Without `HUBMESH_BLESS` a
//! missing golden file is a failure, never silently created.
//!
//! Format of a golden file: `#` comment lines naming the message, then the bytes as
//! lower-case hex, 32 bytes per line.

use hub_protocol::blocks::{BlockRequest, BlockResponse};
use hub_protocol::capacity::{CapacityAdvert, DeviceKind, LoadedModel, Mode};
use hub_protocol::forward::{ForwardRequest, Frame, ResponseHead};
use hub_protocol::manifest::{ChunkRef, Hash, Manifest, Sha256};
use hub_protocol::replication::{PackRequest, PackResponse};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::{
    DocId, NamespaceDoc, RefUpdate, SignedNamespaceDoc, SignedRefUpdate, SigningKey, Visibility,
};
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    manifest_dir().join("tests/golden")
}

fn blessing() -> bool {
    std::env::var_os("HUBMESH_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

fn to_hex(bytes: &[u8]) -> String {
    bytes
        .chunks(32)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect()
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.trim().bytes())
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).expect("hex digit"))
        .collect()
}

/// Compares `bytes` with the golden file `name.hex` (or writes it when blessing) and returns
/// the committed bytes, for the caller to decode.
fn golden(name: &str, what: &str, bytes: &[u8]) -> Vec<u8> {
    let path = golden_dir().join(format!("{name}.hex"));
    if blessing() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, format!("# {what}\n{}", to_hex(bytes))).unwrap();
        return bytes.to_vec();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} unreadable ({e}); HUBMESH_BLESS=1 creates it",
            path.display()
        )
    });
    let want = from_hex(&text);
    assert!(
        want == bytes,
        "{name}: the encoding changed.\ncommitted:\n{}now:\n{}(if meant, regenerate with HUBMESH_BLESS=1)",
        to_hex(&want),
        to_hex(bytes)
    );
    want
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn repo() -> RepoId {
    RepoId::new(RepoType::Model, "acme", "tiny-llama").unwrap()
}

fn oid(fill: u8) -> [u8; 20] {
    std::array::from_fn(|i| fill.wrapping_add(i as u8))
}

fn bytes32(fill: u8) -> [u8; 32] {
    std::array::from_fn(|i| fill.wrapping_mul(7).wrapping_add(i as u8))
}

fn namespace_doc() -> NamespaceDoc {
    NamespaceDoc::new(
        "acme",
        vec![key(2).public(), key(1).public()],
        2,
        Visibility::Public,
    )
    .unwrap()
}

#[test]
fn namespace_documents() {
    let public = namespace_doc();
    let bytes = golden(
        "namespace_doc",
        "NamespaceDoc, public, two delegates, threshold 2",
        &public.encode(),
    );
    assert_eq!(NamespaceDoc::decode(&bytes).unwrap(), public);
    // The id is BLAKE3 of the encoding: pinned too, it names the document everywhere.
    golden(
        "namespace_doc_id",
        "NamespaceDoc::id of namespace_doc",
        &public.id().0,
    );

    let private = NamespaceDoc::new(
        "acme",
        vec![key(1).public()],
        1,
        Visibility::Private {
            allowed: vec![key(4).public(), key(3).public()],
        },
    )
    .unwrap();
    let bytes = golden(
        "namespace_doc_private",
        "NamespaceDoc, private, two allowed peers",
        &private.encode(),
    );
    assert_eq!(NamespaceDoc::decode(&bytes).unwrap(), private);

    let genesis = public.sign_genesis(&[&key(1), &key(2)]);
    let bytes = golden(
        "signed_namespace_doc_genesis",
        "SignedNamespaceDoc, genesis, signed by both delegates (gossip topic hubmesh/namespaces/1)",
        &genesis.encode(),
    );
    assert_eq!(SignedNamespaceDoc::decode(&bytes).unwrap(), genesis);

    let change = private.sign_change(Some(public.id()), &[&key(1), &key(2)]);
    let bytes = golden(
        "signed_namespace_doc_change",
        "SignedNamespaceDoc, a change from namespace_doc to namespace_doc_private",
        &change.encode(),
    );
    assert_eq!(SignedNamespaceDoc::decode(&bytes).unwrap(), change);
}

fn ref_update() -> RefUpdate {
    let mut update = RefUpdate::new(repo(), DocId(bytes32(9)), 42, 1_714_564_800);
    update.refs.insert("refs/heads/main".into(), oid(0x10));
    update.refs.insert("refs/tags/v1".into(), oid(0x20));
    update.lfs.insert(Sha256(bytes32(1)), Hash(bytes32(2)));
    update.lfs.insert(Sha256(bytes32(3)), Hash(bytes32(4)));
    update
}

#[test]
fn ref_updates() {
    let update = ref_update();
    let bytes = golden(
        "ref_update",
        "RefUpdate, two refs, two LFS bindings, seq 42",
        &update.encode(),
    );
    assert_eq!(RefUpdate::decode(&bytes).unwrap(), update);

    let signed = update.sign(&key(1)).unwrap();
    let bytes = golden(
        "signed_ref_update",
        "SignedRefUpdate of ref_update by key 1 (gossip topic hubmesh/refs/1)",
        &signed.encode(),
    );
    let decoded = SignedRefUpdate::decode(&bytes).unwrap();
    assert_eq!(decoded, signed);
    decoded.verify_signature().unwrap();
}

#[test]
fn pack_requests_and_responses() {
    let request = PackRequest {
        repo: repo(),
        want: vec![oid(0x10), oid(0x30)],
        have: vec![oid(0x20)],
        blob: true,
    };
    let bytes = golden(
        "pack_request",
        "PackRequest, two wants, one have, blob allowed",
        &request.encode(),
    );
    assert_eq!(PackRequest::decode(&bytes).unwrap(), request);

    let responses = [
        (
            "pack_response_pack",
            "PackResponse::Pack",
            PackResponse::Pack(b"PACK\0\0\0\x02\0\0\0\0".to_vec()),
        ),
        (
            "pack_response_not_found",
            "PackResponse::NotFound",
            PackResponse::NotFound,
        ),
        (
            "pack_response_too_large",
            "PackResponse::TooLarge",
            PackResponse::TooLarge { limit: 64 << 20 },
        ),
        (
            "pack_response_failed",
            "PackResponse::Failed",
            PackResponse::Failed,
        ),
        (
            "pack_response_blob",
            "PackResponse::Blob",
            PackResponse::Blob {
                hash: bytes32(5),
                size: 200 << 20,
            },
        ),
    ];
    for (name, what, response) in responses {
        let bytes = golden(name, what, &response.encode());
        assert_eq!(PackResponse::decode(&bytes).unwrap(), response, "{name}");
    }
}

fn manifest() -> Manifest {
    Manifest {
        size: 70_000 + 12,
        sha256: Sha256(bytes32(6)),
        blake3: Hash(bytes32(7)),
        chunks: vec![
            ChunkRef {
                id: Hash(bytes32(8)),
                len: 70_000,
            },
            ChunkRef {
                id: Hash(bytes32(9)),
                len: 12,
            },
        ],
    }
}

#[test]
fn block_requests_and_responses() {
    let m = manifest();
    let bytes = golden(
        "manifest",
        "Manifest, two chunks (carried by BlockResponse::Manifest)",
        &m.encode(),
    );
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    golden("manifest_id", "Manifest::id of manifest", &m.id().0);

    let requests = [
        (
            "block_request_manifest",
            "BlockRequest::Manifest",
            BlockRequest::Manifest {
                sha256: Sha256(bytes32(6)),
            },
        ),
        (
            "block_request_chunks",
            "BlockRequest::Chunks",
            BlockRequest::Chunks {
                sha256: Sha256(bytes32(6)),
                first: 1,
                count: 64,
            },
        ),
        (
            "block_request_blobs",
            "BlockRequest::Blobs",
            BlockRequest::Blobs,
        ),
    ];
    for (name, what, request) in requests {
        let bytes = golden(name, what, &request.encode());
        assert_eq!(BlockRequest::decode(&bytes).unwrap(), request, "{name}");
    }

    let responses = [
        (
            "block_response_manifest",
            "BlockResponse::Manifest",
            BlockResponse::Manifest(m.encode()),
        ),
        (
            "block_response_chunks",
            "BlockResponse::Chunks",
            BlockResponse::Chunks(vec![
                b"first chunk".to_vec(),
                b"2".to_vec(),
                b"third".to_vec(),
            ]),
        ),
        (
            "block_response_not_found",
            "BlockResponse::NotFound",
            BlockResponse::NotFound,
        ),
        (
            "block_response_blobs",
            "BlockResponse::Blobs, one IPv4 and one IPv6 address",
            BlockResponse::Blobs(vec![
                "192.0.2.7:4433".parse().unwrap(),
                "[2001:db8::1]:4434".parse().unwrap(),
            ]),
        ),
        (
            "block_response_failed",
            "BlockResponse::Failed",
            BlockResponse::Failed,
        ),
    ];
    for (name, what, response) in responses {
        let bytes = golden(name, what, &response.encode());
        assert_eq!(BlockResponse::decode(&bytes).unwrap(), response, "{name}");
    }
}

#[test]
fn capacity_adverts() {
    let node = key(5);
    let mut advert = CapacityAdvert::new(node.public(), 7, 1_714_564_800);
    advert.mode = Mode::Mesh;
    advert.accepts_remote = true;
    advert.device = DeviceKind::Cuda;
    advert.device_name = "NVIDIA H100 80GB HBM3".into();
    advert.memory_total_bytes = 80 << 30;
    advert.memory_free_bytes = 20 << 30;
    advert.queue_depth = 3;
    advert.queue_limit = 64;
    advert.running = 5;
    advert.free_kv_blocks = 1200;
    advert.kv_block_tokens = 16;
    advert.models = vec![
        LoadedModel {
            repo: repo(),
            commit: oid(0x10),
            decode_tokens_per_s: 41.5,
            running: 4,
        },
        LoadedModel {
            repo: RepoId::new(RepoType::Model, "acme", "embedder").unwrap(),
            commit: oid(0x40),
            decode_tokens_per_s: 0.0,
            running: 1,
        },
    ];
    let signed = advert.sign(&node).unwrap();
    let bytes = golden(
        "capacity_advert",
        "CapacityAdvert, mesh mode, CUDA, two models (sorted by sign)",
        &signed.advert.encode(),
    );
    assert_eq!(CapacityAdvert::decode(&bytes).unwrap(), signed.advert);
    let bytes = golden(
        "signed_capacity_advert",
        "SignedCapacityAdvert of capacity_advert (gossip topic hubmesh/capacity/1)",
        &signed.encode(),
    );
    let decoded = hub_protocol::capacity::SignedCapacityAdvert::decode(&bytes).unwrap();
    assert_eq!(decoded, signed);
    decoded.verify_signature().unwrap();
}

#[test]
fn placements() {
    use hub_protocol::placement::{PlacedStage, Placement, SignedPlacement, Sync};
    let maker = key(5);
    let placement = Placement {
        made_by: maker.public(),
        seq: 3,
        issued_at: 1_714_564_800,
        model: repo(),
        commit: oid(0x10),
        tensor_parallel: 2,
        sync: Sync::Q8,
        stages: vec![
            PlacedStage {
                layers: 0..12,
                nodes: vec![maker.public(), key(6).public()],
            },
            PlacedStage {
                layers: 12..32,
                nodes: vec![key(7).public(), key(8).public()],
            },
        ],
    };
    let signed = placement.sign(&maker).unwrap();
    let bytes = golden(
        "placement",
        "Placement, tp=2 x pp=2, 8-bit sync",
        &placement.encode(),
    );
    assert_eq!(Placement::decode(&bytes).unwrap(), placement);
    let bytes = golden(
        "signed_placement",
        "SignedPlacement of placement",
        &signed.encode(),
    );
    let decoded = SignedPlacement::decode(&bytes).unwrap();
    assert_eq!(decoded, signed);
    decoded.verify_signature().unwrap();
}

#[test]
fn forward_frames() {
    let frames = [
        (
            "forward_request",
            "forward Frame::Request",
            Frame::Request(ForwardRequest {
                path: "/v1/chat/completions".into(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-wait-for-model".into(), "true".into()),
                ],
                body: br#"{"model":"acme/tiny-llama","messages":[]}"#.to_vec(),
            }),
        ),
        (
            "forward_head",
            "forward Frame::Head",
            Frame::Head(ResponseHead {
                status: 200,
                headers: vec![("content-type".into(), "text/event-stream".into())],
            }),
        ),
        (
            "forward_data",
            "forward Frame::Data",
            Frame::Data(b"data: {\"x\":1}\n\n".to_vec()),
        ),
        ("forward_end", "forward Frame::End", Frame::End),
        (
            "forward_error",
            "forward Frame::Error",
            Frame::Error("model not loaded".into()),
        ),
    ];
    for (name, what, frame) in frames {
        let bytes = golden(
            name,
            &format!("{what} (with its 4-byte length prefix)"),
            &frame.encode(),
        );
        let prefix: [u8; 4] = bytes[..4].try_into().unwrap();
        assert_eq!(
            hub_protocol::forward::frame_len(prefix).unwrap(),
            bytes.len() - 4,
            "{name}"
        );
        assert_eq!(Frame::decode(&bytes[4..]).unwrap(), frame, "{name}");
    }
}

#[test]
fn protocol_names_and_gossip_topics() {
    // Peers find each other's protocols and topics by these names: they are wire too.
    let names = [
        hub_protocol::replication::TOPIC_REFS,
        hub_protocol::replication::TOPIC_NAMESPACES,
        hub_protocol::replication::TOPIC_CAPACITY,
        hub_protocol::replication::GIT_PACK_PROTOCOL,
        hub_protocol::blocks::BLOCKS_PROTOCOL,
        hub_protocol::forward::INFER_PROTOCOL,
    ]
    .join("\n");
    golden(
        "protocol_names",
        "gossip topics and stream protocol names, one a line",
        names.as_bytes(),
    );
}

/// The package's directory as Cargo or nextest gives it when the test runs, so a test binary
/// built from one checkout and reused from another (same target dir) reads this checkout's files.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
