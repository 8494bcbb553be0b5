//! A library that is not ONNX Runtime is a clear error naming the key, never a panic — and ONNX Runtime
//! is loaded once per process, so this test has its own binary.

use ainern2d_pipelines::onnx::{OnnxConfig, runtime};

#[test]
fn a_wrong_library_is_an_error_naming_the_key_and_the_first_answer_stays() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let err = runtime(&OnnxConfig { runtime_path: Some(fake.clone()), ..OnnxConfig::default() }).unwrap_err();
    assert!(err.starts_with(&format!("onnx.runtime_path = {}", fake.display())), "{err}");
    assert!(err.contains("not a usable ONNX Runtime library"), "{err}");
    // A later call in the same process gets the same answer: the library cannot be swapped at run time.
    let again = runtime(&OnnxConfig::default()).unwrap_err();
    assert_eq!(again, err);
}
