//! `libkrak.so`: the C API of `include/krak.h`, a thin layer over [`krak_pager::FarMemory`].
//! Errors are return codes with a per-thread message; no panic crosses the boundary.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use krak_pager::{FarMemory, FaultMode, PagerConfig};

pub const KRAK_OK: c_int = 0;
pub const KRAK_EINVAL: c_int = -1;
pub const KRAK_EPAGER: c_int = -2;
pub const KRAK_EPANIC: c_int = -3;

/// A region as C sees it (opaque).
#[derive(Debug)]
pub struct KrakRegion {
    region: FarMemory,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct KrakStats {
    pub missing_faults: u64,
    pub zero_fills: u64,
    pub remote_reads: u64,
    pub remote_writes: u64,
    pub evictions_clean: u64,
    pub evictions_dirty: u64,
    pub failed_faults: u64,
    pub resident_bytes: u64,
    pub local_budget_bytes: u64,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: String) {
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

/// Runs `f`, turning its error or panic into a code and the thread's message.
fn guard(f: impl FnOnce() -> Result<(), (c_int, String)>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => KRAK_OK,
        Ok(Err((code, msg))) => {
            set_error(msg);
            code
        }
        Err(_) => {
            set_error("internal error (panic) in libkrak".into());
            KRAK_EPANIC
        }
    }
}

fn invalid(msg: &str) -> (c_int, String) {
    (KRAK_EINVAL, msg.to_string())
}

/// # Safety
/// `servers` and `controller` are null or NUL-terminated strings; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn krak_region_create(
    size_bytes: u64,
    local_budget_bytes: u64,
    servers: *const c_char,
    controller: *const c_char,
    secret_file: *const c_char,
    out: *mut *mut KrakRegion,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is null"));
        }
        // SAFETY: null or NUL-terminated, per this function's contract.
        let text =
            |p: *const c_char| (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        let mut config = PagerConfig {
            region_bytes: size_bytes,
            local_budget_bytes,
            fault_mode: FaultMode::Threads,
            ..PagerConfig::default()
        };
        match (text(servers), text(controller)) {
            (Some(list), _) => {
                for addr in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    config.servers.push(addr.parse().map_err(|_| invalid(&format!("bad server address {addr:?}")))?);
                }
            }
            (None, Some(url)) => config.controller = Some(url),
            (None, None) => return Err(invalid("give servers or a controller")),
        }
        if let Some(path) = text(secret_file) {
            let secret = krak_auth::load_secret_file(std::path::Path::new(&path))
                .map_err(|e| invalid(&format!("rack secret: {e}")))?;
            config.secret = Some(secret);
        }
        let region = FarMemory::new(config).map_err(|e| (KRAK_EPAGER, e.to_string()))?;
        // SAFETY: out is writable, per the contract (checked non-null above).
        unsafe { *out = Box::into_raw(Box::new(KrakRegion { region })) };
        Ok(())
    })
}

/// # Safety
/// `region` is null or from `krak_region_create`, not destroyed.
#[no_mangle]
pub unsafe extern "C" fn krak_region_ptr(region: *const KrakRegion) -> *mut c_void {
    // SAFETY: a live region or null, per the contract.
    unsafe { region.as_ref() }.map_or(std::ptr::null_mut(), |r| r.region.as_ptr().cast())
}

/// # Safety
/// As [`krak_region_ptr`].
#[no_mangle]
pub unsafe extern "C" fn krak_region_len(region: *const KrakRegion) -> u64 {
    // SAFETY: a live region or null, per the contract.
    unsafe { region.as_ref() }.map_or(0, |r| r.region.len() as u64)
}

/// # Safety
/// As [`krak_region_ptr`].
#[no_mangle]
pub unsafe extern "C" fn krak_region_set_local_budget(region: *mut KrakRegion, bytes: u64) -> c_int {
    guard(|| {
        // SAFETY: a live region or null, per the contract.
        let r = unsafe { region.as_ref() }.ok_or_else(|| invalid("region is null"))?;
        r.region.set_local_budget(bytes).map_err(|e| (KRAK_EPAGER, e.to_string()))
    })
}

/// # Safety
/// As [`krak_region_ptr`].
#[no_mangle]
pub unsafe extern "C" fn krak_region_discard(region: *mut KrakRegion, offset: u64, len: u64) -> c_int {
    guard(|| {
        // SAFETY: a live region or null, per the contract.
        let r = unsafe { region.as_ref() }.ok_or_else(|| invalid("region is null"))?;
        r.region.discard(offset as usize, len as usize).map_err(|e| (KRAK_EINVAL, e.to_string()))
    })
}

/// # Safety
/// As [`krak_region_ptr`]; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn krak_region_stats(region: *const KrakRegion, out: *mut KrakStats) -> c_int {
    guard(|| {
        // SAFETY: a live region or null, per the contract.
        let r = unsafe { region.as_ref() }.ok_or_else(|| invalid("region is null"))?;
        if out.is_null() {
            return Err(invalid("out is null"));
        }
        let s = r.region.stats();
        let stats = KrakStats {
            missing_faults: s.missing_faults,
            zero_fills: s.zero_fills,
            remote_reads: s.remote_reads,
            remote_writes: s.remote_writes,
            evictions_clean: s.evictions_clean,
            evictions_dirty: s.evictions_dirty,
            failed_faults: s.failed_faults,
            resident_bytes: r.region.resident_bytes(),
            local_budget_bytes: r.region.local_budget_bytes(),
        };
        // SAFETY: out is writable (checked non-null), per the contract.
        unsafe { *out = stats };
        Ok(())
    })
}

/// # Safety
/// `region` is null or from `krak_region_create`, destroyed once; no thread touches its
/// memory afterwards.
#[no_mangle]
pub unsafe extern "C" fn krak_region_destroy(region: *mut KrakRegion) {
    if !region.is_null() {
        // SAFETY: from Box::into_raw in krak_region_create, destroyed once (contract).
        let boxed = unsafe { Box::from_raw(region) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
    }
}

/// The calling thread's last error message; valid until its next failing call.
#[no_mangle]
pub extern "C" fn krak_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}
