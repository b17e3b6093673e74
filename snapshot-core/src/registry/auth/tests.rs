use super::*;

#[test]
fn challenges() {
    assert_eq!(
        parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull""#
        ),
        Challenge::Bearer {
            realm: "https://auth.docker.io/token".into(),
            service: Some("registry.docker.io".into()),
        }
    );
    // Unquoted values, spaces, odd case, escapes.
    assert_eq!(
        parse_challenge(r#"bearer  Realm=http://127.0.0.1:1/t , service="a \"q\" b""#),
        Challenge::Bearer {
            realm: "http://127.0.0.1:1/t".into(),
            service: Some(r#"a "q" b"#.into()),
        }
    );
    assert_eq!(
        parse_challenge(r#"Bearer realm="https://x/t""#),
        Challenge::Bearer {
            realm: "https://x/t".into(),
            service: None,
        }
    );
    assert_eq!(parse_challenge(r#"Basic realm="reg""#), Challenge::Basic);
    assert_eq!(parse_challenge("Bearer"), Challenge::None);
    assert_eq!(parse_challenge(r#"Bearer service="x""#), Challenge::None);
    assert_eq!(parse_challenge("Negotiate abc"), Challenge::None);
}

#[test]
fn a_push_token_covers_the_mount_source() {
    let r = |s: &str| crate::registry::parse_reference(s).unwrap();
    assert_eq!(
        push_scopes(&r("reg:5000/team/app:1"), Some(&r("reg:5000/base/os:2"))),
        vec![
            "repository:team/app:pull,push".to_string(),
            "repository:base/os:pull".to_string()
        ]
    );
    // Another registry, or the same repository: nothing more.
    assert_eq!(
        push_scopes(&r("reg:5000/team/app:1"), Some(&r("other:5000/base/os:2"))),
        vec!["repository:team/app:pull,push".to_string()]
    );
    assert_eq!(
        push_scopes(&r("reg:5000/team/app:1"), Some(&r("reg:5000/team/app:0"))),
        vec!["repository:team/app:pull,push".to_string()]
    );
    assert_eq!(
        push_scopes(&r("reg:5000/team/app:1"), None),
        vec!["repository:team/app:pull,push".to_string()]
    );
}
