//! The C ABI (`include/ckpt.h`, generated from this file by cbindgen) and preload mode.
//!
//! # Safety
//!
//! Functions here take only integers and, for `ckpt_exclude`, an address that is never
//! dereferenced (it names pages to leave out). Strings returned are static or live in a buffer
//! that stays valid until the next failing call. The preload constructor runs before `main`,
//! single-threaded, and acts only when this very shared object is named in `LD_PRELOAD`.
#![allow(unsafe_code)]

use core::ffi::{c_char, c_int, c_void};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use crate::{Config, Error};

/// Success.
pub const CKPT_OK: c_int = 0;
/// A `CKPT_*` environment variable is invalid.
pub const CKPT_ECONFIG: c_int = 1;
/// A file or system operation failed.
pub const CKPT_EIO: c_int = 2;
/// The checkpoint was refused: the process holds something that cannot be restored.
pub const CKPT_EREFUSED: c_int = 3;
/// The checkpoint failed; the previous one is intact.
pub const CKPT_ECHECKPOINT: c_int = 4;
/// An image is damaged.
pub const CKPT_ECORRUPT: c_int = 5;
/// Every checkpoint in the store is damaged.
pub const CKPT_EALLCORRUPT: c_int = 6;
/// The checkpoint was taken by a different program or build.
pub const CKPT_EWRONGBINARY: c_int = 7;
/// This process cannot be laid out as the checkpointed one was.
pub const CKPT_ELAYOUT: c_int = 8;
/// `CKPT_RESTORE=require` and there is no checkpoint.
pub const CKPT_ENOCHECKPOINT: c_int = 9;
/// Another process uses the store.
pub const CKPT_ESTOREBUSY: c_int = 10;
/// A checkpoint is already in progress.
pub const CKPT_EBUSY: c_int = 11;
/// `ckpt_init` has not been called.
pub const CKPT_ENOTINIT: c_int = 12;
/// `ckpt_init` was already called.
pub const CKPT_EALREADY: c_int = 13;
/// Address-space randomisation could not be turned off.
pub const CKPT_EASLR: c_int = 14;

impl Error {
    /// The stable integer code of this error at the C boundary.
    pub fn code(&self) -> c_int {
        match self {
            Error::Config(_) => CKPT_ECONFIG,
            Error::Io { .. } => CKPT_EIO,
            Error::Refused(_) => CKPT_EREFUSED,
            Error::Checkpoint(_) => CKPT_ECHECKPOINT,
            Error::Corrupt { .. } => CKPT_ECORRUPT,
            Error::AllCorrupt { .. } => CKPT_EALLCORRUPT,
            Error::WrongBinary { .. } => CKPT_EWRONGBINARY,
            Error::Layout { .. } => CKPT_ELAYOUT,
            Error::NoCheckpoint(_) => CKPT_ENOCHECKPOINT,
            Error::StoreBusy(_) => CKPT_ESTOREBUSY,
            Error::Busy => CKPT_EBUSY,
            Error::NotInitialized => CKPT_ENOTINIT,
            Error::AlreadyInitialized => CKPT_EALREADY,
            Error::Aslr(_) => CKPT_EASLR,
        }
    }
}

static LAST_ERROR: Mutex<Option<CString>> = Mutex::new(None);

fn status(r: crate::Result<()>) -> c_int {
    match r {
        Ok(()) => CKPT_OK,
        Err(e) => {
            let code = e.code();
            let msg = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
            if let Ok(mut slot) = LAST_ERROR.lock() {
                *slot = Some(msg);
            }
            code
        }
    }
}

/// Restores the last committed checkpoint of this program if the `CKPT_*` environment says so.
/// Returns `CKPT_OK` when there is nothing to restore; on success it does not return.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_restore() -> c_int {
    status(
        Config::from_env()
            .map_err(Error::from)
            .and_then(|c| crate::restore(&c)),
    )
}

/// Starts checkpointing as the `CKPT_*` environment says (a no-op when `CKPT_DIR` is unset).
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_init() -> c_int {
    status(
        Config::from_env()
            .map_err(Error::from)
            .and_then(crate::init),
    )
}

/// Takes a checkpoint now; returns once it is committed (and again after a restore from it).
/// A no-op when `ckpt_init` found checkpointing off; `CKPT_ENOTINIT` before `ckpt_init`.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_checkpoint_now() -> c_int {
    status(crate::checkpoint_now())
}

/// Leaves the whole pages of `[start, start + len)` out of every checkpoint; they read as
/// zeros after a restore.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_exclude(start: *const c_void, len: usize) -> c_int {
    status(crate::exclude(start as *const u8, len))
}

/// Stops checkpointing; committed checkpoints stay in the store.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_shutdown() -> c_int {
    status(crate::shutdown())
}

/// A static description of an error code.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_strerror(code: c_int) -> *const c_char {
    let s: &'static core::ffi::CStr = match code {
        CKPT_OK => c"success",
        CKPT_ECONFIG => c"invalid CKPT_* configuration",
        CKPT_EIO => c"file or system operation failed",
        CKPT_EREFUSED => {
            c"checkpoint refused: the process holds a resource that cannot be restored"
        }
        CKPT_ECHECKPOINT => c"checkpoint failed; the previous checkpoint is intact",
        CKPT_ECORRUPT => c"checkpoint image is damaged",
        CKPT_EALLCORRUPT => c"every checkpoint in the store is damaged",
        CKPT_EWRONGBINARY => c"checkpoint was taken by a different program",
        CKPT_ELAYOUT => c"this process cannot be laid out as the checkpointed one",
        CKPT_ENOCHECKPOINT => c"no checkpoint to restore",
        CKPT_ESTOREBUSY => c"store is in use by another process",
        CKPT_EBUSY => c"a checkpoint is already in progress",
        CKPT_ENOTINIT => c"checkpointing is not initialised",
        CKPT_EALREADY => c"checkpointing is already initialised",
        CKPT_EASLR => c"cannot disable address-space randomisation",
        _ => c"unknown error code",
    };
    s.as_ptr()
}

/// The full message of the last failing call (valid until the next failing call), or an empty
/// string.
#[unsafe(no_mangle)]
pub extern "C" fn ckpt_last_error() -> *const c_char {
    match LAST_ERROR.lock() {
        Ok(slot) => slot.as_ref().map_or(c"".as_ptr(), |s| s.as_ptr()),
        Err(_) => c"".as_ptr(),
    }
}

/// If this shared object was loaded through `LD_PRELOAD` (rather than linked), the value of
/// `LD_PRELOAD` without it.
fn preloaded() -> Option<String> {
    let list = std::env::var_os("LD_PRELOAD")?;
    // SAFETY: an all-zero Dl_info is valid plain data; dladdr fills it for an address in a
    // loaded object and keeps the strings alive as long as the object is loaded.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: the address of a function in this object.
    if unsafe { libc::dladdr(preload_init as *const c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path.
    let me = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let me = std::path::Path::new(std::ffi::OsStr::from_bytes(me.to_bytes()));
    let me = me.canonicalize().ok()?;
    let list = list.to_string_lossy();
    let entries = list.split([':', ' ']).filter(|p| !p.is_empty());
    let (mine, others): (Vec<&str>, Vec<&str>) = entries.partition(|p| {
        std::path::Path::new(p)
            .canonicalize()
            .is_ok_and(|p| p == me)
    });
    (!mine.is_empty()).then(|| others.join(":"))
}

/// Preload mode: restore (when a committed checkpoint exists) and start checkpointing before
/// `main`. A configuration or restore error stops the program with status 75 and a message.
/// Once running, the library is taken out of `LD_PRELOAD` so that programs this one starts are
/// not checkpointed into the same store.
extern "C" fn preload_init() {
    let Some(rest) = preloaded() else { return };
    let run = || -> crate::Result<()> {
        let cfg = Config::from_env()?;
        crate::restore(&cfg)?;
        crate::init(cfg)
    };
    if let Err(e) = run() {
        eprintln!("ckpt: {e}");
        std::process::exit(75);
    }
    if rest.is_empty() {
        crate::sys::process::unset_env("LD_PRELOAD");
    } else {
        crate::sys::process::set_env("LD_PRELOAD", &rest);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static PRELOAD_CONSTRUCTOR: extern "C" fn() = preload_init;
