"""Serving benchmark: requests/s and latency of `movierec serve` under `wrk`.

For each catalogue (MovieLens-100K, and a synthetic 87,000-movie catalogue) the script builds a
SQLite store with the project's own commands (`movierec db upgrade`, `movierec data fetch` +
`import` or `movierec data synth`, `movierec train`), starts `movierec serve --no-worker`
(one uvicorn worker) and measures with `wrk`, in the same run and against the same server:

1. `GET /v1/ping` (a constant small JSON): the HTTP stack's ceiling;
2. `GET /v1/users/{random id}/recommendations?n=10` at full load (ids drawn in a Lua script from
   the users who have ratings);
3. the same at half the measured maximum rate, paced by wrk's Lua ``delay()`` hook (a
   closed-loop pacing: wrk2 is not packaged here; the delay is corrected once for the
   latency measured in a first paced run, see ``paced_run``), reporting p99.

Results go to ``<dir>/serve-results.json`` and a Markdown table on stdout.

    python bench/bench_serve.py --dir var/bench/serve --duration 10 --connections 8

``--trees LABEL=DIR,...`` serves from source trees of other revisions (e.g. unpacked with ``git
archive REV | tar -x -C DIR``), one after the other against the same store and model, so that the
effect of each change is measured side by side in one run on the same machine state. ``--configs
LABEL:VAR=VALUE+VAR=VALUE,...`` does the same for server settings (environment variables); the
default, ``computed:MOVIEREC_RESULT_MEMO_SIZE=0,default:``, measures every answer computed (the
result memo off) and the default server, whose memo answers the requests for users asked before.
Every server is warmed up first: each user asked once, then 2 s of random users; with the memo on
and room for every user, the measured runs are then its steady state for returning users (each run
reports the memo's hit rate). ``--versions V1,V2`` serves each of those registered model versions
in turn (e.g. one trained with ``movierec train --preset fast --no-activate`` into the benchmark's
store); ``--workers N`` starts N uvicorn worker processes (the ping endpoint gets the same server).
``--rounds R`` repeats every (tree, configuration) R times, interleaved, and keeps every run.

Besides wrk's figures, each run records the server's CPU time per request (user + system of
the server process and its workers, from /proc, over the wrk run): on a shared machine it moves
far less than requests/s, which depends on how much of the CPUs the server got.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ports import free_port  # run as a script: bench/ is on sys.path

LUA_DONE = """
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p95_ms": %.3f, '
    .. '"p99_ms": %.3f, "non_2xx": %d, "socket_errors": %d}\\n',
    summary.requests, secs, summary.requests / secs, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000, summary.errors.status, errors))
end
"""


@dataclass
class Scenario:
    """One catalogue to serve and how to build its store."""

    name: str
    folder: Path
    setup: list[list[str]]
    epochs: int
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.folder.resolve() / 'store.db'}"  # servers may run elsewhere

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "MOVIEREC_DATABASE_URL": self.url,
                "MOVIEREC_MODEL_DIR": str(self.folder.resolve() / "models"),
                "MOVIEREC_DATA_DIR": str(self.folder.resolve() / "data"),
                "MOVIEREC_LOG_LEVEL": "WARNING",
                "MOVIEREC_DEVICE": "cpu",
            }
        )
        return env


SERVE_FROM_TREE = "import sys; from app.cli import main; sys.exit(main())"


def run(cmd: list[str], env: dict[str, str], tree: Path | None = None) -> None:
    """A `movierec` command of the installed package, or of the source tree ``tree``."""
    print("$", " ".join(cmd), f"(tree {tree})" if tree else "", flush=True)
    if tree is None:
        subprocess.run(cmd, env=env, check=True)
        return
    assert cmd[0] == "movierec"
    subprocess.run(
        [sys.executable, "-c", SERVE_FROM_TREE, *cmd[1:]],
        env={**env, "PYTHONPATH": str(tree.resolve())},
        cwd=tree.resolve(),
        check=True,
    )


def train(scenario: Scenario, *, only_if_no_model: bool, tree: Path | None = None) -> None:
    """Train with the code of ``tree`` (the one that will serve), or the installed package."""
    cmd = ["movierec", "train", "--epochs", str(scenario.epochs), "--device", "cpu"]
    run([*cmd, "--if-no-model"] if only_if_no_model else cmd, scenario.env(), tree)


def build_store(scenario: Scenario, rebuild: bool, tree: Path | None = None) -> None:
    """Store + trained, active model; reused when present unless ``rebuild``."""
    store = scenario.folder / "store.db"
    if rebuild and scenario.folder.exists():
        shutil.rmtree(scenario.folder)
    scenario.folder.mkdir(parents=True, exist_ok=True)
    env = scenario.env()
    fresh = not store.exists()
    run(["movierec", "db", "upgrade"], env)  # idempotent: an older store gets new revisions
    if fresh:
        for cmd in scenario.setup:
            run(cmd, env)
    train(scenario, only_if_no_model=True, tree=tree)


def activate(scenario: Scenario, version: int) -> int | None:
    """Make ``version`` the active model of the scenario's store (the registry's own step);
    returns the version that was active before (None: none)."""
    from sqlalchemy.orm import Session

    from app.db.session import make_engine
    from app.services import registry

    engine = make_engine(scenario.url)
    try:
        with Session(engine) as session, session.begin():
            before = registry.active_version(session)
            previous = None if before is None else int(before.id)
            registry.activate(session, version)
    finally:
        engine.dispose()
    print(f"model version {version} activated", flush=True)
    return previous


def user_ids(scenario: Scenario, limit: int = 5000) -> list[int]:
    with sqlite3.connect(scenario.folder / "store.db") as conn:
        rows = conn.execute(
            "SELECT DISTINCT user_id FROM ratings ORDER BY user_id LIMIT ?", (limit,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def start_server(
    scenario: Scenario,
    port: int,
    tree: Path | None = None,
    *,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`movierec serve` of the installed package, or of the source tree ``tree``."""
    log = (scenario.folder / "serve.log").open("wb")
    env = {**scenario.env(), **(extra_env or {})}
    command = ["movierec"]
    if tree is not None:
        command = [sys.executable, "-c", SERVE_FROM_TREE]
        env["PYTHONPATH"] = str(tree.resolve())
    process = subprocess.Popen(
        [
            *command,
            "serve",
            "--no-worker",
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=tree.resolve() if tree is not None else None,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited; see {scenario.folder / 'serve.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return process
        except urllib.error.HTTPError as exc:  # 503: not ready yet, or the model is refused
            failure = json.load(exc).get("model", {}).get("last_failure")
            if failure is not None:
                stop_server(process)
                raise ModelRefused(failure["error"]) from exc
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError("server not ready within 300 s")


class ModelRefused(RuntimeError):
    """The active checkpoint does not load (e.g. written by an older model version)."""


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def write_lua(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.lua"
    path.write_text(body + LUA_DONE)
    return path


def recommendations_lua(ids: list[int], delay_ms: float | None) -> str:
    lines = [
        "math.randomseed(12345)",
        "local ids = {" + ",".join(map(str, ids)) + "}",
        "request = function()",
        '  return wrk.format("GET", "/v1/users/" .. ids[math.random(#ids)] '
        '.. "/recommendations?n=10")',
        "end",
    ]
    if delay_ms is not None:
        lines += ["delay = function()", f"  return {delay_ms:.3f}", "end"]
    return "\n".join(lines)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return total


def wrk(
    url: str, script: Path, duration: int, connections: int, server_pid: int | None = None
) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url]
    cpu_before = tree_cpu_seconds(server_pid) if server_pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    if server_pid and result["requests"]:
        cpu = tree_cpu_seconds(server_pid) - cpu_before
        result["server_cpu_us_per_request"] = round(cpu * 1e6 / result["requests"], 1)
        result["server_cpu_cores"] = round(cpu / result["seconds"], 2)
    return result


def server_counters(base: str) -> dict[str, float]:
    """Counters of the server's metrics: forward passes and requests scored (``passes``,
    ``scored``), result memo hits and misses (``hit``, ``miss``)."""
    with urllib.request.urlopen(f"{base}/metrics") as r:
        text = r.read().decode()
    names = {
        "movierec_forward_batch_size_count ": "passes",
        "movierec_forward_batch_size_sum ": "scored",
        'movierec_result_memo_lookups_total{result="hit"} ': "hit",
        'movierec_result_memo_lookups_total{result="miss"} ': "miss",
    }
    values = dict.fromkeys(names.values(), 0.0)
    for row in text.splitlines():
        for prefix, key in names.items():
            if row.startswith(prefix):
                values[key] = float(row.split()[-1])
    return values


def ask_every_user(base: str, ids: list[int], connections: int) -> float:
    """One recommendation request per user, ``connections`` at a time: the warm-up after
    which a server with a result memo holds every user's answer (when it has room for all);
    returns the seconds it took."""

    def ask(user: int) -> None:
        url = f"{base}/v1/users/{user}/recommendations?n=10"
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=connections) as pool:
        list(pool.map(ask, ids))
    return time.perf_counter() - start


def paced_run(
    folder: Path,
    base: str,
    ids: list[int],
    target: float,
    duration: int,
    connections: int,
    pid: int,
) -> dict[str, Any]:
    """Recommendations at about ``target`` requests/s, paced by wrk's ``delay()``.

    The delay runs between a response and the next request of a connection, so each
    connection sends one request per ``delay + latency``. A first run with ``delay`` set to the
    whole period measures the latency; a second run subtracts it (and is the one reported).
    """
    period = connections * 1000.0 / target  # ms between two requests of one connection
    delay = period
    result: dict[str, Any] = {}
    for attempt in range(2):
        script = write_lua(folder, "paced", recommendations_lua(ids, delay))
        result = wrk(base, script, duration, connections, pid)
        result.update(target_rps=round(target, 1), delay_ms=round(delay, 3))
        if attempt or result["rps"] >= 0.95 * target or not result["rps"]:
            break
        latency = connections * 1000.0 / result["rps"] - delay
        delay = max(period - latency, 0.0)
    return result


def measure(
    scenario: Scenario,
    duration: int,
    connections: int,
    label: str,
    tree: Path | None,
    *,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> None:
    """ping, full load and half rate against one server; results under ``label``."""
    port = free_port()
    print(f"-- {scenario.name}: {label}", flush=True)
    try:
        server = start_server(scenario, port, tree, workers=workers, extra_env=extra_env)
    except ModelRefused as exc:
        print(f"the active model does not load ({exc}); training a new one", flush=True)
        train(scenario, only_if_no_model=False, tree=tree)
        server = start_server(scenario, port, tree, workers=workers, extra_env=extra_env)
    base = f"http://127.0.0.1:{port}"
    pid = server.pid
    try:
        ids = user_ids(scenario)
        ping = write_lua(
            scenario.folder, "ping", 'request = function() return wrk.format("GET", "/v1/ping") end'
        )
        recs = write_lua(scenario.folder, "recs", recommendations_lua(ids, None))
        # Warm-up: every user once (a memo then holds them all), then random users.
        warm_seconds = ask_every_user(base, ids, connections)
        wrk(base, recs, 2, connections)
        results: dict[str, Any] = {
            "workers": workers,
            "env": extra_env or {},
            "warmup_seconds": round(warm_seconds, 2),
            "ping": wrk(base, ping, duration, connections, pid),
        }
        before = server_counters(base)
        results["recommendations"] = wrk(base, recs, duration, connections, pid)
        after = server_counters(base)
        if workers == 1:  # one process: its metrics are the server's
            delta = {key: after[key] - before[key] for key in after}
            if delta["passes"] > 0:
                results["mean_batch"] = round(delta["scored"] / delta["passes"], 2)
            if delta["hit"] + delta["miss"] > 0:
                results["memo_hit_rate"] = round(delta["hit"] / (delta["hit"] + delta["miss"]), 3)
        half = results["recommendations"]["rps"] / 2
        results["half_rate"] = paced_run(
            scenario.folder, base, ids, half, duration, connections, pid
        )
        results["ratio"] = round(results["recommendations"]["rps"] / results["ping"]["rps"], 3)
        cpu_ping = results["ping"].get("server_cpu_us_per_request")
        cpu_recs = results["recommendations"].get("server_cpu_us_per_request")
        if cpu_ping and cpu_recs:  # the same ratio per CPU-second of the server: less noisy
            results["cpu_ratio"] = round(cpu_ping / cpu_recs, 3)
        with urllib.request.urlopen(f"{base}/readyz") as r:
            results["model_version"] = json.load(r)["model"]["version"]
        scenario.results[label] = results
    finally:
        stop_server(server)


def markdown(scenarios: list[Scenario], duration: int, connections: int) -> str:
    rows = [
        f"wrk -t1 -c{connections} -d{duration}s; `movierec serve --no-worker --workers N`,"
        " SQLite store, CPU, torch 1 thread per process, log level WARNING. cpu µs/req: CPU"
        " time of the server's processes per request answered. ratio: recs req/s over ping"
        " req/s; cpu ratio: ping cpu µs/req over recs cpu µs/req (the ratio the server would"
        " reach with the CPU to itself; it moves far less on a shared machine).",
        "",
        "| catalogue | run | ping req/s | ping cpu µs/req | recs req/s | recs cpu µs/req "
        "| mean batch | memo hits | ratio | cpu ratio | recs p50 / p99 ms "
        "| half rate: achieved req/s | p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        for code, r in s.results.items():
            p, q, h = r["ping"], r["recommendations"], r["half_rate"]
            rows.append(
                f"| {s.name} | {code} | {p['rps']:.0f} | {p.get('server_cpu_us_per_request', '')}"
                f" | {q['rps']:.0f} | {q.get('server_cpu_us_per_request', '')}"
                f" | {r.get('mean_batch', '')} | {r.get('memo_hit_rate', '')}"
                f" | {r['ratio']:.2f} | {r.get('cpu_ratio', '')}"
                f" | {q['p50_ms']:.1f} / {q['p99_ms']:.1f}"
                f" | {h['rps']:.0f} (target {h['target_rps']:.0f})"
                f" | {h['p50_ms']:.1f} / {h['p99_ms']:.1f} |"
            )
    return "\n".join(rows)


DEFAULT_CONFIGS = "computed:MOVIEREC_RESULT_MEMO_SIZE=0,default:"


def parse_configs(value: str | None) -> list[tuple[str, dict[str, str]]]:
    """``"memo:MOVIEREC_RESULT_MEMO_SIZE=4096+X=1,plain:"`` → labelled environments; by default
    (``DEFAULT_CONFIGS``) the server with its result memo off — every answer computed — and
    with its default settings, where the memo answers repeated requests."""
    if not value:
        value = DEFAULT_CONFIGS
    configs: list[tuple[str, dict[str, str]]] = []
    for part in value.split(","):
        label, sep, assignments = part.partition(":")
        if not sep or not label:
            raise SystemExit(f"--configs: {part!r} is not LABEL:VAR=VALUE+VAR=VALUE")
        env: dict[str, str] = {}
        for assignment in filter(None, assignments.split("+")):
            name, eq, val = assignment.partition("=")
            if not eq or not name:
                raise SystemExit(f"--configs: {assignment!r} is not VAR=VALUE")
            env[name] = val
        configs.append((label, env))
    return configs


def parse_trees(value: str | None) -> list[tuple[str, Path | None]]:
    """``"base=DIR,new=DIR2"`` → labelled source trees; none → the installed package."""
    if not value:
        return [("installed", None)]
    trees: list[tuple[str, Path | None]] = []
    for part in value.split(","):
        label, sep, folder = part.partition("=")
        if not sep or not label or not Path(folder, "app", "cli").is_dir():
            raise SystemExit(f"--trees: {part!r} is not LABEL=DIR of a source tree with app/cli")
        trees.append((label, Path(folder)))
    return trees


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("var/bench/serve"))
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--catalogues", default="ml100k,synth87k")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (speed, not quality)")
    p.add_argument("--synth-users", type=int, default=2000)
    p.add_argument("--synth-ratings", type=int, default=200_000)
    p.add_argument(
        "--synth-movies", type=int, default=87_000, help="catalogue size of synth87k (tests: less)"
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild stores and models")
    p.add_argument("--trees", help="LABEL=DIR,...: serve from these source trees in turn")
    p.add_argument(
        "--configs", help="LABEL:VAR=VALUE+VAR=VALUE,...: server environments to serve with"
    )
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--rounds", type=int, default=1, help="repeat every run, interleaved")
    p.add_argument(
        "--activate", type=int, help="model version to activate before serving (one catalogue)"
    )
    p.add_argument(
        "--versions",
        help="V1,V2,...: serve each of these model versions in turn (activated before each run, "
        "one catalogue; e.g. models trained with another preset)",
    )
    args = p.parse_args(argv)
    trees = parse_trees(args.trees)
    configs = parse_configs(args.configs)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    known = {
        "ml100k": Scenario(
            "MovieLens-100K (1,682 movies)",
            args.dir / "ml100k",
            [
                [
                    "movierec",
                    "data",
                    "fetch",
                    "movielens-100k",
                    "--dest",
                    str(args.dir / "ml100k" / "data" / "ml-100k"),
                ],
                [
                    "movierec",
                    "data",
                    "import",
                    str(args.dir / "ml100k" / "data" / "ml-100k"),
                    "--no-progress",
                ],
            ],
            args.epochs,
        ),
        "synth87k": Scenario(
            f"synthetic ({args.synth_movies:,} movies)",
            args.dir / "synth87k",
            [
                [
                    "movierec",
                    "data",
                    "synth",
                    "--users",
                    str(args.synth_users),
                    "--movies",
                    str(args.synth_movies),
                    "--ratings",
                    str(args.synth_ratings),
                    "--seed",
                    "0",
                    "--no-progress",
                ]
            ],
            1,
        ),
    }
    scenarios = [known[name] for name in args.catalogues.split(",")]
    versions: list[int | None] = [None]
    if args.versions:
        versions = [int(v) for v in args.versions.split(",")]
        if len(scenarios) != 1:
            p.error("--versions needs exactly one catalogue")
    for scenario in scenarios:
        build_store(scenario, args.rebuild, trees[-1][1])  # a model the newest code reads
        if args.activate is not None:
            activate(scenario, args.activate)
        restore = None
        for round_ in range(1, args.rounds + 1):
            for version in versions:
                if version is not None:
                    previous = activate(scenario, version)
                    restore = previous if restore is None else restore
                for tree_label, tree in trees:
                    for config_label, extra_env in configs:
                        parts = (f"v{version}" if version else "", tree_label, config_label)
                        label = "+".join(x for x in parts if x)
                        if args.workers != 1:
                            label += f" ({args.workers} workers)"
                        if args.rounds > 1:
                            label += f" #{round_}"
                        measure(
                            scenario,
                            args.duration,
                            args.connections,
                            label,
                            tree,
                            workers=args.workers,
                            extra_env=extra_env,
                        )
        if restore is not None:  # --versions: the store's active model as it was
            activate(scenario, restore)
        print(json.dumps(scenario.results, indent=2), flush=True)
    out = args.dir / "serve-results.json"
    out.write_text(json.dumps({s.name: asdict(s)["results"] for s in scenarios}, indent=2))
    print(markdown(scenarios, args.duration, args.connections))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
