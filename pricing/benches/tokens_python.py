#!/usr/bin/env python3
"""Python tiktoken on the texts `cargo bench -p credex-pricing --bench tokens` writes.

    cargo bench -p credex-pricing --bench tokens   # writes /tmp/credex-tokens-bench-*.txt
    /tmp/tt/bin/python pricing/benches/tokens_python.py

As the Rust bench: single-threaded `encode_ordinary` on each part (split at "\x1e"); of 11 runs
after a warm-up, the median wall time, the median and the least thread CPU time
(`time.thread_time_ns`). Offline: unless TIKTOKEN_CACHE_DIR is set, the BPE files come from
tiktoken-rs's bundled copies (see pricing/tests/fixtures/tokens/make_reference.py).
"""

import importlib.util
import pathlib
import statistics
import time

WORKLOADS = ["mixed", "prose"]
RUNS = 11

spec = importlib.util.spec_from_file_location(
    "make_reference",
    pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/tokens/make_reference.py",
)
make_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_reference)
make_reference.offline_cache()

import tiktoken  # noqa: E402


def rates(size: int, tokens: int, time_ns: float) -> str:
    seconds = time_ns / 1e9
    return f"{size / seconds / 1e6:6.2f} MB/s {tokens / seconds:7.0f} tok/s"


def main() -> None:
    print(f"tiktoken {tiktoken.__version__}; {RUNS} runs after one warm-up")
    for workload in WORKLOADS:
        path = f"/tmp/credex-tokens-bench-{workload}.txt"
        text = pathlib.Path(path).read_bytes().decode("utf-8")
        parts = text.split("\x1e")
        size = len(text.encode("utf-8"))
        print(f"{workload}: {size} bytes in {len(parts)} parts, read from {path}")
        bench(workload, parts, size)


def bench(workload: str, parts: list[str], size: int) -> None:
    for name in ["cl100k_base", "o200k_base"]:
        enc = tiktoken.get_encoding(name)
        tokens = sum(len(enc.encode_ordinary(part)) for part in parts)  # warm-up
        walls, cpus = [], []
        for _ in range(RUNS):
            wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
            again = sum(len(enc.encode_ordinary(part)) for part in parts)
            walls.append(time.perf_counter_ns() - wall)
            cpus.append(time.thread_time_ns() - cpu)
            assert again == tokens
        print(f"{workload + ' ' + name + ' python encode_ordinary':<46}"
              f" wall {rates(size, tokens, statistics.median(walls))}"
              f"  cpu {rates(size, tokens, statistics.median(cpus))}"
              f"  best cpu {rates(size, tokens, min(cpus))}  ({tokens} tokens)")


if __name__ == "__main__":
    main()
