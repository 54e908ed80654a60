#!/usr/bin/env python
"""Transport benchmark: what the ZeroMQ transport moves, plain and with CURVE, on this machine.

    .venv/bin/python benchmarks/transport.py            # about 1-2 minutes (bounded: < 3 minutes)
    .venv/bin/python benchmarks/transport.py --quick    # < 30 seconds

Two measurements, each with 1, 2 and 4 worker *processes* talking to one trainer interface over TCP
on 127.0.0.1 (loopback only), first in plaintext and then with CURVE (keys made in a temporary
directory; a ZAP allow-list checks every worker, as in production):

1. Buffers, workers -> trainer. Every worker sends the same buffer as fast as it can with
   ``ZmqWorkerClient.send_buffer`` (encoding included); the trainer drains with ``retrieve_buffer``
   (decoding, accounting and concatenation included), and we count what arrives in a fixed window that
   starts once every worker's buffers are getting through. Two sizes: *small* = 25 Pendulum transitions (obs 3 float32, act 1 float32;
   850 bytes of arrays), *large* = 1000 transitions of 64x64x3 uint8 images (obs and next_obs; about
   24.6 MB). Buffers/s and MB/s (arrays only, 1 MB = 1e6 bytes) are totals over all workers.
2. Weight broadcast latency, trainer -> every worker: from ``publish_weights`` (encoding included)
   until *all* N workers have received and decoded the new version and their acknowledgement (a
   one-row buffer stamped with that version) is back at the trainer. Median, min and max over the
   repeats, for a 0.3 MB and a 20 MB float32 model.

Worker processes are started once and reused (each configuration makes a fresh trainer interface and
fresh clients). Plain and CURVE runs of a configuration are run back to back so a busy moment of the
machine hits both alike; the ratio column is CURVE / plain (throughput: < 1 means CURVE is slower;
latency: > 1 means CURVE is slower). On a machine with fewer cores than processes (4 workers + the
trainer on 2 cores, say) the figures measure CPU sharing as much as the transport.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
if os.path.isdir(SRC) and SRC not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, SRC)

import numpy as np  # noqa: E402

LOOPBACK = "tcp://127.0.0.1:0"
SIZES = {  # buffer kind -> (transitions, obs shape, obs dtype, act dim)
    "small": (25, (3,), np.float32, 1),
    "large": (1000, (64, 64, 3), np.uint8, 3),
}
MODELS = {"0.3 MB": 300_000, "20 MB": 20_000_000}


def make_buffer(kind: str):
    from relayrl.buffer import Buffer
    n, shape, dtype, act_dim = SIZES[kind]
    rng = np.random.default_rng(0)
    if dtype == np.uint8:
        obs = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        next_obs = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    else:
        obs = rng.standard_normal((n, *shape)).astype(dtype)
        next_obs = rng.standard_normal((n, *shape)).astype(dtype)
    return Buffer(obs=obs, act=rng.standard_normal((n, act_dim)).astype(np.float32),
                  rew=rng.standard_normal(n).astype(np.float32), next_obs=next_obs,
                  terminated=np.zeros(n, bool), truncated=np.zeros(n, bool))


def buffer_bytes(kind: str) -> int:
    """Bytes of array data in one buffer of ``kind`` (what MB/s counts)."""
    n, shape, dtype, act_dim = SIZES[kind]
    return n * (2 * int(np.prod(shape)) * np.dtype(dtype).itemsize + act_dim * 4 + 4 + 2)


def make_weights(total_bytes: int) -> dict[str, np.ndarray]:
    """A model of about ``total_bytes`` of float32, as a few layers."""
    floats = total_bytes // 4
    layers = {"l0.weight": int(floats * 0.45), "l1.weight": int(floats * 0.45)}
    layers["l2.weight"] = floats - sum(layers.values())
    rng = np.random.default_rng(1)
    return {name: rng.standard_normal(n).astype(np.float32) for name, n in layers.items()}


# --- worker processes ----------------------------------------------------------------------------------
def worker_main(index: int, conn) -> None:
    """A benchmark worker: runs the commands its pipe sends, one client per command."""
    from relayrl.transport import ZmqWorkerClient

    name = f"bench-{index}"
    buffers = {}
    while True:
        command = conn.recv()
        if command[0] == "quit":
            return
        what, buffer_endpoint, weights_endpoint, security, param = command
        large = what == "send" and param[0] == "large"
        client = ZmqWorkerClient(buffer_endpoint, weights_endpoint, name, send_timeout=10.0,
                                 send_hwm=2 if large else 100, **security)
        try:
            if what == "send":  # as fast as possible, until the trainer says stop
                kind = param
                if kind not in buffers:
                    buffers[kind] = make_buffer(kind)
                buffer, sent = buffers[kind], 0
                check_every = 1 if kind == "large" else 16
                while not (sent % check_every == 0 and conn.poll()):
                    try:
                        client.send_buffer(buffer)
                    except TimeoutError:
                        pass
                    sent += 1
                conn.recv()  # the stop command
                conn.send(("done", sent))
            elif what == "echo":  # acknowledge every new weights version with a one-row buffer
                ack = make_buffer("small")
                ack = type(ack)(**{k: v[:1] for k, v in ack.arrays().items()})
                acks = 0
                while not conn.poll():
                    message = client.poll_weights(0.05)
                    if message is not None:
                        ack.policy_version = message[0]
                        client.send_buffer(ack)
                        acks += 1
                conn.recv()  # the stop command
                conn.send(("done", acks))
        finally:
            client.close()


class Pool:
    """Worker processes, started once, stopped by pid in ``close`` (always)."""

    def __init__(self, n: int):
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(i, child), name=f"bench-worker-{i}", daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("quit",))
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def security_for(keys, index: int | None):
    """Trainer-side (index None) or worker-side keyword arguments; {} for plaintext."""
    if keys is None:
        return {}
    if index is None:
        return {"server_secret_key_file": str(keys.trainer_secret),
                "authorized_keys_dir": str(keys.authorized_keys_dir)}
    return {"server_public_key_file": str(keys.trainer_public),
            "client_secret_key_file": str(keys.worker_secrets[f"bench-{index}"])}


def collect_done(conns, timeout: float) -> list:
    replies, deadline = [None] * len(conns), time.monotonic() + timeout
    while any(r is None for r in replies) and time.monotonic() < deadline:
        for i, conn in enumerate(conns):
            if replies[i] is None and conn.poll(0.01):
                replies[i] = conn.recv()
    if any(r is None for r in replies):
        raise RuntimeError("a benchmark worker did not answer in time")
    return replies


# --- the two measurements --------------------------------------------------------------------------
def throughput(pool: Pool, n: int, kind: str, keys, window: float) -> tuple[float, float]:
    """(buffers/s, MB/s) arriving at the trainer from ``n`` workers sending ``kind`` buffers, over
    ``window`` seconds that start once every worker's buffers are arriving."""
    from relayrl.transport import ZmqTrainerInterface

    large = kind == "large"
    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, max_queued_buffers=2 if large else 1000,
                                  max_messages_per_retrieve=4 if large else 1000, **security_for(keys, None))
    names = [f"bench-{i}" for i in range(n)]
    conns = pool.conns[:n]
    try:
        for i, conn in enumerate(conns):
            conn.send(("send", trainer.buffer_endpoint, trainer.weights_endpoint, security_for(keys, i), kind))
        try:
            deadline = time.monotonic() + 60.0  # warm-up: until every worker is getting through
            while not all(name in trainer.workers and trainer.workers[name].buffers > 0 for name in names):
                if time.monotonic() > deadline:
                    raise RuntimeError("benchmark workers did not get through in 60 s")
                trainer.wait_for_data(0.02)
                trainer.retrieve_buffer()
            rows, start = 0, time.perf_counter()
            end = start + window
            while time.perf_counter() < end:
                trainer.wait_for_data(max(0.0, min(0.02, end - time.perf_counter())))
                rows += len(trainer.retrieve_buffer())
            elapsed = time.perf_counter() - start
        finally:
            for conn in conns:
                conn.send(("stop",))
            replies: list = [None] * n
            deadline = time.monotonic() + 60.0
            while any(r is None for r in replies) and time.monotonic() < deadline:
                trainer.wait_for_data(0.02)  # keep draining so no worker stays blocked in a send
                trainer.retrieve_buffer()
                for i, conn in enumerate(conns):
                    if replies[i] is None and conn.poll():
                        replies[i] = conn.recv()
            if any(r is None for r in replies):
                raise RuntimeError("benchmark workers did not stop in time")
    finally:
        trainer.close()
    buffers_per_s = rows / SIZES[kind][0] / elapsed
    return buffers_per_s, buffers_per_s * buffer_bytes(kind) / 1e6


def broadcast_latency(pool: Pool, n: int, model_bytes: int, keys, repeats: int) -> list[float]:
    """Seconds from publish_weights to every worker's acknowledgement, ``repeats`` times."""
    from relayrl.transport import ZmqTrainerInterface

    trainer = ZmqTrainerInterface(LOOPBACK, LOOPBACK, **security_for(keys, None))
    weights = make_weights(model_bytes)
    conns = pool.conns[:n]
    names = [f"bench-{i}" for i in range(n)]

    def wait_all(version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            trainer.retrieve_buffer()
            accounts = trainer.workers
            if all(name in accounts and accounts[name].last_policy_version == version for name in names):
                return True
            trainer.wait_for_data(0.01)
        return False

    latencies = []
    try:
        for i, conn in enumerate(conns):
            conn.send(("echo", trainer.buffer_endpoint, trainer.weights_endpoint, security_for(keys, i), None))
        version = trainer.publish_weights(weights)  # join: late subscribers get a re-send
        if not wait_all(version, 60.0):
            raise RuntimeError("benchmark workers did not receive the first weights")
        for _ in range(repeats):
            t0 = time.perf_counter()
            version = trainer.publish_weights(weights)
            if not wait_all(version, 60.0):
                raise RuntimeError(f"weights version {version} did not reach every worker in 60 s")
            latencies.append(time.perf_counter() - t0)
    finally:
        for conn in conns:
            conn.send(("stop",))
        collect_done(conns, 30.0)
        trainer.close()
    return latencies


# --- report ----------------------------------------------------------------------------------------
def header() -> str:
    import zmq

    import relayrl
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"relayrl {relayrl.__version__} | pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()} | "
            f"Python {platform.python_version()} | numpy {np.__version__} | {platform.system()} "
            f"{platform.machine()}, {cores} cores, load average {load}")


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows and few repeats (< 30 s)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts (default 1,2,4)")
    parser.add_argument("--window", type=float, help="seconds measured per throughput run "
                        "(default 2.0; 0.5 with --quick)")
    parser.add_argument("--repeats", type=int, help="broadcasts per latency run (default 15 for 0.3 MB, "
                        "6 for 20 MB; 3 and 2 with --quick)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    if not counts or min(counts) < 1 or max(counts) > 16:
        parser.error("--workers: counts between 1 and 16, e.g. 1,2,4")
    window = args.window or (0.5 if args.quick else 2.0)
    repeats = {"0.3 MB": args.repeats or (3 if args.quick else 15),
               "20 MB": args.repeats or (2 if args.quick else 6)}

    from relayrl.transport.keys import create_keys

    started = time.monotonic()
    print(header(), flush=True)
    results: dict = {"throughput": [], "latency": []}
    with tempfile.TemporaryDirectory(prefix="relayrl-bench-keys-") as tmp:
        keys = create_keys(tmp, [f"bench-{i}" for i in range(max(counts))])
        pool = Pool(max(counts))
        try:
            print(f"\nBuffers, workers -> trainer (totals over all workers, measured for {window:g} s once "
                  "every worker gets through)", flush=True)
            print(f"{'buffer':<36}{'workers':>8}{'plain buf/s':>14}{'plain MB/s':>12}{'CURVE buf/s':>14}"
                  f"{'CURVE MB/s':>12}{'CURVE/plain':>13}")
            for kind in SIZES:
                n_rows, shape, dtype, _ = SIZES[kind]
                size = buffer_bytes(kind)
                label = (f"{kind}: {n_rows} x {'x'.join(map(str, shape))} {np.dtype(dtype).name}, "
                         f"{size / 1e6:.3g} MB" if size > 1e5 else
                         f"{kind}: {n_rows} x Pendulum, {size} B")
                for n in counts:
                    plain = throughput(pool, n, kind, None, window)
                    curve = throughput(pool, n, kind, keys, window)
                    ratio = curve[0] / plain[0] if plain[0] and plain[0] == plain[0] else float("nan")
                    print(f"{label:<36}{n:>8}{fmt(plain[0]):>14}{fmt(plain[1]):>12}{fmt(curve[0]):>14}"
                          f"{fmt(curve[1]):>12}{fmt(ratio, 2):>13}", flush=True)
                    results["throughput"].append({"kind": kind, "workers": n, "bytes": size,
                                                  "plain_buffers_per_s": plain[0], "plain_mb_per_s": plain[1],
                                                  "curve_buffers_per_s": curve[0], "curve_mb_per_s": curve[1]})

            print("\nWeight broadcast latency, trainer -> all workers and acknowledged (ms: median "
                  "[min - max])", flush=True)
            print(f"{'model':<10}{'workers':>8}{'repeats':>9}{'plain':>26}{'CURVE':>26}{'CURVE/plain':>13}")
            for model, size in MODELS.items():
                for n in counts:
                    plain = broadcast_latency(pool, n, size, None, repeats[model])
                    curve = broadcast_latency(pool, n, size, keys, repeats[model])

                    def cell(xs):
                        return (f"{statistics.median(xs) * 1e3:.1f} [{min(xs) * 1e3:.1f} - "
                                f"{max(xs) * 1e3:.1f}]")

                    ratio = statistics.median(curve) / statistics.median(plain)
                    print(f"{model:<10}{n:>8}{repeats[model]:>9}{cell(plain):>26}{cell(curve):>26}"
                          f"{ratio:>13.2f}", flush=True)
                    results["latency"].append({"model": model, "bytes": size, "workers": n,
                                               "plain_s": plain, "curve_s": curve})
        finally:
            pool.close()
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header(), **results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
