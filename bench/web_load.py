"""Status page load time in headless Chromium: the page of a 1000-device site against the 8-device one, same run.

For each fleet size (8 and 1000 devices by default) this script starts, as bench/gateway_rss.py does,
  * the simulated devices in their own process (`python -m sim_devices.cli`, i.e. `vpp-sim`),
  * the agent as deployed (`python -m agent.cli run`) in dispatch mode (so the plan chart has a plan: at 1000
    devices an aggregated one) with the shipped `[web]` table on a free port, on bench/gateway_rss.py's configs (the
    shipped config.toml at 8 devices, bench/soak.py's large site above),
waits until the page's /api/status shows the optimiser's first outcome (a plan, or a re-plan that failed: the table
says which, since without a plan the page draws "no plan yet" instead of the plan chart), then loads the page
`--loads` times in one headless Chromium (Debian's `chromium` + `chromium-driver`, through selenium;
`Cache-Control: no-store`, so every load fetches everything).

The figure is the page's own `firstRenderMs` (agent/web/page.py): milliseconds from navigation start until the first
status, the asset table and the plan chart are on screen, read from the browser (wall clock, no virtual time). Also
printed: the navigation's load event, the bytes of one /api/status answer, the server's snapshot build time (the
agent's own figure, in the status) and the median of 50 sequential GET /api/status from this process. Baselines in
the same run: the 8-device page, and an empty page (`about:blank`, the browser's floor for a navigation).

Usage: python bench/web_load.py [--devices 8 1000] [--loads 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchkit import start_vpp_sim, stop_processes  # noqa: E402
from gateway_rss import SHIPPED_PORTS, UNITS_PER_GATEWAY, configs  # noqa: E402

from sim_devices.ports import free_port_block  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1280,1800"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/status", timeout=10) as response:
        return json.loads(response.read())


def load_page(driver: Any, url: str) -> dict[str, float]:
    """One navigation; waits (polling the DOM) for the page's first full render."""
    driver.get(url)
    deadline = time.monotonic() + 60
    while (first := driver.execute_script("return document.body.dataset.firstRenderMs")) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: the page never finished its first render")
        time.sleep(0.02)
    timing = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "const s = performance.getEntriesByType('resource').find(r => r.name.includes('api/status'));"
        "return [n.loadEventEnd, s ? s.encodedBodySize : 0];"
    )
    return {"first_render_ms": float(first), "load_event_ms": float(timing[0]), "status_bytes": float(timing[1])}


def blank_ms(driver: Any, loads: int) -> float:
    times = []
    for _ in range(loads):
        t0 = time.perf_counter()
        driver.get("about:blank")
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def run_site(devices: int, loads: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vpp-webload-"))
    processes: list[asyncio.subprocess.Process] = []
    try:
        ports = SHIPPED_PORTS if devices == 8 else devices // UNITS_PER_GATEWAY + 4
        first = free_port_block(ports + 1)
        web_port = first + ports
        # the shipped config's [web] table, on a free port
        agent_text, sim_text, _ = configs(devices, "dispatch", first, work / "state.sqlite3", 60.0, web_port)
        (work / "agent.toml").write_text(agent_text)
        sim = await start_vpp_sim(sim_text, work)
        processes.append(sim)
        assert sim.stderr is not None
        drain = asyncio.create_task(_drain(sim.stderr))
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(work / "agent.toml"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd=work,
        )  # fmt: skip
        processes.append(agent)
        url = f"http://127.0.0.1:{web_port}/"
        deadline = time.monotonic() + 600
        while True:  # the page answers and shows the first solve's outcome
            try:
                plan = (await asyncio.to_thread(status, url))["summary"]["plan"]
                if plan.get("start") or plan["failures_in_a_row"]:
                    break
            except OSError:
                pass
            if agent.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent (exit {agent.returncode}): no solve ended, seen on {url}")
            await asyncio.sleep(0.5)
        driver = await asyncio.to_thread(browser, work / "chromium")
        try:
            await asyncio.to_thread(load_page, driver, url)  # warm-up: the browser's own first-use costs
            runs = [await asyncio.to_thread(load_page, driver, url) for _ in range(loads)]
            blank = await asyncio.to_thread(blank_ms, driver, loads)
        finally:
            await asyncio.to_thread(driver.quit)
        api = []
        for _ in range(50):
            t0 = time.perf_counter()
            summary = (await asyncio.to_thread(status, url))["summary"]
            api.append((time.perf_counter() - t0) * 1000)
        drain.cancel()
        return {
            "devices": devices,
            "assets": summary["envelope"]["assets"],
            "plan": (
                f"{summary['plan']['assets']} assets, {summary['plan']['method']}"
                if summary["plan"].get("start")
                else f"none ({summary['plan']['last_failure']})"
            ),
            "first_render_ms": statistics.median(r["first_render_ms"] for r in runs),
            "first_render_max_ms": max(r["first_render_ms"] for r in runs),
            "load_event_ms": statistics.median(r["load_event_ms"] for r in runs),
            "status_kb": statistics.median(r["status_bytes"] for r in runs) / 1024,
            "api_ms": statistics.median(api),
            "snapshot": summary["health"]["snapshot_ms"],
            "blank_ms": blank,
            "refresh_s": summary["site"]["refresh_s"],
        }
    finally:
        await stop_processes(*reversed(processes))
        shutil.rmtree(work, ignore_errors=True)


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def report(rows: list[dict[str, Any]], loads: int) -> None:
    print(f"\nstatus page in headless Chromium ({loads} loads each, after one warm-up; agent and vpp-sim in their "
          f"own processes, dispatch mode, refresh_s {rows[0]['refresh_s']:g})")  # fmt: skip
    print("| devices | assets | plan | first render (median / max) | load event | /api/status | GET /api/status "
          "| snapshot build | about:blank |")  # fmt: skip
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['devices']} | {r['assets']} | {r['plan']} | "
              f"{r['first_render_ms']:.0f} / {r['first_render_max_ms']:.0f} ms | {r['load_event_ms']:.0f} ms | "
              f"{r['status_kb']:.1f} kB | {r['api_ms']:.1f} ms | {r['snapshot']} | "
              f"{r['blank_ms']:.0f} ms |")  # fmt: skip
    base = next((r for r in rows if r["devices"] == min(x["devices"] for x in rows)), None)
    if base is not None:
        for r in rows:
            if r is not base:
                print(f"\n{r['devices']} devices vs {base['devices']}: first render x"
                      f"{r['first_render_ms'] / base['first_render_ms']:.2f}, GET /api/status x"
                      f"{r['api_ms'] / base['api_ms']:.2f}; over an empty page's navigation x"
                      f"{r['first_render_ms'] / max(r['blank_ms'], 0.1):.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[8, 1000])
    parser.add_argument("--loads", type=int, default=10)
    args = parser.parse_args()
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            sys.exit(f"{path} missing: apt-get install -y chromium chromium-driver")
    rows = [asyncio.run(run_site(devices, args.loads)) for devices in args.devices]
    report(rows, args.loads)


if __name__ == "__main__":
    main()
