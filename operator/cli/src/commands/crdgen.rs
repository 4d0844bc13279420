//! `kilowatt crdgen`: prints the CRD manifests, or writes each to its file. Writes files or stdout.

use std::process::ExitCode;

use anyhow::Context;

use crate::args::CrdgenArgs;

pub fn run(args: &CrdgenArgs) -> ExitCode {
    super::exit_code(crdgen(args.out_dir.as_deref()))
}

/// Prints the CRD manifests, or writes each to its file under `out_dir`.
fn crdgen(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let manifests = kilowatt_crds::crd_manifests()?;
    match out_dir {
        Some(dir) => {
            for (file, yaml) in manifests {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        None => {
            let documents: Vec<String> = manifests.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", documents.join("---\n"));
        }
    }
    Ok(())
}
