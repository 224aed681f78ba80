"""Serving from Kafka, end to end: `streamer serve` with each Kafka client, and a Quix Streams peer.

Every figure runs for each client (`--kafka-client kafka-python` and `confluent`) in alternating rounds
in one run, so that both see the same machine; the peer (the same job as a Quix Streams app,
benchmarks/quix_peer.py, in its own virtualenv .bench-venv) is timed in the same rounds.

1. throughput, single-step events: N events (S streams x T steps, interleaved, with ts) are produced to
   an input topic once; each run is a fresh group (and output, dead-letter and changelog topics) on it.
   The clock runs from the process start (and, second figure, from its /healthz turning ready: group
   joined, changelog restored) until the output topic's end offsets show every prediction record.
   Everything is included: start-up, decode, engine, encode, produce, changelog, offset commits.
2. throughput, 10-step chunks: the same with one message per 10 steps; steps/s.
3. exactly-once: case 1 with --exactly-once; done when the group's committed offsets (committed in each
   transaction) cover the whole input: predictions are visible to read_committed readers then.
4. latency at fixed rates (--rates): a producer process sends events at R/s (each carries `ts`, its
   creation time in ms) to a running serve; a consumer in this process reads the predictions as they
   arrive and records arrival time - ts. p50/p99/max over the steady part (the first 2 s dropped).
5. restore: a changelog holding --restore-streams stream states is written; serve's own logged restore
   duration and its start -> ready time.
With --profile CLIENT:single|chunks, that case runs once more with serve under cProfile, and the script
prints where serve's time went, per package.

The model is the Q&A architecture (LSTM(32) -> LSTM(8) -> Dense(2), 5 features) with random weights.
The machine's cores are shared by the broker, serve, this script and its producer, and other work: the
load average is printed at the start and the end.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python benchmarks/bench_kafka.py [--quick] [--rounds 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import qa_step_model  # noqa: E402  (same Q&A-shaped model as the engine benchmark)
from kafka_bench_support import (PEER_VENV, Deployment, events, latency, peer_python, precompile,  # noqa: E402
                                 profile_summary, restore, throughput)

CLIENTS = ("kafka-python", "confluent")


def _have_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{max(values):,.0f} best, {statistics.median(values):,.0f} median of {len(values)}"


def _run_throughput(args, model_dir, work, runners: dict, chunk: int, label: str, extra=(), eos=False) -> dict:
    """Each runner over the same input, in alternating rounds; returns {runner: [results]}."""
    steps = args.steps if chunk == 1 else args.chunk_steps
    msgs = events(args.streams, steps, chunk)
    inputs = Deployment(args.bootstrap, args.partitions, "in")
    results: dict[str, list[dict]] = {name: [] for name in runners}
    try:
        inputs.produce(msgs)
        for r in range(args.rounds):
            for name, make_cmd in runners.items():
                res = throughput(args, model_dir, work, inputs, len(msgs), chunk, make_cmd, extra, eos=eos)
                results[name].append(res)
                print(f"  [{label}] round {r + 1} {name}: {res['from_start_per_s']:,.0f} /s from process start "
                      f"({res['from_ready_per_s']:,.0f} /s from ready; start -> ready {res['start_to_ready_s']:.2f} s)",
                      flush=True)
    finally:
        inputs.delete()
    return results


def _print_throughput(title: str, unit: str, n: int, results: dict) -> None:
    print(f"{title} ({n:,} {unit}):")
    for name, rs in results.items():
        start = [r["from_start_per_s"] for r in rs]
        ready = [r["from_ready_per_s"] for r in rs]
        print(f"  {name:<14} {_summary(start)} {unit}/s from process start; {_summary(ready)} {unit}/s from ready")


def _ratio(results: dict, a: str, b: str) -> str:
    if a not in results or b not in results:
        return "n/a"
    return f"{max(r['from_start_per_s'] for r in results[a]) / max(r['from_start_per_s'] for r in results[b]):.2f}x"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--steps", type=int, default=300, help="single-step case: steps per stream (300k events)")
    p.add_argument("--chunk-steps", type=int, default=1000, help="chunk case: steps per stream (10 per message)")
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--rates", default="2000,5000", help="latency case: events/s, comma-separated")
    p.add_argument("--latency-seconds", type=float, default=12.0)
    p.add_argument("--producer-linger-ms", type=float, default=1.0,
                   help="latency case: the load generator's linger.ms (its batching delay is part of the figure)")
    p.add_argument("--restore-streams", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per throughput figure")
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--no-peer", action="store_true", help="skip the Quix Streams peer")
    p.add_argument("--quick", action="store_true", help="a tenth of the work, one round (smoke run)")
    p.add_argument("--only", choices=("single", "chunks", "eos", "latency", "restore"), action="append")
    p.add_argument("--profile", metavar="CLIENT:CASE", help="e.g. confluent:single; cProfile summary of serve")
    p.add_argument("--serve-flag", action="append", default=[], metavar="FLAG",
                   help="extra `streamer serve` flag (repeat; e.g. --serve-flag=--linger-ms=20)")
    args = p.parse_args()
    if args.quick:
        args.steps, args.chunk_steps, args.latency_seconds, args.restore_streams, args.rounds = 30, 100, 5.0, 10_000, 1
    clients = [c for c in args.clients.split(",") if c != "confluent" or _have_confluent()]
    cases = args.only or ["single", "chunks", "eos", "latency", "restore"]
    model = qa_step_model()
    precompile()
    print(f"bench_kafka: broker {args.bootstrap}, {args.partitions} partitions, model {model!r}; clients "
          f"{', '.join(clients)}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        model.save(model_dir)
        serve_cmd = {c: _serve_cmd(c, args.serve_flag) for c in clients}
        peer = None if args.no_peer else peer_python()
        if "single" in cases:
            runners = dict(serve_cmd)
            if peer is not None:
                runners["quix-streams"] = _peer_cmd(peer)
            res = _run_throughput(args, model_dir, work, runners, 1, "single")
            _print_throughput("single-step events", "events", args.streams * args.steps, res)
            print(f"  confluent / kafka-python: {_ratio(res, 'confluent', 'kafka-python')}; confluent / quix-streams: "
                  f"{_ratio(res, 'confluent', 'quix-streams')} (from process start)", flush=True)
        if "chunks" in cases:
            res = _run_throughput(args, model_dir, work, serve_cmd, args.chunk, "chunks")
            for rs in res.values():
                for r in rs:
                    r["from_start_per_s"] *= args.chunk
                    r["from_ready_per_s"] *= args.chunk
            _print_throughput(f"{args.chunk}-step chunks", "steps", args.streams * args.chunk_steps, res)
        if "eos" in cases:
            res = _run_throughput(args, model_dir, work, serve_cmd, 1, "exactly-once", ["--exactly-once"], eos=True)
            _print_throughput("exactly-once, single-step events", "events", args.streams * args.steps, res)
        if "latency" in cases:
            for rate in [float(x) for x in args.rates.split(",")]:
                for name, cmd in serve_cmd.items():
                    r = latency(args, model_dir, work, cmd, rate)
                    print(f"latency at {rate:,.0f} events/s, {name}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                          f"max {r['max_ms']:.0f} ms ({r['received']:,}/{r['expected']:,} predictions; event ts -> "
                          f"prediction at a consumer); ts -> sent by serve p50 {r['sent_p50_ms']:.1f} ms, p99 {r['sent_p99_ms']:.1f} ms",
                          flush=True)
        if "restore" in cases:
            for name, cmd in serve_cmd.items():
                r = restore(args, model, model_dir, work, cmd)
                print(f"restore, {name}: {r['streams']:,} streams ({r['record_bytes']} B records) restored in "
                      f"{r['restore_s']:.2f} s; serve start -> ready {r['start_to_ready_s']:.2f} s", flush=True)
        if args.profile:
            client, case = args.profile.split(":")
            prof = work / "serve.prof"
            one = argparse.Namespace(**{**vars(args), "rounds": 1})
            chunk = 1 if case == "single" else args.chunk
            res = _run_throughput(one, model_dir, work, {client: _serve_cmd(client, args.serve_flag, prof)}, chunk,
                                  "profile")
            print(f"profile ({client} {case} under cProfile: {res[client][0]['from_ready_per_s']:,.0f} messages/s "
                  "with the profiler's overhead); serve's own time by package:", flush=True)
            print(profile_summary(prof))
            import pstats

            pstats.Stats(str(prof)).sort_stats("tottime").print_stats(20)
            import shutil

            shutil.copy(prof, Path(tempfile.gettempdir()) / f"serve-{client}-{case}.prof")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def _serve_cmd(client: str, flags: list[str], profile: Path | None = None):
    def make(model_dir, d) -> list[str]:
        cmd = [sys.executable]
        if profile is not None:
            cmd += ["-m", "cProfile", "-o", str(profile)]
        return cmd + ["-m", "streamer", "serve", "--model", str(model_dir), *d.serve_args(), "--metrics-port", "0",
                      "--kafka-client", client, "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000",
                      *flags]
    make.ready_url = True
    return make


def _peer_cmd(python: str):
    def make(model_dir, d) -> list[str]:
        return [python, str(REPO / "benchmarks" / "quix_peer.py"), "--bootstrap", d.bootstrap, "--model",
                str(model_dir), "--input", d.input, "--output", d.output, "--group", d.group]
    make.ready_url = False
    return make


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--make-peer-venv":
        print(peer_python(create=True) or f"could not create {PEER_VENV}")
        raise SystemExit(0)
    raise SystemExit(main())
