//! Model manifest and warm-model cache shared by the in-process pipelines (LLM, TTS, lip-sync).
//! Empty until the models milestone; it must not know about the broker or the object store.
