//! What `gym-telemetry-daemon policies list|verify` print, so the binary stays a shell: one
//! line per policy or invalid file, and a verification that says whether every digest matched.

use crate::{Inventory, Listing, Manifest, PolicyError};

/// Keeps the policies whose env, agent and format match the non-empty filters.
pub fn filter(listing: &mut Listing, env: &str, agent: &str, format: &str) {
    let keep = |want: &str, have: &str| want.is_empty() || want == have;
    listing
        .policies
        .retain(|m| keep(env, &m.env_id) && keep(agent, &m.agent_id) && keep(format, &m.format));
}

/// One line per policy (`id  env  agent  format/vN  size  sha256[..12]  source run`), then
/// one per invalid file (`INVALID  path  kind: reason`), then a note when the scan was cut.
pub fn listing_lines(listing: &Listing) -> Vec<String> {
    let mut out: Vec<String> = listing
        .policies
        .iter()
        .map(|m| {
            format!(
                "{}\t{}\t{}\t{}\t{} B\t{}\t{}",
                m.policy_id,
                m.env_id,
                m.agent_id,
                m.format_version(),
                m.size_bytes,
                &m.sha256[..12.min(m.sha256.len())],
                if m.source_run_id.is_empty() {
                    "-"
                } else {
                    &m.source_run_id
                }
            )
        })
        .collect();
    out.extend(
        listing
            .invalid
            .iter()
            .map(|i| format!("INVALID\t{}\t{}: {}", i.path, i.kind.as_str(), i.reason)),
    );
    if listing.truncated {
        out.push("(the scan stopped at its file or depth limit)".into());
    }
    out
}

/// A manifest as indented JSON.
pub fn manifest_json(m: &Manifest) -> String {
    serde_json::to_string_pretty(m).unwrap_or_default()
}

/// Verifies `ids` (empty: every listed policy). Returns one line per policy and whether every
/// digest still matches (an invalid or missing policy counts as not matching).
pub fn verify(inv: &Inventory, ids: &[String]) -> Result<(Vec<String>, bool), PolicyError> {
    let mut ok = true;
    let mut lines = Vec::new();
    let ids: Vec<String> = if ids.is_empty() {
        let listing = inv.scan()?;
        for i in &listing.invalid {
            ok = false;
            lines.push(format!(
                "INVALID\t{}\t{}: {}",
                i.path,
                i.kind.as_str(),
                i.reason
            ));
        }
        listing.policies.into_iter().map(|m| m.policy_id).collect()
    } else {
        ids.to_vec()
    };
    for id in ids {
        match inv.verify(&id) {
            Ok(v) if v.matches() => lines.push(format!("ok\t{id}\t{}", v.current_sha256)),
            Ok(v) => {
                ok = false;
                lines.push(format!(
                    "MISMATCH\t{id}\tmanifest {} file {}",
                    v.manifest.sha256, v.current_sha256
                ));
            }
            Err(e) => {
                ok = false;
                lines.push(format!("ERROR\t{id}\t{e}"));
            }
        }
    }
    Ok((lines, ok))
}
