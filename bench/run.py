"""`make bench`: every server mode under the same load, three times over, into bench/results.json.

Each measurement starts a fresh server on a free loopback port and drives it with
toolkit/loadgen.py (toolkit/bench.py says how). The rounds are interleaved (every mode once, then
again) so that noise from the rest of the machine spreads over all the modes, the reference
included. Two attacks (a flood, a client that never reads) are measured on steps 03 and 04 with
their defence on and off.

Then steps 08 and 09 with signed-in pages, each beside the reference in the same
run: step 08's `python app.py` beside the reference on its own, step 09's whole stack (nginx with
TLS, two app servers, Redis) beside the reference behind the same nginx. One round: a run of
10,000 pages takes minutes. Last, the jobs: step 09's in its web servers beside step 10's in two
Celery workers (jobs a second, and the delay from a step's record to the page's stream).
notebooks/bench.ipynb turns the file into bench/results.md.

    python bench/run.py              # 10, 100 and 500 clients, 3 rounds; pages up to 10,000
    python bench/run.py --quick      # 10 and 50 clients, 1 round; 200 pages (about two minutes)
"""

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

from toolkit.bench import (
    BENCH,
    FLOOD,
    FROZEN,
    JOB_MODES,
    JOB_PLANS,
    MODES,
    PAGE_MODES,
    PAGE_PLANS,
    PLANS,
    experiments,
    measure,
    measure_jobs,
    measure_pages,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 and 50 clients, one round")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    parser.add_argument("--pages-only", action="store_true", help="steps 08 and 09 only")
    parser.add_argument(
        "--rate-only",
        action="store_true",
        help="the messages a second of steps 08 and 09 only, put in place of those rows of --out",
    )
    parser.add_argument(
        "--jobs-only",
        action="store_true",
        help="the jobs of steps 09 and 10 only, put in place of the jobs' rows of --out",
    )
    options = parser.parse_args()
    plan = PLANS["quick" if options.quick else "full"]
    messages, rate = plan["frozen"]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))  # kept: the servers' own output
    memory = psutil.virtual_memory().total / 2**30
    run = {
        "plan": "quick" if options.quick else "full",
        **plan,
        "frozen_scenario": {**FROZEN, "messages": messages, "rate": rate},
        "flood_scenario": FLOOD,
        "machine": f"{platform.machine()}, {psutil.cpu_count()} logical cores, {memory:.0f} GiB, "
        f"Python {platform.python_version()}",
        "started": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "load_average_before": os.getloadavg()[0],
    }
    started, rows = time.monotonic(), []
    only = options.pages_only or options.jobs_only or options.rate_only
    for round_ in range(1, 0 if only else plan["rounds"] + 1):
        for mode in MODES:
            for scenario, env, arguments in experiments(mode, plan):
                print(f"round {round_}: {mode[0]}, {scenario}, {arguments}, env {env}", flush=True)
                result = measure(mode, log_dir, env, **arguments)
                rows.append({"scenario": scenario, "round": round_, **result})
    for group, plans in {} if options.jobs_only else PAGE_PLANS[run["plan"]].items():
        for scenario, *figures in plans:
            if options.rate_only and scenario != "rate":
                continue
            for mode in PAGE_MODES:
                if mode[1] == group and scenario in mode[3]:
                    print(f"{mode[0]}, {scenario}: {figures}", flush=True)
                    rows.append({"round": 1, **measure_pages(mode, log_dir, scenario, *figures)})
    for scenario, *figures in [] if options.rate_only else JOB_PLANS[run["plan"]]:
        for mode in JOB_MODES:
            print(f"{mode[0]}, jobs {scenario}: {figures}", flush=True)
            rows.append({"round": 1, **measure_jobs(mode, log_dir, scenario, *figures)})
    run.update(seconds=round(time.monotonic() - started), load_average_after=os.getloadavg()[0])
    if options.jobs_only and options.out.exists():  # the rest of the file is another run's
        earlier = json.loads(options.out.read_text())
        kept = [row for row in earlier["rows"] if not row["scenario"].startswith("jobs")]
        run, rows = {**earlier["run"], "jobs_run": run}, kept + rows
    if options.rate_only and options.out.exists():
        earlier = json.loads(options.out.read_text())
        kept = [row for row in earlier["rows"] if row["scenario"] != "rate"]
        run, rows = {**earlier["run"], "rate_run": run}, kept + rows
    options.out.write_text(json.dumps({"run": run, "rows": rows}, indent=1) + "\n")
    print(f"wrote {options.out}; the servers' output is in {log_dir}")


if __name__ == "__main__":
    main()
