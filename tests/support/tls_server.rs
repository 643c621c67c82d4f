//! The TLS servers of the TLS suites, as `.ci/tls-services` announces them: a URL, the CA
//! that signed the server's certificate, and another CA that did not.

use std::io::Write;

/// A TLS server and the CA files to try against it.
pub struct TlsServer {
    /// The server's URL, verifying it against `ca`.
    pub url: String,
    /// The PEM file of the CA that signed the server's certificate.
    pub ca: String,
    /// The PEM file of a CA that did not.
    pub other_ca: String,
}

/// The TLS `kind` server ("Redis", "PostgreSQL") whose URL is in `$url_var`, or `None`
/// after saying so where none is set up and none is required (`CI` or
/// `SYNCSTATUS_REQUIRE_SERVICES` require one).
pub fn tls_server(kind: &str, url_var: &str) -> Option<TlsServer> {
    let vars = (
        std::env::var(url_var),
        std::env::var("SYNCSTATUS_TLS_CA"),
        std::env::var("SYNCSTATUS_TLS_OTHER_CA"),
    );
    if let (Ok(url), Ok(ca), Ok(other_ca)) = vars {
        return Some(TlsServer { url, ca, other_ca });
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("SYNCSTATUS_REQUIRE_SERVICES").is_some()
    {
        panic!(
            "a TLS {kind} is required: source .ci/tls-services DIR to start one and set \
             {url_var}, SYNCSTATUS_TLS_CA and SYNCSTATUS_TLS_OTHER_CA"
        );
    }
    // Straight to the terminal: the test harness captures `eprintln!`.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {kind} TLS test: no TLS {kind} configured (source .ci/tls-services DIR)"
    );
    None
}
