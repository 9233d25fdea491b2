//! TLS for webhook deliveries to `https://` receivers: rustls with the *ring* provider (the one
//! the node builds already for ureq and iroh), verifying the receiver's certificate against
//! Mozilla's roots (`webpki-roots`, the same on every machine) plus the CAs of an optional PEM
//! file (`[gateway] webhooks_ca_file`, for receivers behind a private CA). The handshake runs
//! over the TCP connection the SSRF filter allowed, so TLS never picks another address.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The client settings of webhook TLS: Mozilla's roots plus the certificates of `ca_file`
/// (PEM). Fails on an unreadable file, one that is not PEM or holds no certificate, or a
/// certificate rustls refuses as a root.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("read the webhooks CA file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert
                .map_err(|e| format!("the webhooks CA file {} is not PEM: {e}", path.display()))?;
            roots.add(cert).map_err(|e| {
                format!(
                    "the webhooks CA file {} holds an unusable CA: {e}",
                    path.display()
                )
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "the webhooks CA file {} holds no certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS session with `host` (a name or an IP literal, which the certificate must name) over
/// `stream`; a refused certificate is an error that says so and where roots come from.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host} is not a name TLS can verify: {e}"))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| {
            let mut reason = format!("TLS with {host}: {e}");
            if reason.contains("certificate") {
                reason.push_str(
                    " (the receiver's certificate must chain to a public root or to a CA in [gateway] webhooks_ca_file)",
                );
            }
            reason
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_file_must_hold_pem_certificates() {
        assert!(client_config(None).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(Some(&missing)).unwrap_err();
        assert!(err.contains("read the webhooks CA file"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
        let garbled = dir.path().join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(client_config(Some(&garbled)).is_err());
    }
}
