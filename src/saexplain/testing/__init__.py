"""Tiny real models and a fake LLM server, for tests and benchmarks — saexplain's own and those of code built
on it. Nothing in the product's stages imports this package.

- `tiny`: a randomly initialised 2-block Gemma-3 (d_model 64) with a BPE tokenizer trained on the shipped
  corpus, SAEs of each architecture written by sae-lens itself, and a ground-truth SAE whose feature 0 fires on
  exactly one token.
- `scripted`: a *fake* LLM backend with canned replies chosen by code (and the replies SAGE's steps get on the
  ground-truth SAE); it tests parsing, state machines and fault handling, never explanation quality.
- `fake_server`: a *fake* OpenAI-compatible HTTP server on 127.0.0.1 (in a thread or its own process) that
  answers from such a handler, with injected faults and a fixed latency: for fault handling and throughput."""
