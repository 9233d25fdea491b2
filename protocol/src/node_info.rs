//! `node.json`: what a running node tells scripts and tests about itself.
//!
//! `hubmesh up` writes this file into its data directory, atomically, once every listener is
//! bound and the node serves requests, and removes it on a clean shutdown. Its shape is a
//! stable contract:
//!
//! ```json
//! {"http": "127.0.0.1:8080", "peer_id": "12D3KooW…", "p2p": ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…"], "version": "0.1.0"}
//! ```

use serde::{Deserialize, Serialize};

/// The file name inside the data directory.
pub const NODE_INFO_FILE: &str = "node.json";

/// The contents of `node.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The address the HTTP gateway is bound to, `IP:PORT`.
    pub http: String,
    /// The node's libp2p peer id (derived from its ed25519 key).
    pub peer_id: String,
    /// Every p2p listen address, each ending in `/p2p/<peer_id>`, ready to pass to `--bootstrap`.
    pub p2p: Vec<String>,
    /// The hubmesh version that wrote the file.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_the_documented_one() {
        let info = NodeInfo {
            http: "127.0.0.1:8080".into(),
            peer_id: "12D3KooWabc".into(),
            p2p: vec!["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc".into()],
            version: "0.1.0".into(),
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "http": "127.0.0.1:8080",
                "peer_id": "12D3KooWabc",
                "p2p": ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc"],
                "version": "0.1.0"
            })
        );
        let back: NodeInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, info);
    }
}
