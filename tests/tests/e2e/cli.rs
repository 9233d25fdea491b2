//! The CLI contract: version, help, config print.

use hub_tests::hubmesh;
use std::io::Write;

fn run(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = hubmesh(args)?.output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[test]
fn version_and_help() -> anyhow::Result<()> {
    let (ok, out, _) = run(&["--version"])?;
    assert!(ok);
    assert_eq!(out.trim(), format!("hubmesh {}", env!("CARGO_PKG_VERSION")));
    let (ok, out, _) = run(&["help"])?;
    assert!(ok);
    assert!(out.contains("up") && out.contains("config"), "{out}");
    for sub in [
        &["up", "--help"][..],
        &["config", "--help"],
        &["config", "print", "--help"],
        &["help", "up"],
    ] {
        let (ok, out, err) = run(sub)?;
        assert!(ok, "{sub:?}: {err}");
        assert!(out.contains("Usage: hubmesh"), "{sub:?}: {out}");
    }
    let (ok, out, _) = run(&["up", "--help"])?;
    assert!(ok);
    for flag in [
        "--data",
        "--http",
        "--p2p-listen",
        "--bootstrap",
        "--admin",
        "--config",
    ] {
        assert!(out.contains(flag), "up --help lacks {flag}: {out}");
    }
    Ok(())
}

#[test]
fn config_print_shows_file_then_flags() -> anyhow::Result<()> {
    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(
        file,
        "data = \"/srv/hubmesh\"\nadmin = \"alice\"\n[p2p]\nlisten = [\"/ip4/0.0.0.0/tcp/4001\"]"
    )?;
    let path = file.path().to_string_lossy().into_owned();
    let (ok, out, err) = run(&[
        "config",
        "print",
        "--config",
        &path,
        "--http",
        "0.0.0.0:9000",
    ])?;
    assert!(ok, "{err}");
    let v: toml::Table = toml::from_str(&out)?;
    assert_eq!(v["data"].as_str(), Some("/srv/hubmesh"));
    assert_eq!(v["admin"].as_str(), Some("alice"));
    assert_eq!(v["http"].as_str(), Some("0.0.0.0:9000"), "flag beats file");
    let listen = v["p2p"]["listen"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>());
    assert_eq!(listen, Some(vec!["/ip4/0.0.0.0/tcp/4001"]));
    assert_eq!(v["p2p"]["bootstrap"].as_array().map(Vec::len), Some(0));
    Ok(())
}

#[test]
fn bad_flags_and_files_are_clear_errors() -> anyhow::Result<()> {
    let (ok, _, err) = run(&["config", "print", "--config", "/nonexistent/hubmesh.toml"])?;
    assert!(!ok);
    assert!(
        err.contains("read config file /nonexistent/hubmesh.toml"),
        "{err}"
    );
    let (ok, _, err) = run(&["config", "print", "--bootstrap", "not-a-multiaddr"])?;
    assert!(!ok);
    assert!(err.contains("invalid bootstrap address"), "{err}");
    let (ok, _, err) = run(&["up", "--http", "nowhere"])?;
    assert!(!ok);
    assert!(err.contains("--http"), "{err}");
    Ok(())
}
