"""The status page of a running agent on a simulated site, loaded in headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by selenium): the assertions are on what the browser rendered, values that move as the
site runs (cycles, a device taken offline, an up-DR event from active to its M&V result, the plan and its chart),
not on a status code. Also over real sockets: the login (401 without, 200 with), TLS, the default loopback bind, a
taken port, and `vpp-agent events --plot` on the state file the run left behind.

Without Chromium, chromedriver or selenium these browser tests skip, except in CI (`CI=true`), where they fail
with what to install.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sitekit import ROOT, TWO_BATTERY_ASSETS, TWO_BATTERY_DEVICES, eventually, free_port_block
from structlog.testing import capture_logs

from agent import money
from agent.app import AgentApp
from agent.cli import main
from agent.config import parse_config
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD_ENV = "VPP_TEST_WEB_PASSWORD"

SITE = """
[agent]
poll_period_s = 0.1
poll_timeout_s = 0.05
lease_timeout_s = 2.0
state_file = "{state}"
[site]
meter = "meter"
[control]
mode = "site_target"
site_target_w = 5000.0
""" + TWO_BATTERY_ASSETS + """[web]
enabled = true
port = {web_port}
refresh_s = 0.5
{web}
[simulation]
tick_s = 0.02
base_load_w = 5000.0
""" + TWO_BATTERY_DEVICES

DISPATCH = """
[control]
mode = "dispatch"
[dispatch]
step_s = 60
horizon_steps = 6
base_load_w = 0.0
price_profile_per_kwh = [16, 15, 15, 15, 15, 16, 18, 20, 21, 17, 12, 10, 8, 8, 10, 12, 18, 26, 32, 34, 30, 25, 20, 18]
"""


def site_text(tmp_path: Path, web: str = "", dispatch: bool = False) -> str:
    """The site above on free ports (Modbus on the first, the page on the second), its state in `tmp_path`."""
    port = free_port_block(2)
    text = (
        SITE.replace("{port}", str(port)).replace("{web_port}", str(port + 1)).replace("{web}", web)
        .replace("{state}", str(tmp_path / "state.db"))
    )  # fmt: skip
    if dispatch:
        text = text.replace('[control]\nmode = "site_target"\nsite_target_w = 5000.0\n', DISPATCH)
    return text


@contextlib.asynccontextmanager
async def agent(text: str) -> AsyncIterator[tuple[SimSite, AgentApp]]:
    """The simulated site with the whole agent running (page included), polled once."""
    config = parse_config(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(config, site.clock.now)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            await eventually(lambda: app.first_cycle.is_set(), what="first cycle")
            yield site, app
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def page_url(text: str, scheme: str = "http") -> str:
    return f"{scheme}://{HOST}:{parse_config(text).web.port}/"


# -- the browser ----------------------------------------------------------------------------------------------------


class Browser:
    """Headless Chromium through chromedriver. selenium blocks, and the agent under test runs on this test's event
    loop, so every call goes to a thread: the site and the agent keep running while the browser works."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def get(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def js(self, script: str, *args: object) -> Any:
        return await asyncio.to_thread(self.driver.execute_script, script, *args)

    async def text(self, css: str) -> str | None:
        """The rendered text of the first element matching `css` (None: no such element yet)."""
        return await self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)

    async def wait_text(self, css: str, check: Callable[[str], bool], what: str, timeout_s: float = 20.0) -> str:
        """Wait until the element's rendered text passes `check`; returns that text."""
        seen: list[str | None] = [None]

        async def ok() -> bool:
            seen[0] = await self.text(css)
            return seen[0] is not None and check(seen[0])

        try:
            await eventually(ok, timeout_s=timeout_s, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {css!r} last showed {seen[0]!r}") from None
        return str(seen[0])

    async def click(self, css: str) -> None:
        await self.js("document.querySelector(arguments[0]).click();", css)


def _browser_missing() -> str | None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if not missing:
        return None
    return (f"headless Chromium tests need {', '.join(missing)}: apt-get install -y chromium chromium-driver, "
            "and pip install -e '.[test]' (selenium)")  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    why = _browser_missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="vpp-web-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1280,1800", "--ignore-certificate-errors"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- the page in the browser ----------------------------------------------------------------------------------------


async def test_page_follows_the_running_site(browser: Browser, tmp_path: Path) -> None:
    text = site_text(tmp_path)
    async with agent(text) as (site, app):
        await browser.get(page_url(text))
        first = int(await browser.wait_text("#cycles", str.isdigit, "cycles rendered"))
        # the page refreshes by itself: the rendered count moves on without a reload
        await browser.wait_text("#cycles", lambda t: t.isdigit() and int(t) > first + 2, "cycles rising on the page")
        meter = site.devices["meter"]
        await eventually(lambda: abs(meter.power_w - 5000) < 300, what="site at its 5 kW target")
        await browser.wait_text("#site-meter", lambda t: t in ("+4.9 kW", "+5.0 kW", "+5.1 kW"), "meter at 5 kW")
        assert await browser.text('tr[data-asset="bess1"] td:nth-child(3)') == "available"
        assert await browser.text("#state") == "online"

        # an up-DR event: active with its live delivery, then completed with the M&V result and chart
        now = site.clock.now()
        event = json.dumps({"id": "dr1", "start": str(now + dt.timedelta(seconds=1)),
                            "end": str(now + dt.timedelta(seconds=5)), "requested_increase_w": 20000,
                            "price_per_kwh": 5}).encode()  # fmt: skip
        assert (await app.ingest.receive("up_dr", event)).status == "accepted"
        row = 'tr[data-event="dr1"]'
        await browser.wait_text(f"{row} td:nth-child(3)", lambda t: t == "active", "event shown active")
        assert "vs baseline" in str(await browser.text(f"{row} td:nth-child(7)"))
        assert "JPY/kWh earned" in str(await browser.text(f"{row} td:nth-child(9)"))
        await browser.wait_text(f"{row} td:nth-child(3)", lambda t: t == "completed", "event shown completed")
        report = app.events.events["dr1"].report
        assert report is not None and report["delivered_fraction"] > 0.3
        result = await browser.wait_text(f"{row} td:nth-child(8)", lambda t: "delivered" in t, "M&V result shown")
        assert f"delivered {report['delivered_kwh']:.2f} kWh of {report['requested_kwh']:.2f} kWh" in result
        chart = '#event-charts div[data-event="dr1"] svg[data-chart="delivery"]'
        summary = await browser.wait_text(chart, lambda t: "delivered" in t, "delivery chart drawn")
        assert f"delivered {report['delivered_kwh']:.2f} kWh" in summary

        # a device taken offline: its row turns "out" and the envelope counts it
        site.faults("bess1").set_offline(True)
        await browser.wait_text('tr[data-asset="bess1"] td:nth-child(3)', lambda t: t == "out", "bess1 shown out")
        assert await browser.text('[data-f="envelope.out"]') == "1"
        assert await browser.js("return document.querySelector('tr[data-asset=\"bess1\"]').className") == "out"

        # the filter is applied by the server: one row, the one asked for
        await browser.js("const q = document.getElementById('q'); q.value = 'bess2';"
                         "q.dispatchEvent(new Event('input'));")  # fmt: skip
        await browser.wait_text("#pager", lambda t: "(1 matching)" in t, "filtered to one asset")
        assert await browser.js("return document.querySelectorAll('#asset-rows tr').length") == 1

    # the same event's chart from the state file the run left: `vpp-agent events --plot`
    config = tmp_path / "site.toml"
    config.write_text(text)
    out = tmp_path / "dr1.svg"
    assert main(["events", "--config", str(config), "--plot", "dr1", "--out", str(out)]) == 0
    svg = ET.parse(out).getroot()
    delivered = [float(e.get("data-delivered-kwh", "0")) for e in svg.iter() if e.get("data-delivered-kwh")]
    assert delivered and sum(delivered) == pytest.approx(report["delivered_kwh"], abs=0.01)


def test_events_plot_of_a_missing_or_award_event_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.store import Store

    store = Store(tmp_path / "state.db")
    award = {"signal": {"id": "a1", "product": "FCR", "block_start": "2026-01-05T00:00:00+00:00",
                        "block_end": "2026-01-05T01:00:00+00:00", "up_w": 1000.0, "down_w": 1000.0},
             "report": {"samples": 10, "score": 0.9}}  # fmt: skip
    asyncio.run(store.finish_event("a1", "as_award", "completed", award, None))
    store.close()
    config = tmp_path / "site.toml"
    config.write_text(f'[agent]\nstate_file = "{tmp_path / "state.db"}"\n')
    for event_id, words in (("nope", "no event 'nope' in"), ("a1", "is an ancillary-service award")):
        capsys.readouterr()
        assert main(["events", "--config", str(config), "--plot", event_id, "--out", str(tmp_path / "x.svg")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.svg").exists()


async def test_plan_against_price_and_an_assets_schedule(browser: Browser, tmp_path: Path) -> None:
    text = site_text(tmp_path, dispatch=True)
    async with agent(text) as (site, app):
        await browser.get(page_url(text))
        line = await browser.wait_text("#plan-line", lambda t: "covers now" in t, "plan shown", timeout_s=60)
        plan = app.dispatcher.plan if app.dispatcher else None
        assert plan is not None
        assert f"{plan.power_w.shape[1]} steps" in line
        assert money.flow(plan.net_cost, "JPY", plan.step_s * plan.power_w.shape[1] / 3600) in line
        chart = "#plan-chart svg[data-chart='plan']"
        await browser.wait_text(chart, lambda t: "plan: 2 assets" in t, "plan chart drawn")
        series = await browser.js(f"return [...document.querySelectorAll(\"{chart} [data-series]\")]"
                                  ".map(e => e.dataset.series)")  # fmt: skip
        assert {"batteries", "price", "SoC batteries"} <= set(series), series
        planned = await browser.text('tr[data-asset="bess1"] td:nth-child(7)')
        assert planned is not None and planned.endswith("kW"), planned
        # one asset's 24-h schedule and SoC, on a click of its id
        await browser.click('tr[data-asset="bess1"] a.asset')
        await browser.wait_text("#asset-chart svg", lambda t: "plan of bess1" in t, "asset chart drawn")
        assert await browser.js("return document.querySelectorAll('#asset-chart [data-series]').length") >= 3
        # an ancillary-service award: its row (no delivery chart: awards are scored on their response)
        now = site.clock.now()
        award = json.dumps({"id": "a1", "product": "FCR", "block_start": str(now),
                            "block_end": str(now + dt.timedelta(minutes=10)), "up_w": 5000, "down_w": 5000,
                            "capacity_price_per_kw_h": 2}).encode()  # fmt: skip
        assert (await app.ingest.receive("as_award", award)).status == "accepted"
        row = 'tr[data-event="a1"]'
        await browser.wait_text(f"{row} td:nth-child(7)", lambda t: "activation +0.00" in t, "award shown active")
        assert await browser.text(f"{row} td:nth-child(2)") == "award FCR"
        assert await browser.text(f"{row} td:nth-child(9)") == "2 JPY per kW·h of capacity earned"
        assert await browser.js("return document.querySelectorAll('#event-charts svg').length") == 0
        # the band the re-plan holds now, as the plan says it
        band = await browser.wait_text("#plan-reserve", lambda t: "up 5.0 kW, down 5.0 kW" in t, "award's band shown")
        assert band.startswith("reserve held now:") and "offered" not in band, band
        # a price-only offer: listed with its price now (no bid is published, so this line is where it shows)
        # covering the plan's current step from its start (a step takes the price its start falls in)
        offer = json.dumps({"id": "o1", "product": "FRR", "start": str(now - dt.timedelta(hours=1)),
                            "interval_s": 1800, "capacity_price_per_kw_h": [3.5] * 4,
                            "directions": "up"}).encode()  # fmt: skip
        assert (await app.ingest.receive("as_offer", offer)).status == "accepted"
        await browser.wait_text("#plan-reserve", lambda t: "FRR offered at up 3.5, down 0 JPY per kW·h this step" in t,
                                "offer shown")  # fmt: skip


# -- login, TLS, binding --------------------------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = folder / "web.crt", folder / "web.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_file, key_file


Answer = tuple[int, dict[str, str], bytes]


def fetch(url: str, auth: tuple[str, str] | None = None, cafile: Path | None = None) -> Answer:
    """(status, headers, body) of a GET; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_tls_and_login_when_configured(browser: Browser, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv(PASSWORD_ENV, "s3cret pass")
    web = f'cert_file = "{cert}"\nkey_file = "{key}"\nusername = "operator"\npassword_env = "{PASSWORD_ENV}"'
    text = site_text(tmp_path, web)
    url = page_url(text, "https")
    async with agent(text) as (_site, app):
        for path in ("", "api/status", "chart/plan", "app.js"):
            status, headers, _ = await asyncio.to_thread(fetch, url + path, None, cert)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic "), (path, status)
        status, _, _ = await asyncio.to_thread(fetch, url + "api/status", ("operator", "wrong"), cert)
        assert status == 401
        status, headers, body = await asyncio.to_thread(fetch, url + "api/status", ("operator", "s3cret pass"), cert)
        assert status == 200 and headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert json.loads(body)["summary"]["health"]["cycles"] >= 1
        # TLS only: plain HTTP on the same port gets no page
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            await asyncio.to_thread(fetch, url.replace("https", "http") + "api/status", ("operator", "s3cret pass"))
        # the browser with the login renders the page over TLS
        await browser.get(url.replace("https://", "https://operator:s3cret%20pass@"))
        cycles = int(await browser.wait_text("#cycles", str.isdigit, "cycles rendered over TLS with the login"))
        await browser.wait_text("#cycles", lambda t: t.isdigit() and int(t) > cycles, "cycles rising over TLS")
        assert app.health.state == "online"


def _outside_address() -> str | None:
    """One of this host's own addresses that is not loopback (None on a host without one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, it only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


async def test_binds_loopback_by_default_and_is_read_only(tmp_path: Path) -> None:
    text = site_text(tmp_path)
    port = parse_config(text).web.port
    assert "host" not in tomllib.loads(text)["web"]
    async with agent(text):
        status, headers, body = await asyncio.to_thread(fetch, page_url(text))
        assert status == 200 and headers["Content-Type"].startswith("text/html") and b"app.js" in body
        outside = _outside_address()
        if outside is not None:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((outside, port)) != 0, f"the page answers on {outside}"
        # every route is GET: anything else is refused, nothing is changed
        request = urllib.request.Request(page_url(text) + "api/status", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, request, None, 5)
        assert refused.value.code == 405
        status, _, body = await asyncio.to_thread(fetch, page_url(text) + "api/status?page=x")
        assert status == 400 and b"page='x'" in body
        status, _, _ = await asyncio.to_thread(fetch, page_url(text) + "chart/event/nothing")
        assert status == 404
        # a connection that sends garbage gets a 400 and the next request is served
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"\x16\x03\x01 nonsense\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.0 400")
        assert (await asyncio.to_thread(fetch, page_url(text) + "api/status"))[0] == 200


async def test_a_taken_port_or_bad_certificate_costs_the_page_not_the_agent(tmp_path: Path) -> None:
    text = site_text(tmp_path)
    taken = socket.socket()
    taken.bind((HOST, parse_config(text).web.port))
    taken.listen()
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    try:
        for label, variant in (("taken", text), ("bad certificate", site_text(tmp_path, f'cert_file = "{bad}"\n'
                                                                             f'key_file = "{bad}"'))):  # fmt: skip
            with capture_logs() as logs:
                async with agent(variant) as (_site, app):
                    target = app.loop.cycles + 5
                    await eventually(lambda: app.loop.cycles > target, what=f"agent cycling on ({label})")  # noqa: B023
            (line,) = [entry for entry in logs if entry["event"] == "web.unavailable"]
            assert line["log_level"] == "error", label
            assert ("in use" if label == "taken" else "web.cert_file") in line["reason"], line
    finally:
        taken.close()


def test_the_agent_without_the_page_never_imports_it() -> None:
    code = (
        "import sys, agent.app, agent.cli; "
        "print(sorted(m for m in sys.modules if m == 'microdot' or m.startswith(('microdot.', 'agent.web'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
