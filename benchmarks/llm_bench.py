"""Client throughput of ``llm enhance``: requests/s and tokens/s through the async queue.

The server is the local OpenAI-protocol loopback server (``llm loopback-server``, in its own
process), which answers instantly or after a fixed delay, so the figures measure the client side
(rendering two 480 px PNGs, base64, JSON, the openai SDK over HTTP, validation, cache, ledger and
XML writes), not model speed. Each run starts with an empty cache and ledger. Tokens are the
loopback server's estimate (text characters / 4 plus 258 per image, Gemma 3's count), i.e. the
prompt volume a real server would have to process at that rate.

    .venv/bin/python benchmarks/llm_bench.py [--patches 40] [--latency-ms 0 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "llm"))  # the test-data writer (480 px Aerial-D patches)

from llm_fixtures import make_config, write_patch  # noqa: E402

from llm.enhance import RunOptions, enhance  # noqa: E402
from llm.targets import discover_annotations  # noqa: E402


def start_loopback(latency_ms: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "llm.cli", "loopback-server", "--port", str(port)]
    process = subprocess.Popen([*command, "--latency-ms", str(latency_ms)], stdout=subprocess.PIPE)
    base_url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{base_url}/ready", timeout=1)
        except urllib.error.HTTPError:
            return process, base_url  # the loopback answers 404: it is up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the loopback server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=40, help="patches (4 targets each)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 100.0])
    args = parser.parse_args()
    os.environ.setdefault("LLM_BENCH_KEY", "local")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "aeriald"
        for index in range(args.patches):
            write_patch(data, f"P{index:04d}_patch_000000", seed=index, size=480)
        pristine = {p: p.read_bytes() for p in data.rglob("*.xml")}
        for latency_ms in args.latency_ms:
            process, base_url = start_loopback(latency_ms)
            try:
                for concurrency in args.concurrency:
                    for path, content in pristine.items():
                        path.write_bytes(content)
                    config = make_config(
                        base_url,
                        backend={"api_key_env": "LLM_BENCH_KEY"},
                        queue={"concurrency": concurrency},
                        render={"image_size": 480},
                    )
                    work = Path(tmp) / f"work-{latency_ms}-{concurrency}"
                    started = time.perf_counter()
                    summary = enhance(
                        config, discover_annotations(data), work, RunOptions(progress=False)
                    )
                    wall = time.perf_counter() - started
                    assert summary.ok == summary.requests_sent == 4 * args.patches, summary
                    tokens = summary.prompt_tokens + summary.completion_tokens
                    rows.append(
                        {
                            "latency_ms": latency_ms,
                            "concurrency": concurrency,
                            "requests": summary.requests_sent,
                            "wall_s": round(wall, 2),
                            "requests_per_s": round(summary.requests_sent / wall, 1),
                            "tokens_per_s": round(tokens / wall),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                process.terminate()
                process.wait()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, load average at the end {load}\n")
    print("| server latency | concurrency | requests | wall s | requests/s | tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['latency_ms']:.0f} ms | {row['concurrency']} | {row['requests']} | "
            f"{row['wall_s']} | {row['requests_per_s']} | {row['tokens_per_s']} |"
        )


if __name__ == "__main__":
    main()
