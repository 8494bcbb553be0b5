"""The peer of `speech-bench tts`: Piper's own Python runtime (`pip install piper-tts==1.8.0`) speaking the
same text with the same voice and the same thread count, one round per line read from stdin.

Each stdin line is a JSON object {"text": ...}; each answer is one JSON line with the seconds spent in
phonemisation (espeak-ng + phoneme ids), inference (the ONNX model, sentence by sentence, plus Piper's
normalisation) and encoding (16-bit WAV), the seconds of audio made and the wall time of the round. The
stages are Piper's public methods, called in the order `PiperVoice.synthesize_wav` calls them.
"""

import argparse
import json
import sys
import time
import wave

import numpy as np
import onnxruntime
from piper import PiperVoice


def load(model: str, threads: int) -> PiperVoice:
    voice = PiperVoice.load(model)
    # PiperVoice.load uses ONNX Runtime's default thread pool (one thread per core); the bench pins both
    # sides to the same count.
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    voice.session = onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return voice


def round_(voice: PiperVoice, text: str, out: str) -> dict:
    started = time.perf_counter()
    t = time.perf_counter()
    sentences = [voice.phonemes_to_ids(p) for p in voice.phonemize(text) if p]
    phonemize = time.perf_counter() - t
    t = time.perf_counter()
    chunks = []
    for ids in sentences:
        audio = voice.phoneme_ids_to_audio(ids)
        peak = np.max(np.abs(audio))
        audio = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
        chunks.append(np.clip(audio, -1.0, 1.0).astype(np.float32))
    inference = time.perf_counter() - t
    t = time.perf_counter()
    samples = np.concatenate(chunks)
    with wave.open(out, "wb") as wav:
        wav.setframerate(voice.config.sample_rate)
        wav.setsampwidth(2)
        wav.setnchannels(1)
        wav.writeframes((samples * 32767).astype(np.int16).tobytes())
    encode = time.perf_counter() - t
    return {
        "phonemize_s": phonemize,
        "inference_s": inference,
        "encode_s": encode,
        "wall_s": time.perf_counter() - started,
        "audio_s": len(samples) / voice.config.sample_rate,
        "sentences": len(sentences),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="the WAV each round writes")
    args = parser.parse_args()
    voice = load(args.model, args.threads)
    print(json.dumps({"ready": True, "onnxruntime": onnxruntime.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(round_(voice, json.loads(line)["text"], args.out)), flush=True)


if __name__ == "__main__":
    main()
