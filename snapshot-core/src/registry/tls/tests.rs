use super::*;

/// A self-signed CA (RSA 2048, valid for a century): only parsed here.
const TEST_CA: &[u8] = include_bytes!("test-ca.pem");

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[test]
fn certs_d_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    // Docker's layout: every *.crt of the host's directory.
    write(&root.join("reg.example.com:5000/ca.crt"), TEST_CA);
    write(&root.join("reg.example.com:5000/extra.crt"), TEST_CA);
    write(&root.join("reg.example.com:5000/client.cert"), b"not a CA");
    assert_eq!(
        certs_d_files(&root, "reg.example.com:5000").unwrap(),
        vec![
            root.join("reg.example.com:5000/ca.crt"),
            root.join("reg.example.com:5000/extra.crt")
        ]
    );
    // Nothing for another host, nor without the root.
    assert!(certs_d_files(&root, "other:5000").unwrap().is_empty());
    assert!(
        certs_d_files(&tmp.path().join("nope"), "x")
            .unwrap()
            .is_empty()
    );
    // containerd's hosts.toml: the server's `ca` when it is this host, and
    // the `ca` of the host's own table; relative to the directory.
    write(
        &root.join("docker.io/hosts.toml"),
        br#"server = "https://registry-1.docker.io"
ca = "hub.pem"
[host."https://mirror.example.com"]
  ca = ["/elsewhere/mirror.pem"]
[host."https://index.docker.io"]
  ca = ["/abs/index.pem", "rel/index.pem"]
"#,
    );
    let hub = root.join("docker.io");
    assert_eq!(
        certs_d_files(&root, "index.docker.io").unwrap(),
        vec![
            hub.join("hub.pem"),
            PathBuf::from("/abs/index.pem"),
            hub.join("rel/index.pem")
        ]
    );
    // A server that is another host: its top-level `ca` is not ours.
    write(
        &root.join("_default/hosts.toml"),
        br#"server = "https://elsewhere.example.com"
ca = "/x.pem""#,
    );
    assert!(certs_d_files(&root, "unlisted:1").unwrap().is_empty());
    write(&root.join("bad:1/hosts.toml"), b"ca = [");
    assert!(matches!(
        certs_d_files(&root, "bad:1"),
        Err(Error::InvalidArgument(m)) if m.contains("hosts.toml")
    ));
}

#[test]
fn ca_files_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("ca.pem");
    let mut two = TEST_CA.to_vec();
    two.extend_from_slice(TEST_CA);
    write(&good, &two);
    assert_eq!(
        extra_roots(std::slice::from_ref(&good), &[], &["x"])
            .unwrap()
            .len(),
        2
    );
    let root = tmp.path().join("certs.d");
    write(&root.join("r:1/ca.crt"), TEST_CA);
    let roots = extra_roots(
        &[],
        &[root.clone(), tmp.path().join("none")],
        &["r:1", "s:2"],
    )
    .unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(oci_certificates(&roots)[0].data, roots[0].to_vec());
    let text = tmp.path().join("text.pem");
    write(&text, b"hello");
    let e = extra_roots(&[text], &[], &[]).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("no PEM certificate")),
        "{e}"
    );
    let garbage = tmp.path().join("garbage.pem");
    write(
        &garbage,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let e = extra_roots(&[garbage], &[], &[]).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let missing = tmp.path().join("missing.pem");
    assert!(matches!(
        extra_roots(&[missing], &[], &[]),
        Err(Error::Io { .. })
    ));
}

#[test]
fn tls_failures_are_found_in_the_chain() {
    let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    // As hyper's connector has it: rustls' io::Error inside another.
    let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, inner));
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let found = tls_failure(&Outer(io)).unwrap();
    assert!(found.contains("UnknownIssuer"), "{found}");
    assert_eq!(tls_failure(&std::io::Error::other("reset")), None);
    let e = tls_error("reg:443", &found);
    assert_eq!(e.kind(), crate::ErrorKind::RegistryUnreachable);
    assert!(!e.to_string().contains('\n'));
    assert!(e.to_string().contains("--registry-ca"));
}
