//! The inventory: scanning `<var-dir>/policies/`, registering, verifying and deleting.
//!
//! A scan walks the root (bounded by [`Limits`]) and pairs each payload with its sidecar
//! manifest. A `.json` payload without a sidecar is tried as a predecessor file; when it loads,
//! its derived manifest (with the digest it has now) is written as its sidecar, so a later change
//! to the file is caught by [`Inventory::verify`]. Anything else is listed as invalid, with a
//! kind and a reason, and the scan goes on.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
};

use serde_json::Value;
use telemetry_core::timestamp;

use crate::{
    digest,
    equip::{self, Refusal, Requirements},
    legacy::{self, LegacyError, LEGACY_FORMAT, MAX_LEGACY_BYTES},
    manifest::{self, check_policy_id, Manifest, Origin, Registration, MANIFEST_VERSION},
    PolicyError, MANIFEST_SUFFIX, MAX_MANIFEST_BYTES,
};

/// Bounds of a scan and of the files the inventory reads or copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files looked at per scan (payloads and sidecars); past it the listing is `truncated`.
    pub max_files: usize,
    /// Directory depth below the root.
    pub max_depth: usize,
    /// Largest payload registered or copied.
    pub max_payload_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 10_000,
            max_depth: 8,
            max_payload_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// Why a file under the root is not a usable policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    /// It could not be read.
    Unreadable,
    /// A `.json` file that does not parse.
    NotJson,
    /// A format the legacy loader refuses, or a non-JSON file without a manifest.
    UnknownFormat,
    /// A `q_table/v1` file with a malformed table.
    BadPayload,
    /// Over a size limit.
    TooLarge,
    /// Its sidecar manifest does not parse or check.
    BadManifest,
    /// A sidecar whose payload is gone.
    MissingPayload,
    /// Its size differs from its manifest's (the digest cannot match).
    Changed,
}

impl InvalidKind {
    /// The wire word (`InvalidPolicyFile.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidKind::Unreadable => "unreadable",
            InvalidKind::NotJson => "not_json",
            InvalidKind::UnknownFormat => "unknown_format",
            InvalidKind::BadPayload => "bad_payload",
            InvalidKind::TooLarge => "too_large",
            InvalidKind::BadManifest => "bad_manifest",
            InvalidKind::MissingPayload => "missing_payload",
            InvalidKind::Changed => "changed",
        }
    }
}

/// A file listed as invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidFile {
    /// Its path relative to the root, `/`-separated.
    pub path: String,
    /// Why, as a stable word.
    pub kind: InvalidKind,
    /// Why, for a person.
    pub reason: String,
}

impl InvalidFile {
    /// The wire form.
    pub fn to_pb(&self) -> telemetry_core::pb::InvalidPolicyFile {
        telemetry_core::pb::InvalidPolicyFile {
            path: self.path.clone(),
            kind: self.kind.as_str().to_owned(),
            reason: self.reason.clone(),
        }
    }
}

/// The result of a scan, sorted by id / path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// Usable policies.
    pub policies: Vec<Manifest>,
    /// Files that are not.
    pub invalid: Vec<InvalidFile>,
    /// The scan stopped at [`Limits::max_files`] or skipped directories past
    /// [`Limits::max_depth`].
    pub truncated: bool,
}

/// A digest check of one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// Its manifest.
    pub manifest: Manifest,
    /// The digest the file has now.
    pub current_sha256: String,
}

impl Verification {
    /// The file still hashes to its manifest's digest.
    pub fn matches(&self) -> bool {
        self.current_sha256 == self.manifest.sha256
    }
}

/// The checkpoint inventory rooted at a directory.
#[derive(Debug, Clone)]
pub struct Inventory {
    root: PathBuf,
    limits: Limits,
}

impl Inventory {
    /// The inventory of a daemon var dir: `<var_dir>/policies`.
    pub fn in_var_dir(var_dir: &Path) -> Self {
        Self::at(var_dir.join("policies"))
    }

    /// The inventory rooted at `root` (created when something is registered).
    pub fn at(root: PathBuf) -> Self {
        Inventory {
            root,
            limits: Limits::default(),
        }
    }

    /// With other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The payload path of an id.
    pub fn payload_path(&self, id: &str) -> Result<PathBuf, PolicyError> {
        let parts = check_policy_id(id)?;
        let mut p = self.root.clone();
        p.extend(parts);
        Ok(p)
    }

    fn sidecar(payload: &Path) -> PathBuf {
        let mut s = payload.as_os_str().to_owned();
        s.push(MANIFEST_SUFFIX);
        PathBuf::from(s)
    }

    /// Scans the root. A missing root is an empty inventory. Predecessor files found without a
    /// manifest get one written (their digest as of now).
    pub fn scan(&self) -> Result<Listing, PolicyError> {
        let mut listing = Listing::default();
        let mut files: Vec<String> = Vec::new();
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(PolicyError::Invalid(format!(
                    "{} is not a directory",
                    self.root.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => {
                return Err(PolicyError::io(format!("reading {}", self.root.display()))(
                    e,
                ))
            }
        }
        self.walk(&self.root, "", 0, &mut files, &mut listing)?;
        files.sort();
        let set: std::collections::BTreeSet<&str> = files.iter().map(String::as_str).collect();
        for rel in &files {
            if let Some(payload) = rel.strip_suffix(MANIFEST_SUFFIX) {
                if !set.contains(payload) {
                    listing.invalid.push(InvalidFile {
                        path: rel.clone(),
                        kind: InvalidKind::MissingPayload,
                        reason: format!("a manifest whose payload {payload:?} is gone"),
                    });
                }
                continue;
            }
            let has_sidecar = set.contains(format!("{rel}{MANIFEST_SUFFIX}").as_str());
            match self.entry(rel, has_sidecar) {
                Ok(m) => listing.policies.push(m),
                Err(bad) => listing.invalid.push(bad),
            }
        }
        Ok(listing)
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: &str,
        depth: usize,
        files: &mut Vec<String>,
        listing: &mut Listing,
    ) -> Result<(), PolicyError> {
        let read = match fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) => {
                listing.invalid.push(InvalidFile {
                    path: prefix.trim_end_matches('/').to_owned(),
                    kind: InvalidKind::Unreadable,
                    reason: format!("cannot list the directory: {e}"),
                });
                return Ok(());
            }
        };
        let mut entries: Vec<_> = read.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue; // not UTF-8: cannot be an id
            };
            if name.starts_with('.') {
                continue; // hidden files and our temporary files
            }
            let rel = format!("{prefix}{name}");
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if depth + 1 >= self.limits.max_depth {
                    listing.truncated = true;
                    continue;
                }
                self.walk(&e.path(), &format!("{rel}/"), depth + 1, files, listing)?;
            } else if ft.is_file() {
                if files.len() >= self.limits.max_files {
                    listing.truncated = true;
                    return Ok(());
                }
                files.push(rel);
            }
        }
        Ok(())
    }

    /// One payload: its sidecar when it has one, else a predecessor file.
    fn entry(&self, rel: &str, has_sidecar: bool) -> Result<Manifest, InvalidFile> {
        let invalid = |kind, reason: String| InvalidFile {
            path: rel.to_owned(),
            kind,
            reason,
        };
        let payload = self
            .payload_path(rel)
            .map_err(|e| invalid(InvalidKind::UnknownFormat, e.to_string()))?;
        if has_sidecar {
            let m = read_manifest(&Self::sidecar(&payload))
                .map_err(|(k, r)| invalid(k, format!("its manifest: {r}")))?;
            if m.policy_id != rel {
                return Err(invalid(
                    InvalidKind::BadManifest,
                    format!("its manifest names {:?}", m.policy_id),
                ));
            }
            let size = fs::metadata(&payload)
                .map_err(|e| invalid(InvalidKind::Unreadable, e.to_string()))?
                .len();
            if size != m.size_bytes {
                return Err(invalid(
                    InvalidKind::Changed,
                    format!(
                        "{size} bytes, its manifest says {}: the file changed",
                        m.size_bytes
                    ),
                ));
            }
            return Ok(m);
        }
        if !rel.ends_with(".json") {
            return Err(invalid(
                InvalidKind::UnknownFormat,
                "no manifest; register it with one (policies import)".into(),
            ));
        }
        let bytes = read_bounded(&payload, MAX_LEGACY_BYTES).map_err(|(k, r)| invalid(k, r))?;
        let table = legacy::load_q_table(&bytes).map_err(|e| {
            let kind = match &e {
                LegacyError::NotJson(_) => InvalidKind::NotJson,
                LegacyError::UnknownFormat(_) => InvalidKind::UnknownFormat,
                LegacyError::BadPayload(_) => InvalidKind::BadPayload,
            };
            invalid(kind, e.to_string())
        })?;
        let d = legacy::derive(rel, &table);
        let created = table
            .metadata
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(|t| timestamp::parse_rfc3339(t).ok())
            .or_else(|| mtime(&payload))
            .unwrap_or_else(timestamp::now);
        let m = Manifest {
            manifest_version: MANIFEST_VERSION,
            policy_id: rel.to_owned(),
            env_id: d.env_id,
            agent_id: d.agent_id,
            observation_space: d.observation_space,
            action_space: d.action_space,
            control_mode: d.control_mode,
            format: "q_table".into(),
            payload_version: 1,
            source_run_id: d.source_run_id,
            created_at: timestamp::format_rfc3339(&created),
            size_bytes: bytes.len() as u64,
            sha256: digest::sha256_hex(&bytes),
            metadata: table.metadata,
            origin: Origin::Discovered,
        };
        m.check().map_err(|r| invalid(InvalidKind::BadPayload, r))?;
        if let Err(e) = write_manifest(&Self::sidecar(&payload), &m) {
            // Still listed: the digest is as of this scan until a manifest can be written.
            tracing::warn!(path = %payload.display(), error = %e, "cannot write a discovered policy's manifest");
        }
        Ok(m)
    }

    /// The manifest of one policy (a predecessor file without one gets one, as in a scan).
    pub fn get(&self, id: &str) -> Result<Manifest, PolicyError> {
        let payload = self.payload_path(id)?;
        if !payload.is_file() {
            return Err(PolicyError::NotFound(id.to_owned()));
        }
        let has_sidecar = Self::sidecar(&payload).is_file();
        self.entry(id, has_sidecar).map_err(|bad| {
            PolicyError::Refused(Refusal::Invalid(format!(
                "{}: {}",
                bad.kind.as_str(),
                bad.reason
            )))
        })
    }

    /// Re-hashes a policy's payload and compares it with its manifest.
    pub fn verify(&self, id: &str) -> Result<Verification, PolicyError> {
        let payload = self.payload_path(id)?;
        let side = Self::sidecar(&payload);
        if !payload.is_file() {
            return Err(PolicyError::NotFound(id.to_owned()));
        }
        let manifest = if side.is_file() {
            read_manifest(&side).map_err(|(k, r)| {
                PolicyError::Refused(Refusal::Invalid(format!("{}: {r}", k.as_str())))
            })?
        } else {
            self.get(id)?
        };
        let (current_sha256, _) =
            digest::sha256_file(&payload).map_err(PolicyError::io(format!("hashing {id}")))?;
        Ok(Verification {
            manifest,
            current_sha256,
        })
    }

    /// Checks that a policy fits `req` and still matches its digest: the equip handshake.
    pub fn check_equip(&self, id: &str, req: &Requirements) -> Result<Manifest, PolicyError> {
        let v = self.verify(id)?;
        equip::check(&v.manifest, req, &v.current_sha256)?;
        Ok(v.manifest)
    }

    /// Registers the file at `src` with the caller's manifest. A file under the root is
    /// registered in place; any other is copied to `<env>/[<subdir>/]<file name>`. Registering
    /// the same bytes again returns the existing manifest.
    pub fn register(
        &self,
        src: &Path,
        reg: Registration,
        origin: Origin,
    ) -> Result<Manifest, PolicyError> {
        manifest::check_env_id(&reg.env_id).map_err(PolicyError::Invalid)?;
        manifest::check_format(&reg.format).map_err(PolicyError::Invalid)?;
        if reg.payload_version == 0 {
            return Err(PolicyError::Invalid(
                "payload_version must be at least 1".into(),
            ));
        }
        let meta =
            fs::metadata(src).map_err(PolicyError::io(format!("reading {}", src.display())))?;
        if !meta.is_file() {
            return Err(PolicyError::Invalid(format!(
                "{} is not a regular file",
                src.display()
            )));
        }
        if meta.len() > self.limits.max_payload_bytes {
            return Err(PolicyError::TooLarge {
                path: src.display().to_string(),
                size: meta.len(),
                max: self.limits.max_payload_bytes,
            });
        }
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.starts_with('.') && !n.ends_with(MANIFEST_SUFFIX))
            .ok_or_else(|| {
                PolicyError::Invalid(format!("{} has no usable file name", src.display()))
            })?
            .to_owned();
        let (id, payload) = match self.inside_root(src) {
            Some(rel) => (rel.clone(), self.payload_path(&rel)?),
            None => {
                let mut id = manifest::env_dir_name(&reg.env_id);
                if !reg.subdir.is_empty() {
                    id.push('/');
                    id.push_str(&manifest::env_dir_name(&reg.subdir));
                }
                id.push('/');
                id.push_str(&name);
                let payload = self.payload_path(&id)?;
                (id, payload)
            }
        };
        let copying = !same_file(src, &payload);
        let (sha, size) = if copying {
            if payload.exists() {
                let (have, _) = digest::sha256_file(&payload)
                    .map_err(PolicyError::io(format!("hashing {id}")))?;
                let (want, _) = digest::sha256_file(src)
                    .map_err(PolicyError::io(format!("hashing {}", src.display())))?;
                if have != want {
                    return Err(PolicyError::Conflict(id));
                }
                if let Ok(m) = read_manifest(&Self::sidecar(&payload)) {
                    return Ok(m);
                }
                (have, meta.len())
            } else {
                self.copy_in(src, &payload)?
            }
        } else {
            digest::sha256_file(&payload).map_err(PolicyError::io(format!("hashing {id}")))?
        };
        if !reg.expected_sha256.is_empty() && reg.expected_sha256 != sha {
            if copying {
                let _ = fs::remove_file(&payload);
            }
            return Err(PolicyError::Refused(Refusal::DigestMismatch {
                expected: reg.expected_sha256,
                actual: sha,
            }));
        }
        let agent_given = !reg.agent_id.is_empty();
        let mut m = Manifest {
            manifest_version: MANIFEST_VERSION,
            policy_id: id,
            agent_id: if reg.agent_id.is_empty() {
                name.rsplit_once('.')
                    .map_or(name.as_str(), |(s, _)| s)
                    .to_owned()
            } else {
                reg.agent_id
            },
            env_id: reg.env_id,
            observation_space: reg.observation_space,
            action_space: reg.action_space,
            control_mode: reg.control_mode,
            format: reg.format,
            payload_version: reg.payload_version,
            source_run_id: reg.source_run_id,
            created_at: timestamp::format_rfc3339(&timestamp::now()),
            size_bytes: size,
            sha256: sha,
            metadata: reg.metadata,
            origin,
        };
        // A q_table payload must load, and its spaces come from its shape.
        if m.format_version().to_string() == LEGACY_FORMAT {
            let bytes = read_bounded(&payload, MAX_LEGACY_BYTES)
                .map_err(|(_, r)| PolicyError::Invalid(r))?;
            let table =
                legacy::load_q_table(&bytes).map_err(|e| PolicyError::Invalid(e.to_string()))?;
            let d = legacy::derive(&m.policy_id, &table);
            if !agent_given {
                // The predecessor's rule: payload.agent_id, else the file stem.
                m.agent_id = d.agent_id;
            }
            if m.observation_space.is_empty() {
                m.observation_space = d.observation_space;
            }
            if m.action_space.is_empty() {
                m.action_space = d.action_space;
            }
            if m.source_run_id.is_empty() {
                m.source_run_id = d.source_run_id;
            }
            if m.metadata.is_empty() {
                m.metadata = table.metadata;
            }
        }
        m.check().map_err(PolicyError::Invalid)?;
        write_manifest(&Self::sidecar(&payload), &m).map_err(PolicyError::io(format!(
            "writing the manifest of {}",
            m.policy_id
        )))?;
        Ok(m)
    }

    /// Removes a policy's payload and manifest. (Refusing while it is equipped is the
    /// daemon's rule: it knows the runs.)
    pub fn delete(&self, id: &str) -> Result<(), PolicyError> {
        let payload = self.payload_path(id)?;
        if !payload.is_file() {
            return Err(PolicyError::NotFound(id.to_owned()));
        }
        let side = Self::sidecar(&payload);
        match fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PolicyError::io(format!("removing {}", side.display()))(e)),
        }
        fs::remove_file(&payload).map_err(PolicyError::io(format!("removing {id}")))
    }

    /// `src`'s path relative to the root, when it lies under it.
    fn inside_root(&self, src: &Path) -> Option<String> {
        let root = fs::canonicalize(&self.root).ok()?;
        let src = fs::canonicalize(src).ok()?;
        let rel = src.strip_prefix(&root).ok()?;
        let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
        let id = parts?.join("/");
        check_policy_id(&id).ok()?;
        Some(id)
    }

    /// Copies `src` to `dest` (0600, through a temporary file and a rename), hashing on the way.
    fn copy_in(&self, src: &Path, dest: &Path) -> Result<(String, u64), PolicyError> {
        let dir = dest.parent().unwrap_or(&self.root);
        create_private_dirs(dir)?;
        let tmp = dir.join(format!(".tmp-{}", std::process::id()));
        let from =
            File::open(src).map_err(PolicyError::io(format!("reading {}", src.display())))?;
        let mut out = private_file(&tmp)?;
        let limited = from.take(self.limits.max_payload_bytes + 1);
        let (sha, n) = digest::hash_reader(limited, &mut out)
            .map_err(PolicyError::io(format!("copying {}", src.display())))?;
        if n > self.limits.max_payload_bytes {
            let _ = fs::remove_file(&tmp);
            return Err(PolicyError::TooLarge {
                path: src.display().to_string(),
                size: n,
                max: self.limits.max_payload_bytes,
            });
        }
        out.sync_all()
            .map_err(PolicyError::io("syncing a policy copy"))?;
        fs::rename(&tmp, dest).map_err(PolicyError::io(format!("placing {}", dest.display())))?;
        Ok((sha, n))
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((fs::canonicalize(a), fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

fn mtime(path: &Path) -> Option<prost_types::Timestamp> {
    let t = fs::metadata(path).ok()?.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(timestamp::from_unix_nanos(
        i64::try_from(d.as_nanos()).ok()?,
    ))
}

/// Reads at most `max` bytes of a file, or says why not.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, (InvalidKind, String)> {
    let f = File::open(path).map_err(|e| (InvalidKind::Unreadable, e.to_string()))?;
    let mut bytes = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (InvalidKind::Unreadable, e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err((
            InvalidKind::TooLarge,
            format!("over {max} bytes, the limit for this kind of file"),
        ));
    }
    Ok(bytes)
}

/// Reads and checks a sidecar manifest.
pub(crate) fn read_manifest(path: &Path) -> Result<Manifest, (InvalidKind, String)> {
    let bytes = read_bounded(path, MAX_MANIFEST_BYTES)?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| (InvalidKind::BadManifest, e.to_string()))?;
    m.check().map_err(|r| (InvalidKind::BadManifest, r))?;
    Ok(m)
}

/// Writes a sidecar manifest atomically, 0600.
pub(crate) fn write_manifest(path: &Path, m: &Manifest) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
    write_private_atomic(path, &text)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, 0600.
pub(crate) fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = open_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

fn open_private(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn private_file(path: &Path) -> Result<File, PolicyError> {
    open_private(path).map_err(PolicyError::io(format!("creating {}", path.display())))
}

fn create_private_dirs(dir: &Path) -> Result<(), PolicyError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(PolicyError::io(format!("creating {}", dir.display())))
}
