//! The container image as `scripts/image.sh` builds it from this workspace's binaries: the same
//! inputs give the same digest, the binaries run on the image's own libraries, and the config says
//! who runs them and what they are. Process and file IO.

use std::path::{Path, PathBuf};
use std::process::Command;

use kilowatt_tests::{repository_root, test_dir, workspace_binary};
use serde_json::Value;

/// Runs `scripts/image.sh` on the test's binaries into `out`; returns the digest it prints.
fn build_image(binaries: &Path, out: &Path) -> String {
    let output = Command::new(repository_root().join("scripts/image.sh"))
        .arg("--binaries")
        .arg(binaries)
        .arg("--out")
        .arg(out)
        .output()
        .expect("scripts/image.sh runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/image.sh failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("image: digest "))
        .expect("a digest line")
        .to_owned()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn untar(archive: &Path, into: &Path, gzip: bool) {
    std::fs::create_dir_all(into).expect("directory");
    let status = Command::new("tar")
        .arg(if gzip { "-xzf" } else { "-xf" })
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar -xf {}", archive.display());
}

/// Every regular file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir").flatten() {
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                found.push(
                    entry
                        .path()
                        .strip_prefix(dir)
                        .expect("under dir")
                        .to_owned(),
                );
            }
        }
    }
    found
}

#[test]
fn the_image_is_reproducible_self_contained_and_runs_as_nonroot() {
    let binaries = workspace_binary("kilowatt")
        .parent()
        .expect("binary directory")
        .to_owned();
    let dir = test_dir("image");
    let first = build_image(&binaries, &dir.join("first.tar"));
    let second = build_image(&binaries, &dir.join("second.tar"));
    assert_eq!(first, second, "the same inputs give the same digest");
    let size = std::fs::metadata(dir.join("first.tar"))
        .expect("archive")
        .len();
    eprintln!("image: {first}, {size} bytes");

    let layout = dir.join("layout");
    untar(&dir.join("first.tar"), &layout, false);
    let index = read_json(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
    assert_eq!(
        manifest_digest, first,
        "the printed digest is the index's manifest"
    );
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest = read_json(&blob(manifest_digest));
    let config = read_json(&blob(
        manifest["config"]["digest"].as_str().expect("config"),
    ));
    assert_eq!(config["config"]["User"], "65532:65532");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        labels["dev.kilowatt.image.debian-packages"]
            .as_str()
            .is_some_and(|p| p.contains("libc6="))
    );

    let root = dir.join("root");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2, "base and binaries");
    for layer in layers {
        untar(&blob(layer["digest"].as_str().expect("layer")), &root, true);
    }
    let all = files(&root);
    assert!(
        !all.iter()
            .any(|f| f.to_string_lossy().contains("libnvidia-ml")),
        "the image carries no NVIDIA library; the host's is mounted"
    );
    assert!(
        root.join("etc/ssl/certs/ca-certificates.crt")
            .metadata()
            .expect("CA bundle")
            .len()
            > 100_000
    );
    // Each binary runs on the image's loader and libraries alone, nothing from this machine.
    let loader = root.join("lib64/ld-linux-x86-64.so.2");
    let libraries = format!(
        "{}:{}",
        root.join("lib/x86_64-linux-gnu").display(),
        root.join("usr/lib/x86_64-linux-gnu").display()
    );
    for (binary, name) in [
        ("kilowatt", "kilowatt"),
        ("kilowatt-agent", "kilowatt-agent"),
    ] {
        let output = Command::new(&loader)
            .arg("--library-path")
            .arg(&libraries)
            .arg(root.join("usr/local/bin").join(binary))
            .arg("--version")
            .env_clear()
            .output()
            .expect("the image's loader runs");
        assert!(
            output.status.success(),
            "{binary} on the image's libraries: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
