//! espeak-ng through FFI, loaded at run time with `libloading`: a worker without TTS voices needs no libespeak,
//! and one with them finds out at start-up, with a message that says how to install it.
//!
//! espeak-ng keeps global state and is not thread-safe: there is one instance per process ([`Espeak::open`]
//! initialises it once) and every call goes through one mutex.

// The workspace denies unsafe code; this file is the FFI boundary to libespeak-ng (a C library loaded at run
// time), which cannot be called without it. Each unsafe block is one foreign call or symbol lookup.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use libloading::Library;

/// Library names tried when no path is configured.
pub const DEFAULT_LIBRARIES: &[&str] = &["libespeak-ng.so.1", "libespeak-ng.so", "libespeak-ng.dylib"];

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// Return an error instead of calling `exit()` when the data directory is missing.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
const CHARS_UTF8: c_int = 1;
/// `phonememode` bit 1: IPA instead of espeak's own phoneme names (what Piper voices are trained on).
const PHONEMES_IPA: c_int = 0x02;

type InitializeFn = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetVoiceByNameFn = unsafe extern "C" fn(*const c_char) -> c_int;
type TextToPhonemesFn = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;
type InfoFn = unsafe extern "C" fn(*mut *const c_char) -> *const c_char;

/// The process-wide espeak-ng instance.
pub struct Espeak {
    api: Mutex<Api>,
    library: String,
    data_dir: Option<PathBuf>,
    version: String,
    data_path: String,
}

struct Api {
    set_voice: SetVoiceByNameFn,
    text_to_phonemes: TextToPhonemesFn,
    /// The voice espeak-ng has selected, so a run of clauses in one voice sets it once.
    voice: Option<String>,
    /// Keeps the function pointers valid; the instance lives for the whole process.
    _library: Library,
}

static INSTANCE: OnceLock<Espeak> = OnceLock::new();
/// Serialises initialisation, so a failed attempt can be retried (with a corrected path) later.
static INIT: Mutex<()> = Mutex::new(());

impl std::fmt::Debug for Espeak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Espeak").field("library", &self.library).field("version", &self.version).finish()
    }
}

impl Espeak {
    /// The espeak-ng instance, loaded and initialised by the first call. `library` is a path or name for
    /// `dlopen` (default: [`DEFAULT_LIBRARIES`]); `data_dir` the `espeak-ng-data` directory or its parent
    /// (default: the library's built-in location). A later call that asks for another library or data
    /// directory than the loaded one is an error: espeak-ng can only be initialised once per process.
    pub fn open(library: Option<&Path>, data_dir: Option<&Path>) -> Result<&'static Espeak, String> {
        let _init = INIT.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(espeak) = INSTANCE.get() {
            espeak.check_same(library, data_dir)?;
            return Ok(espeak);
        }
        let espeak = Self::load(library, data_dir)?;
        Ok(INSTANCE.get_or_init(|| espeak))
    }

    /// The IPA phonemes of one clause in the espeak-ng `voice` (`en-us`, `de`, …), words separated by spaces,
    /// without punctuation. Text that espeak-ng itself splits further is joined with spaces.
    pub fn phonemize(&self, voice: &str, clause: &str) -> Result<String, String> {
        let text = CString::new(clause).map_err(|_| "text to phonemize contains a NUL character".to_string())?;
        let mut api = self.api.lock().unwrap_or_else(PoisonError::into_inner);
        api.select(voice)?;
        let mut cursor: *const c_void = text.as_ptr().cast();
        let mut parts = Vec::new();
        // espeak-ng consumes at least one character per call; the bound only guards against a broken library.
        for _ in 0..=clause.len() {
            if cursor.is_null() {
                break;
            }
            // SAFETY: `cursor` points into `text`, a NUL-terminated UTF-8 string that outlives the loop;
            // espeak-ng advances it within the string or sets it to null at the end. The mutex serialises
            // every call into the library.
            let out = unsafe { (api.text_to_phonemes)(&mut cursor, CHARS_UTF8, PHONEMES_IPA) };
            if out.is_null() {
                break;
            }
            // SAFETY: espeak-ng returns a NUL-terminated string in its own buffer, valid until its next call;
            // it is copied here, under the lock.
            let phonemes = unsafe { CStr::from_ptr(out) }.to_string_lossy();
            let phonemes = strip_language_flags(phonemes.trim());
            if !phonemes.is_empty() {
                parts.push(phonemes);
            }
        }
        if !cursor.is_null() {
            return Err(format!("espeak-ng did not finish phonemizing {clause:?}"));
        }
        Ok(parts.join(" "))
    }

    /// The library name or path that was loaded.
    pub fn library(&self) -> &str {
        &self.library
    }

    /// espeak-ng's version (`1.51`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The data directory espeak-ng uses.
    pub fn data_path(&self) -> &str {
        &self.data_path
    }

    fn load(library: Option<&Path>, data_dir: Option<&Path>) -> Result<Espeak, String> {
        let (lib, name) = open_library(library)?;
        let data = match data_dir {
            Some(dir) => Some(data_arg(dir)?),
            None => None,
        };
        let symbol_error = |symbol: &str, e: libloading::Error| {
            format!("{name} is not a usable espeak-ng library (tts.espeak_library): no symbol {symbol}: {e}")
        };
        // SAFETY: the symbols are looked up by their C names and typed as declared in espeak-ng's
        // `speak_lib.h`; the pointers stay valid while `lib` lives, and `lib` moves into the instance.
        let (initialize, set_voice, text_to_phonemes, info) = unsafe {
            (
                *lib.get::<InitializeFn>(b"espeak_Initialize\0").map_err(|e| symbol_error("espeak_Initialize", e))?,
                *lib.get::<SetVoiceByNameFn>(b"espeak_SetVoiceByName\0")
                    .map_err(|e| symbol_error("espeak_SetVoiceByName", e))?,
                *lib.get::<TextToPhonemesFn>(b"espeak_TextToPhonemes\0")
                    .map_err(|e| symbol_error("espeak_TextToPhonemes", e))?,
                *lib.get::<InfoFn>(b"espeak_Info\0").map_err(|e| symbol_error("espeak_Info", e))?,
            )
        };
        let path_arg = data.as_ref().map_or(std::ptr::null(), |p| p.as_ptr());
        // SAFETY: `path_arg` is null or a NUL-terminated path that outlives the call; the INIT lock is held, so
        // no other thread is inside the library.
        let rate = unsafe { initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, path_arg, INITIALIZE_DONT_EXIT) };
        if rate <= 0 {
            let location = data_dir.map_or("its default data directory".to_string(), |d| d.display().to_string());
            return Err(format!(
                "espeak-ng ({name}) failed to initialise from {location}: install its data (Debian/Ubuntu: \
                 `apt-get install espeak-ng-data`) or set tts.espeak_data to an `espeak-ng-data` directory"
            ));
        }
        let mut data_path: *const c_char = std::ptr::null();
        // SAFETY: espeak_Info writes a pointer to its static data-path string and returns its static version
        // string; both are copied at once.
        let version = unsafe { info(&mut data_path) };
        let copy = |p: *const c_char| {
            // SAFETY: `p` is null or one of espeak-ng's static NUL-terminated strings.
            if p.is_null() { String::new() } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned() }
        };
        let (version, data_path) = (copy(version), copy(data_path));
        tracing::info!(library = %name, %version, data = %data_path, "espeak-ng loaded");
        let api = Api { set_voice, text_to_phonemes, voice: None, _library: lib };
        Ok(Espeak {
            api: Mutex::new(api),
            library: name,
            data_dir: data_dir.map(Path::to_path_buf),
            version,
            data_path,
        })
    }

    fn check_same(&self, library: Option<&Path>, data_dir: Option<&Path>) -> Result<(), String> {
        if let Some(lib) = library
            && lib.as_os_str() != self.library.as_str()
        {
            return Err(format!(
                "espeak-ng is already loaded from {} in this process; it cannot also load {}",
                self.library,
                lib.display()
            ));
        }
        if let Some(dir) = data_dir
            && self.data_dir.as_deref() != Some(dir)
        {
            return Err(format!(
                "espeak-ng is already initialised with the data directory {}; it cannot switch to {}",
                self.data_path,
                dir.display()
            ));
        }
        Ok(())
    }
}

impl Api {
    fn select(&mut self, voice: &str) -> Result<(), String> {
        if self.voice.as_deref() == Some(voice) {
            return Ok(());
        }
        let name = CString::new(voice).map_err(|_| format!("espeak-ng voice name {voice:?} contains a NUL"))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call; the caller holds the mutex.
        let rc = unsafe { (self.set_voice)(name.as_ptr()) };
        if rc != 0 {
            // espeak-ng may have dropped the previous voice; select again next time.
            self.voice = None;
            return Err(format!(
                "espeak-ng has no voice {voice:?} (error {rc}): check the voice config's `espeak.voice`; \
                 `espeak-ng --voices` lists the installed voices"
            ));
        }
        self.voice = Some(voice.to_string());
        Ok(())
    }
}

fn open_library(library: Option<&Path>) -> Result<(Library, String), String> {
    if let Some(path) = library {
        // SAFETY: loading runs the library's initialisers; espeak-ng's only set up its own globals.
        return match unsafe { Library::new(path) } {
            Ok(lib) => Ok((lib, path.display().to_string())),
            Err(e) => Err(format!("cannot load the espeak-ng library {} (tts.espeak_library): {e}", path.display())),
        };
    }
    let mut errors = Vec::new();
    for name in DEFAULT_LIBRARIES {
        // SAFETY: as above.
        match unsafe { Library::new(name) } {
            Ok(lib) => return Ok((lib, (*name).to_string())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(format!(
        "espeak-ng is not installed: none of {} could be loaded ({}). Install it (Debian/Ubuntu: `apt-get install \
         libespeak-ng1`, macOS: `brew install espeak-ng`) or set tts.espeak_library to the library's path",
        DEFAULT_LIBRARIES.join(", "),
        errors.join("; ")
    ))
}

/// espeak-ng silently falls back to its built-in location when the given directory is wrong; check first.
fn data_arg(dir: &Path) -> Result<CString, String> {
    let usable = dir.join("phontab").is_file() || dir.join("espeak-ng-data").join("phontab").is_file();
    if !usable {
        return Err(format!(
            "{} is not an espeak-ng data directory (tts.espeak_data): it has neither phontab nor \
             espeak-ng-data/phontab",
            dir.display()
        ));
    }
    let text = dir.to_str().ok_or_else(|| format!("espeak-ng data directory {} is not UTF-8", dir.display()))?;
    CString::new(text).map_err(|_| format!("espeak-ng data directory {} contains a NUL", dir.display()))
}

/// Removes the language-switch flags espeak-ng inserts around foreign words (`(fr)bɔ̃ʒuʁ(en)`), as Piper does:
/// the voice was trained without them.
pub fn strip_language_flags(phonemes: &str) -> String {
    let mut out = String::with_capacity(phonemes.len());
    let mut rest = phonemes;
    while let Some(open) = rest.find('(') {
        let after = &rest[open + 1..];
        match after.find(')') {
            Some(close) if close > 0 && after[..close].chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn language_flags_are_removed() {
        assert_eq!(strip_language_flags("(fr)bɔ̃ʒuʁ(en) wˈɜːld"), "bɔ̃ʒuʁ wˈɜːld");
        assert_eq!(strip_language_flags("(en-us)a"), "a");
        assert_eq!(strip_language_flags("a () b (ə) c"), "a () b (ə) c");
        assert_eq!(strip_language_flags("unclosed (fr"), "unclosed (fr");
    }

    #[test]
    fn a_missing_library_says_how_to_install_it() {
        // `open_library`, not `open`: another test may already hold the process's instance.
        let e = open_library(Some(Path::new("/nonexistent/libespeak-ng.so.1"))).map(|_| ()).unwrap_err();
        assert!(e.contains("/nonexistent/libespeak-ng.so.1") && e.contains("tts.espeak_library"), "{e}");
    }

    #[test]
    fn a_wrong_data_directory_is_refused() {
        let e = data_arg(Path::new("/nonexistent")).unwrap_err();
        assert!(e.contains("tts.espeak_data") && e.contains("phontab"), "{e}");
    }

    /// espeak-ng is installed wherever the tests run (Debian's libespeak-ng1); failing here says how.
    pub(crate) fn espeak() -> &'static Espeak {
        Espeak::open(None, None).unwrap_or_else(|e| panic!("espeak-ng is needed for this test: {e}"))
    }

    #[test]
    fn phonemizes_in_ipa() {
        let espeak = espeak();
        assert!(espeak.version().starts_with("1."), "{}", espeak.version());
        assert_eq!(espeak.phonemize("en-us", "Hello world").unwrap(), "həlˈoʊ wˈɜːld");
        // espeak-ng drops punctuation and splits on its own clause marks; the parts are joined.
        assert_eq!(espeak.phonemize("en-us", "Hello, world.").unwrap(), "həlˈoʊ wˈɜːld");
        assert_eq!(espeak.phonemize("en-us", "").unwrap(), "");
        assert_eq!(espeak.phonemize("de", "gut").unwrap(), "ɡˈuːt");
        // Switching back and forth between voices works (the selected voice is cached).
        assert_eq!(espeak.phonemize("en-us", "Hello").unwrap(), "həlˈoʊ");
    }

    #[test]
    fn an_unknown_voice_is_named() {
        let e = espeak().phonemize("xx-nonexistent", "Hello").unwrap_err();
        assert!(e.contains("\"xx-nonexistent\"") && e.contains("espeak.voice"), "{e}");
        assert_eq!(espeak().phonemize("en-us", "Hello").unwrap(), "həlˈoʊ");
    }

    #[test]
    fn open_returns_the_one_instance() {
        let a = espeak();
        let b = Espeak::open(None, None).unwrap();
        assert!(std::ptr::eq(a, b));
        let e = Espeak::open(None, Some(Path::new("/usr/share/nowhere"))).unwrap_err();
        assert!(e.contains("already initialised"), "{e}");
    }

    #[test]
    fn concurrent_calls_are_serialised() {
        let espeak = espeak();
        let voices = ["en-us", "de"];
        let want: Vec<String> = voices.iter().map(|v| espeak.phonemize(v, "gut").unwrap()).collect();
        assert_ne!(want[0], want[1]);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| s.spawn(move || (0..20).map(|_| espeak.phonemize(voices[i % 2], "gut").unwrap()).collect()))
                .collect();
            for (i, h) in handles.into_iter().enumerate() {
                let got: Vec<String> = h.join().unwrap();
                assert!(got.iter().all(|p| *p == want[i % 2]), "thread {i}: {got:?}");
            }
        });
    }
}
