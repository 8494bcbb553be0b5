"""The peer of `llm-bench --python`: llama.cpp through `llama-cpp-python` (`pip install llama-cpp-python==0.3.36`)
on the same GGUF file, the same thread count and the same prompt tokens, generating the same number of tokens
greedily, one round per line read from stdin.

Each stdin line is a JSON object {"prompt": [token ids], "tokens": n}; each answer is one JSON line with the
wall seconds of the prompt evaluation (`Llama.eval` of the prompt: llama.cpp's batches of `n_batch` tokens),
the wall seconds of the generation (from the first sample to the last token: n greedy samples, n - 1
single-token evaluations and a detokenisation per token, as the pipeline's `generation_s` counts them), the
generated ids, and llama.cpp's own compute timings of the round (`llama_perf_context`). End-of-sequence tokens
do not stop the generation: both sides generate exactly n tokens.
"""

import argparse
import json
import sys
import time

import llama_cpp
from llama_cpp import Llama


def round_(llm: Llama, prompt: list, tokens: int) -> dict:
    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    started = time.perf_counter()
    llm.eval(prompt)
    prompt_s = time.perf_counter() - started
    ids = []
    text = b""
    gen_started = time.perf_counter()
    for i in range(tokens):
        token = llm.sample(temp=0.0, repeat_penalty=1.0)
        ids.append(token)
        text += llm.detokenize([token])
        if i + 1 == tokens:
            break
        llm.eval([token])
    decode_s = time.perf_counter() - gen_started
    perf = llama_cpp.llama_perf_context(llm.ctx)
    return {
        "prompt_s": prompt_s,
        "decode_s": decode_s,
        "prompt_tokens": len(prompt),
        "tokens": len(ids),
        "ids": ids,
        "perf": {
            "prompt_eval_ms": perf.t_p_eval_ms,
            "prompt_eval_tokens": perf.n_p_eval,
            "eval_ms": perf.t_eval_ms,
            "eval_tokens": perf.n_eval,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--ctx", type=int, default=4096)
    args = parser.parse_args()
    llm = Llama(
        model_path=args.model,
        n_ctx=args.ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=0,
        verbose=False,
    )
    ready = {
        "ready": True,
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "n_batch": llm.n_batch,
        "n_vocab": llm.n_vocab(),
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip():
            request = json.loads(line)
            print(json.dumps(round_(llm, request["prompt"], request["tokens"])), flush=True)


if __name__ == "__main__":
    main()
