//! Store specifications (`--store`, `CKPT_STORE`, `CKPT_DIR`) and what a GENERATION argument
//! names.
//!
//! `dir:PATH` and a plain path are a local directory (`CKPT_DIR`). `rmem://HOST:PORT,...?K=V&...`
//! (remote memory) and `tiered:...` (remote memory with a local copy) are passed to the library
//! as `CKPT_STORE` unchanged; their full syntax belongs to the remote-store support of libckpt.

use std::path::{Path, PathBuf};

use crate::Result;
use crate::error::CliError;

/// A store, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// A local directory.
    Dir(PathBuf),
    /// Remote memory: the servers and the `?key=value` parameters.
    Remote {
        /// The spec as given.
        spec: String,
        /// `host:port` of each server.
        servers: Vec<String>,
        /// Query parameters in order.
        params: Vec<(String, String)>,
    },
    /// Remote memory with a local copy (the spec as given).
    Tiered(String),
}

impl Store {
    /// The spec text of a remote or tiered store.
    pub fn remote_spec(&self) -> Option<&str> {
        match self {
            Store::Dir(_) => None,
            Store::Remote { spec, .. } | Store::Tiered(spec) => Some(spec),
        }
    }
}

/// Parses a store spec.
pub fn parse(s: &str) -> Result<Store> {
    let bad = |reason: &str| CliError::BadStore {
        spec: s.to_string(),
        reason: reason.to_string(),
    };
    if let Some(rest) = s.strip_prefix("rmem://") {
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let servers: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if servers.is_empty() {
            return Err(bad("no server: expected rmem://HOST:PORT[,HOST:PORT...]"));
        }
        if let Some(h) = servers.iter().find(|h| {
            h.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        }) {
            return Err(bad(&format!("server {h:?} is not HOST:PORT")));
        }
        let params = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        return Ok(Store::Remote {
            spec: s.to_string(),
            servers,
            params,
        });
    }
    if s.starts_with("tiered:") {
        return Ok(Store::Tiered(s.to_string()));
    }
    let path = s.strip_prefix("dir:").unwrap_or(s);
    if path.is_empty() {
        return Err(bad("empty directory path"));
    }
    Ok(Store::Dir(PathBuf::from(path)))
}

/// The store of `--store`, else `CKPT_STORE`, else `CKPT_DIR`; `None` when none is set.
pub fn from_arg_or_env(arg: Option<&str>) -> Result<Option<Store>> {
    if let Some(a) = arg {
        return parse(a).map(Some);
    }
    let env = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
    if let Some(s) = env("CKPT_STORE") {
        return parse(&s).map(Some);
    }
    Ok(env("CKPT_DIR").map(|d| Store::Dir(PathBuf::from(d))))
}

/// The store a reading subcommand (`ls`, `inspect`, `verify`) works on.
#[derive(Debug)]
pub enum Source {
    /// A local directory, which exists.
    Local(PathBuf),
    /// Remote memory (`rmem://`, `tiered:`), as the library parses it, and the program whose
    /// pool it is (absolute, symbolic links resolved), if one was named.
    Remote(Box<ckpt::RemoteStore>, Option<PathBuf>),
}

/// The store of `--store`, else the environment's, for `cmd`; `program` names the program of a
/// remote store without `pool=`.
pub fn source(arg: Option<&str>, program: Option<&Path>, cmd: &'static str) -> Result<Source> {
    match from_arg_or_env(arg)?.ok_or(CliError::NoStore)? {
        Store::Dir(d) => existing_dir(d).map(Source::Local),
        Store::Remote { spec, .. } | Store::Tiered(spec) => {
            let r = ckpt::RemoteStore::parse(&spec)?;
            let program = match program {
                None => None,
                Some(p) => Some(program_path(p).map_err(|source| CliError::Io {
                    op: "find the program",
                    path: p.to_path_buf(),
                    source,
                })?),
            };
            if r.pool.is_none() && program.is_none() {
                return Err(CliError::Unsupported(format!(
                    "{cmd} of remote store {spec}: its pool is named after the program that \
                     checkpoints into it; name the program with --program PATH (or give pool= in \
                     the store)"
                )));
            }
            Ok(Source::Remote(Box::new(r), program))
        }
    }
}

/// The program's path as it sees its own (`/proc/self/exe`): found on `PATH` when it has no
/// slash, made absolute, symbolic links resolved.
pub fn program_path(p: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if p.as_os_str().as_bytes().contains(&b'/') {
        return p.canonicalize();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "not found (nor on PATH)")
        })?
        .canonicalize()
}

/// The local directory a reading subcommand works on; it must exist.
pub fn local_store(arg: Option<&str>, cmd: &'static str) -> Result<PathBuf> {
    match from_arg_or_env(arg)?.ok_or(CliError::NoStore)? {
        Store::Dir(d) => existing_dir(d),
        Store::Remote { spec, .. } => Err(CliError::RemoteStore {
            cmd,
            spec,
            hint: "; `ckpt servers` shows the pool's servers",
        }),
        Store::Tiered(spec) => Err(CliError::RemoteStore {
            cmd,
            spec,
            hint: "; pass the tiered store's local directory with --store dir:PATH to read its disk copy",
        }),
    }
}

fn existing_dir(d: PathBuf) -> Result<PathBuf> {
    match std::fs::metadata(&d) {
        Ok(m) if m.is_dir() => Ok(d),
        Ok(_) => Err(CliError::NotADirectory(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::StoreMissing(d)),
        Err(source) => Err(CliError::Io {
            op: "read",
            path: d,
            source,
        }),
    }
}

/// Which image a GENERATION argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The newest committed generation.
    Newest,
    /// A generation number.
    Generation(u64),
    /// An image file given by path (any state: committed, spare, set aside, a copy).
    File(PathBuf),
}

/// A store and an image in it.
#[derive(Debug, Clone)]
pub struct ImageTarget {
    /// The store directory (for a file given by path, its directory).
    pub dir: PathBuf,
    /// The image.
    pub which: Which,
}

/// Resolves `[--store S] [GENERATION]`: a number names a generation of the store, anything else
/// an image file (whose directory is then the store, for its chain).
pub fn image_target(
    store: Option<&str>,
    generation: Option<&str>,
    cmd: &'static str,
) -> Result<ImageTarget> {
    let g = generation.map(str::trim);
    if let Some(n) = g.and_then(|g| g.parse::<u64>().ok()) {
        return Ok(ImageTarget {
            dir: local_store(store, cmd)?,
            which: Which::Generation(n),
        });
    }
    match g {
        None => Ok(ImageTarget {
            dir: local_store(store, cmd)?,
            which: Which::Newest,
        }),
        Some(p) => {
            let path = PathBuf::from(p);
            if !path.is_file() {
                return Err(CliError::BadGeneration(p.to_string()));
            }
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            Ok(ImageTarget {
                dir,
                which: Which::File(path),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(parse("/a/b").unwrap(), Store::Dir("/a/b".into()));
        assert_eq!(parse("dir:rel").unwrap(), Store::Dir("rel".into()));
        assert!(parse("dir:").is_err());
        let Store::Remote {
            servers, params, ..
        } = parse("rmem://a:1,b:2?redundancy=parity&key=/k").unwrap()
        else {
            panic!("not remote")
        };
        assert_eq!(servers, ["a:1", "b:2"]);
        assert_eq!(params[0], ("redundancy".into(), "parity".into()));
        assert_eq!(params[1], ("key".into(), "/k".into()));
        assert!(parse("rmem://").is_err());
        assert!(parse("rmem://host").is_err());
        assert!(parse("rmem://host:x").is_err());
        assert_eq!(
            parse("tiered:rmem://a:1;dir:/d").unwrap(),
            Store::Tiered("tiered:rmem://a:1;dir:/d".into())
        );
    }
}
