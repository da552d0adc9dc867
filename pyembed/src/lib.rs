//! An embedded Python interpreter: `libpython` loaded with `dlopen` (not linked, so binaries
//! that never call it never need it), started without signal handlers, running code strings
//! in its `__main__`.
//!
//! This is one of the workspace's two crates with `unsafe` code (the other, `hostmem`, makes one
//! `mallopt` call): five C functions of Python's stable API
//! (`Py_InitializeEx`, `PyEval_SaveThread`, `PyGILState_Ensure`/`Release`,
//! `PyRun_SimpleString`). The GIL is released after start and taken only while code runs:
//! libtorch's autograd engine, once Python's torch is imported, refuses to run while a thread
//! holds the GIL.
use anyhow::{bail, Context, Result};
use std::ffi::{c_char, c_int, CString};
use std::path::Path;

type Run = unsafe extern "C" fn(*const c_char) -> c_int;
type Ensure = unsafe extern "C" fn() -> c_int;
type Release = unsafe extern "C" fn(c_int);

/// A running interpreter.
pub struct Interpreter {
    _lib: libloading::Library,
    run: Run,
    ensure: Ensure,
    release: Release,
}

impl Interpreter {
    /// Loads `libpython` (its symbols global, as extension modules such as torch's need) and
    /// starts it with `home` as `PYTHONHOME` (`prefix:exec_prefix` of the Python it belongs to,
    /// so its standard library is found whatever this binary's path). One per process.
    pub fn start(libpython: &Path, home: &str) -> Result<Interpreter> {
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL;
        // SAFETY: loading libpython runs its initialisers, which only set up its own state.
        let lib = unsafe { libloading::os::unix::Library::open(Some(libpython), flags) }
            .with_context(|| format!("loading {}", libpython.display()))?;
        let lib: libloading::Library = lib.into();
        // SAFETY: these symbols have these signatures in every CPython 3 (the stable ABI).
        let (init, save, run, ensure, release) = unsafe {
            let init = *lib
                .get::<unsafe extern "C" fn(c_int)>(b"Py_InitializeEx\0")
                .context("libpython lacks Py_InitializeEx")?;
            let save = *lib
                .get::<unsafe extern "C" fn() -> *mut std::ffi::c_void>(b"PyEval_SaveThread\0")
                .context("libpython lacks PyEval_SaveThread")?;
            let run = *lib
                .get::<Run>(b"PyRun_SimpleString\0")
                .context("libpython lacks PyRun_SimpleString")?;
            let ensure = *lib
                .get::<Ensure>(b"PyGILState_Ensure\0")
                .context("libpython lacks PyGILState_Ensure")?;
            let release = *lib
                .get::<Release>(b"PyGILState_Release\0")
                .context("libpython lacks PyGILState_Release")?;
            (init, save, run, ensure, release)
        };
        let before = std::env::var_os("PYTHONHOME");
        std::env::set_var("PYTHONHOME", home);
        // SAFETY: called once, before any other Python call; 0 installs no signal handlers
        // (Ctrl-C stays this program's). Then the GIL is let go (its thread state is kept by
        // Python for this thread).
        unsafe {
            init(0);
            save();
        }
        match before {
            Some(v) => std::env::set_var("PYTHONHOME", v),
            None => std::env::remove_var("PYTHONHOME"),
        }
        Ok(Interpreter {
            _lib: lib,
            run,
            ensure,
            release,
        })
    }

    /// Runs `code` in `__main__` (definitions persist between calls). A Python exception
    /// prints its traceback on stderr and becomes an error.
    pub fn exec(&self, code: &str) -> Result<()> {
        let c = CString::new(code).context("Python code with a NUL byte")?;
        // SAFETY: the interpreter is initialised; the GIL is held from Ensure to Release.
        let rc = unsafe {
            let gil = (self.ensure)();
            let rc = (self.run)(c.as_ptr());
            (self.release)(gil);
            rc
        };
        if rc != 0 {
            bail!("Python raised an exception");
        }
        Ok(())
    }
}
