"""`vpp-agent` command line: check-config, run, demo, init, simulate, events, keys, sign, verify, audit.

This module is the composition root: the one place in `agent` that wires in drivers (and, for the demo, the
simulator). Everything below it sees devices only through the Driver interface.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import structlog

from agent import installed_version
from agent.audit.cli import add_parser as add_audit_parser
from agent.config import AppConfig, ConfigError, load_config
from agent.logs import configure_logging
from agent.preflight import preflight, state_file_problems
from agent.store import StoreError
from agent.trust.keys import KeyFileError, key_arguments

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from rich.progress import TaskID

    from agent.app import AgentApp

EXIT_CONFIG = 2
log = structlog.get_logger("agent.cli")


def _load_checked(path: str) -> AppConfig:
    """Load the config, every device map it names and what start-up opens (agent/preflight.py), so a mistake fails
    here with its key path, in `check-config` as in `run` and `demo`, and not at the first poll or connect. Every
    problem past the config's own validation is reported at once."""
    from agent.wiring import asset_problems

    config = load_config(path)
    least_lease_s = config.agent.min_lease_s(config.agent.poll_period_s, config.agent.poll_timeout_s)
    problems, warnings = asset_problems(config, least_lease_s)  # maps, leases, plugins: as agent/wiring.py builds
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.simulation is not None:
        from sim_devices.config import SimulationError, parse_simulation

        try:
            parse_simulation(config.simulation, "simulation")
        except SimulationError as exc:
            problems.append(str(exc))
    problems += preflight(config)
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return config


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _stop_after(stop: asyncio.Event, seconds: float | None) -> None:
    if seconds is not None:
        await _wait(stop, seconds)
        stop.set()


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `stop`; True when it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def _run(
    config: AppConfig, duration_s: float | None, signals: str | None = None, config_path: str | None = None
) -> None:
    stop = asyncio.Event()
    _install_stop(stop)
    from agent.app import AgentApp

    app = AgentApp(config, lambda: datetime.now(UTC))
    if config_path is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _on_sighup, app, config_path)

    async def feed() -> None:
        if signals is None:
            return
        await app.first_cycle.wait()  # events are checked against the fleet's envelope: poll it first
        fed = await app.feed_signals(Path(signals))
        log.info("signals.file_loaded", file=signals, signals=fed)

    await asyncio.gather(app.run(stop), _stop_after(stop, duration_s), feed())


_reloads: set[asyncio.Task[None]] = set()


def _on_sighup(app: AgentApp, path: str) -> None:
    task = asyncio.get_running_loop().create_task(_reload_trust(app, path))
    _reloads.add(task)
    task.add_done_callback(_reloads.discard)


async def _reload_trust(app: AgentApp, path: str) -> None:
    """SIGHUP: re-read the config and take its `[trust]` keys (revocations included) without a restart. A config
    that no longer loads changes nothing, is logged, and makes the agent report itself degraded until one does.
    The file and its checks are read in a thread: the control loop goes on meanwhile."""
    try:
        config = await asyncio.to_thread(_load_checked, path)
    except ConfigError as exc:
        log.error("trust.reload_failed", config=path, error=str(exc))
        app.trust_reload_failed(str(exc))
        return
    app.reload_trust(config)


async def _demo(
    config: AppConfig, duration_s: float | None, speed: float | None, log_file: Path | None, opening_event: bool
) -> None:
    import logging

    from rich.console import Console
    from rich.live import Live

    from agent.app import AgentApp
    from agent.demo import WarningTap, plan_context, send_opening_event, status_url
    from agent.dispatch.plan import Plan
    from agent.ui import Screen, render, summary
    from sim_devices.config import parse_simulation
    from sim_devices.runner import SimSite

    if config.simulation is None:
        raise ConfigError("demo needs a [simulation] table in the config (see config.toml)")
    sim_config = parse_simulation(config.simulation, "simulation")
    if speed is not None:
        sim_config = sim_config.model_copy(update={"speed": speed})
    config = _fit_lease_to_speed(config, sim_config.speed)
    stop = asyncio.Event()
    _install_stop(stop)
    console = Console()
    live = console.is_terminal
    if not live:
        console = Console(width=160)  # logs and pipes: wide enough that ids and totals are not cut
    tap = WarningTap()
    logging.getLogger().addHandler(tap)
    async with SimSite.from_config(sim_config) as site:
        app = AgentApp(config, site.clock.now, time_scale=sim_config.speed)
        loop = app.loop
        screen = Screen(app, site.clock.now, sim_config.speed, log_file, status_url(config), warnings=tap)

        def adopted(plan: Plan, start: datetime, _method: str) -> None:
            """The table's reasons quote the prices the plan was made with. Runs inside the dispatcher's re-plan:
            a failure here must cost the screen its reasons, never the agent its plans."""
            try:
                screen.plan = plan_context(app, plan, start)
            except Exception:
                screen.plan = None
                log.exception("demo.plan_context_failed")

        async def opening() -> None:
            screen.event = await send_opening_event(app, site.clock.now, sim_config.speed)

        if app.dispatcher is not None:
            app.dispatcher.adopted.append(adopted)
        if not live and screen.url:
            console.print(f"status page {screen.url}")
        runner = asyncio.create_task(app.run(stop))
        runner.add_done_callback(lambda _: stop.set())  # if the agent ever dies, the demo must not show a frozen table
        timer = asyncio.create_task(_stop_after(stop, duration_s))
        event = asyncio.create_task(opening()) if opening_event else None
        try:
            if live:
                with Live(render(screen), console=console, refresh_per_second=2, redirect_stderr=False) as view:
                    while not await _wait(stop, 0.5):
                        view.update(render(screen))
            else:  # no screen to redraw: one summary line per period, the full screen at the end
                while not await _wait(stop, config.agent.poll_period_s):
                    console.print(summary(screen), soft_wrap=True)  # one line, however long
        finally:
            stop.set()
            if event is not None:
                event.cancel()
            await asyncio.gather(runner, *([event] if event else []), return_exceptions=True)
            timer.cancel()
            logging.getLogger().removeHandler(tap)
        if runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]
        if not live:
            console.print(render(screen, live=False))
    console.print(f"demo stopped after {loop.cycles} cycles, {loop.writes} setpoint writes")
    if log_file is not None:
        console.print(f"log: {log_file}")


def _fit_lease_to_speed(config: AppConfig, speed: float) -> AppConfig:
    """A fast simulation runs device time `speed` times faster than the agent's loop: stretch the lease (device
    seconds) so it still covers two cycles, or every device would fall back to 0 W between refreshes."""
    agent = config.agent
    least = speed * agent.min_lease_s(agent.poll_period_s, agent.poll_timeout_s)
    if agent.lease_timeout_s >= least:
        return config
    log.info("demo.lease_stretched", lease_timeout_s=least, speed=speed)
    return config.model_copy(update={"agent": agent.model_copy(update={"lease_timeout_s": float(math.ceil(least))})})


def _positive_seconds(text: str) -> float:
    """argparse type for durations and speeds: a finite number above 0 (nan, inf and 0 would stall or spin)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def _readable_file(text: str) -> str:
    """argparse type for --signals: checked before the agent starts, so a typo is exit 2, not a traceback later."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    try:
        path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be read as UTF-8 text: {exc}") from None
    return text


def _int_at_least(least: int) -> Callable[[str], int]:
    """argparse type for whole numbers of at least `least` (days, processes: 1; progress every N days: 0)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _int_between(least: int, most: int) -> Callable[[str], int]:
    at_least = _int_at_least(least)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {most}")
        return value

    return parse


_port = _int_between(1, 65535)
_unit_id = _int_between(0, 255)  # 0 is the broadcast/"this gateway" id some TCP devices answer on


def _writable_file(text: str) -> str:
    """argparse type for output files: its directory must exist and be writable now, not after a long run."""
    import os

    path = Path(text)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: no such directory {str(folder)!r}")
    if not os.access(path if path.exists() else folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not writable")
    return text


def _cmd_check(args: argparse.Namespace) -> int:
    config = _load_checked(args.config)
    count = sum(len(a.placements()) for a in config.assets)
    print(f"{args.config}: ok ({count} assets)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load_checked(args.config)
    configure_logging(config.agent.log_level, config.agent.log_format)
    asyncio.run(_run(config, args.duration, args.signals, args.config))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The demo on the config of --config, ./config.toml or the packaged default. While the live table owns the
    terminal the log goes to a file (agent.demo.log_path); otherwise to stderr, or to --log when given."""
    from rich.console import Console

    from agent.demo import choose_config, log_path, stderr_to

    path, origin = choose_config(args.config)
    config = _load_checked(str(path))
    log_file = log_path(config, args.log) if args.log or Console().is_terminal else None
    if origin != "--config":
        print(f"config: {origin}")
    with stderr_to(log_file) if log_file is not None else contextlib.nullcontext():
        configure_logging("warning" if args.quiet else config.agent.log_level, config.agent.log_format)
        started = time.monotonic()
        asyncio.run(_demo(config, args.duration, args.speed, log_file, not args.no_event))
        log.info("demo.done", wall_s=round(time.monotonic() - started, 2))
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    """Write the packaged default config (the demo site) for a user to edit; never over an existing file."""
    from agent import defaults

    path = Path(args.path)
    if path.is_dir():
        path = path / defaults.NAME
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(defaults.config_text())
    except FileExistsError:
        raise ConfigError(f"{path}: already exists; not overwritten (remove it or name another file)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from None
    print(f"wrote {path}: the demo site; `vpp-agent demo --config {path}` runs it, `check-config` checks edits")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    """One read of a live device through a map, printed; exit 1 when the agent could not use what it read."""
    from agent.probe import as_json, probe, probe_sunspec, render

    if args.map is None and not args.sunspec:
        raise ConfigError("probe needs --map (a register map) or --sunspec")
    configure_logging("warning")  # stdout is the report; the drivers' own logs (warnings only) go to stderr
    try:
        if args.sunspec:
            result = asyncio.run(probe_sunspec(args.host, args.port, args.unit, args.timeout, args.kind, args.map))
        else:
            result = asyncio.run(probe(args.host, args.port, args.unit, args.map, args.timeout))
    except ValueError as exc:  # the map file itself (pydantic's errors are ValueErrors naming file, row and key)
        raise ConfigError(str(exc)) from None
    print(as_json(result) if args.json else render(result))
    return 0 if result.error is None else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    """Closed-loop evaluation of dispatch strategies on the simulator's physics (evaluation.evaluate, a package
    outside `agent`, loaded here in the composition root only)."""
    import json

    from evaluation.evaluate import EvalConfig, evaluate
    from evaluation.plots import PlotError, require_matplotlib, write_plots
    from evaluation.report import print_report

    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    if args.plot is not None:
        try:
            require_matplotlib()  # before a long run, not after it
        except PlotError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        config = EvalConfig(
            days=args.days,
            seed=args.seed,
            fleet=args.fleet,
            strategies=strategies or EvalConfig().strategies,
            step_s=args.step_s,
            area=args.area,
            jobs=args.jobs,
            use_blast=not args.no_blast,
            progress_days=0 if sys.stderr.isatty() else args.progress_days,  # a terminal gets the live bars instead
            regulation_median_per_kw_h=args.regulation_price,
            chemistry=args.chemistry,
            replacement_cost_per_kwh=args.replacement_cost,
            price_error=args.price_error,
        )
        with _solver_output_to_stderr(), _simulate_progress(config) as progress:
            evaluation = evaluate(config, progress)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print_report(evaluation)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(evaluation.to_dict(), f, indent=2)
    if args.plot is not None:
        try:
            files = write_plots(evaluation, args.plot)
        except PlotError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"plots: {', '.join(str(f) for f in files)}")
    return 0


@contextlib.contextmanager
def _solver_output_to_stderr() -> Iterator[None]:
    """HiGHS prints its banner from C++ straight to file descriptor 1, before any option can silence it: point that
    descriptor at stderr while the solvers run (worker processes inherit it), so stdout carries the report only."""
    import os

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _simulate_progress(config: object) -> Iterator[Callable[[str, int, int], None] | None]:
    """Live bars on stderr, one per strategy (simulated days done, time left), when stderr is a terminal; otherwise
    nothing here (EvalConfig.progress_days prints plain lines for logs)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = Progress(
        TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
        TimeRemainingColumn(), console=Console(stderr=True), transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def advance(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total)
        bars.update(tasks[name], completed=done)

    with bars:
        yield advance


def _cmd_events(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from agent.store import Store

    config = load_config(args.config)
    problems = state_file_problems(config.agent.state_file)
    if not Path(config.agent.state_file).exists():
        problems.append(f"agent.state_file = {config.agent.state_file!r}: no such file (the agent has not run here)")
    if problems:
        raise ConfigError(f"{args.config}: " + "; ".join(problems))
    try:
        store = Store(config.agent.state_file)
        rows = store.load_events()
        store.close()
    except StoreError as exc:
        raise ConfigError(str(exc)) from exc
    if args.plot is not None:  # the chart code of the status page (agent/web/svg.py), without its server
        from zoneinfo import ZoneInfo

        from agent.web.delivery import NoDelivery, plot_to_file

        try:
            zone = ZoneInfo(config.events.timezone)
            written = plot_to_file(rows, args.plot, args.out, zone, config.agent.state_file)
        except NoDelivery as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"wrote {written}: {args.plot}'s baseline vs delivered per M&V interval")
        return 0
    if args.json:
        print(json.dumps([{"id": i, "kind": k, "state": st, **d} for i, k, st, d in rows], indent=2, default=str))
        return 0
    table = Table(title=f"grid events in {config.agent.state_file}")
    for column in ("id", "kind", "state", "window", "reason / report"):
        table.add_column(column)
    for event_id, kind, state, data in rows:
        signal = data.get("signal", {})
        assert isinstance(signal, dict)
        window = f"{signal.get('start') or signal.get('block_start')} → {signal.get('end') or signal.get('block_end')}"
        report = data.get("report") or {}
        assert isinstance(report, dict)
        detail = data.get("reason") or ", ".join(_summary_item(k, v) for k, v in report.items())
        table.add_row(event_id, kind, state, window, str(detail))
    console = Console()
    console.print(table)
    for event_id, _, _, data in rows:
        intervals = (data.get("report") or {}).get("intervals")  # type: ignore[union-attr]
        if not intervals:
            continue
        per = Table(title=f"{event_id}: delivery per interval")
        columns = ("start", "covered_s", "baseline_w", "mean_site_w", "delivered_kwh", "requested_kwh")
        for column in columns:
            per.add_column(column, justify="left" if column == "start" else "right")
        for row in intervals:
            per.add_row(*(str(row.get(c, "")) for c in columns))
        console.print(per)
    return 0


def _summary_item(key: str, value: object) -> str:
    if isinstance(value, list):
        return f"{key}: {len(value)}"
    if isinstance(value, dict):  # per_asset: {"assets": {...}, ...}
        return f"{key}: {len(value.get('assets', value))} assets"
    if isinstance(value, float):
        return f"{key} {value:.3g}"
    return f"{key} {value}"


def _cmd_keys_new(args: argparse.Namespace) -> int:
    from agent.trust.tool import new_key

    kinds = [k.strip() for k in (args.kinds or "").split(",") if k.strip()]
    path, entry = new_key(Path(args.out), args.kid, kinds, args.issuer)
    what = "the site trusts it with" if kinds else "its public key (e.g. for readers of the agent's messages)"
    print(f"# private key written to {path} (keep it with its holder only); {what}:")
    print(entry)
    return 0


def _cmd_keys_public(args: argparse.Namespace) -> int:
    from agent.trust.keys import load_private_key, public_key_text

    print(public_key_text(load_private_key(args.key)))
    return 0


def _input_text(name: str) -> str:
    """The text of an input file, or of stdin for "-"; ConfigError (one line, exit 2) when it cannot be read."""
    try:
        return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read: {exc}") from exc


def _cmd_sign(args: argparse.Namespace) -> int:
    from agent.trust.keys import Signer
    from agent.trust.tool import SignInputError, read_entries, sign_entries

    key_path = Path(args.key)
    signer = Signer.from_file(args.kid or key_path.stem, key_path)
    text = _input_text(args.file)
    try:
        entries = list(read_entries(text.splitlines(), args.kind))
    except SignInputError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for kind, token in sign_entries(entries, signer, key_path, args.site, args.ttl):
        print(token if args.compact else json.dumps({"kind": kind, "jws": token}))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Check messages the agent published (as `mosquitto_sub -v` prints them: "topic token", or bare tokens)."""
    from agent.trust.seal import NotSealed, open_sealed

    text = _input_text(args.file)
    forged = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        topic, _, token = line.strip().rpartition(" ")
        try:
            sealed = open_sealed(token, args.public_key, topic or None)
        except NotSealed as exc:
            forged += 1
            print(f"FORGED {topic or '-'}: {exc}")
            continue
        if args.site is not None and sealed.site != args.site:
            forged += 1
            print(f"FORGED {sealed.topic}: signed for site {sealed.site!r}, not {args.site!r}")
            continue
        stamp = datetime.fromtimestamp(sealed.iat, UTC).isoformat()
        print(f"ok {sealed.topic} {stamp} {json.dumps(sealed.body, separators=(',', ':'))}")
    return 1 if forged else 0


class _DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help says its default (unless it says one itself, or there is none worth saying)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _shows_default(action):
            action.help = "default: %(default)s"  # argparse prints no help line for an option without help
        return super()._format_action(action)


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    if default is None or default is argparse.SUPPRESS or isinstance(default, bool) or default == []:
        return False
    return not isinstance(action, argparse._SubParsersAction | argparse._HelpAction | argparse._VersionAction)


class _Parser(argparse.ArgumentParser):
    """One line on stderr and exit 2 for a bad argument (no usage block); defaults shown in every --help. Sub-commands
    are made with this class too (argparse uses the parent's class), the audit commands included."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vpp-agent", description="Virtual power plant control agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a config file and the register maps it names")
    check.add_argument("config", help="path to config.toml")
    check.set_defaults(func=_cmd_check)
    run = sub.add_parser("run", help="run the agent against the devices in the config")
    run.add_argument("--config", default="config.toml", help="the site's config file")
    run.add_argument("--duration", type=_positive_seconds, default=None, help="stop after this many seconds")
    run.add_argument(
        "--signals", type=_readable_file, default=None,
        help="JSON-lines file of signals to take at start (no broker needed)",
    )
    run.set_defaults(func=_cmd_run)
    events = sub.add_parser("events", help="list grid events and their M&V reports from the agent's state file")
    events.add_argument("--config", default="config.toml", help="the site's config file")
    events.add_argument("--json", action="store_true", help="print JSON instead of a table")
    events.add_argument("--plot", metavar="ID", default=None, help="write event ID's baseline vs delivered as SVG")
    events.add_argument("--out", type=_writable_file, default=None, help="with --plot: the SVG file (default ID.svg)")
    events.set_defaults(func=_cmd_events)
    demo = sub.add_parser("demo", help="start the simulated site of the config and the agent, with a live table")
    demo.add_argument(
        "--config", default=None, help="the site's config file (default: ./config.toml, else the packaged demo site)"
    )
    demo.add_argument("--duration", type=_positive_seconds, default=None, help="stop after this many seconds")
    demo.add_argument(
        "--speed", type=_positive_seconds, default=None,
        help="simulated seconds per wall second (default: the config's [simulation] speed)",
    )  # fmt: skip
    demo.add_argument("--quiet", action="store_true", help="log warnings only")
    demo.add_argument(
        "--log", default=None,
        help="log file (default: vpp-demo.log beside the state file while the live table runs, else stderr)",
    )  # fmt: skip
    demo.add_argument("--no-event", action="store_true", help="do not send the opening up-DR event")
    demo.set_defaults(func=_cmd_demo)
    init = sub.add_parser("init", help="write the packaged default config (the demo site) to edit")
    init.add_argument("path", nargs="?", default="config.toml", help="file or directory to write")
    init.set_defaults(func=_cmd_init)
    probe = sub.add_parser("probe", help="read a live Modbus device once through a register map and print it")
    probe.add_argument("--host", required=True, help="the device's or gateway's address")
    probe.add_argument("--port", type=_port, default=502, help="Modbus TCP port")
    probe.add_argument("--unit", type=_unit_id, default=1, help="Modbus unit id")
    probe.add_argument(
        "--map", default=None, help="map id (drivers/maps) or path to a map file; with --sunspec: a SunSpec product map"
    )
    probe.add_argument("--sunspec", action="store_true", help="walk the SunSpec model chain and poll through it")
    probe.add_argument(
        "--kind", choices=("battery", "ev_charger", "meter"), default="battery",
        help="with --sunspec and no product map: what the device is",
    )  # fmt: skip
    probe.add_argument("--timeout", type=_positive_seconds, default=3.0, help="seconds to wait for each answer")
    probe.add_argument("--json", action="store_true", help="print JSON instead of a table")
    probe.set_defaults(func=_cmd_probe)
    sim = sub.add_parser("simulate", help="evaluate dispatch strategies in closed loop on simulated physics")
    sim.add_argument("--days", type=_positive_int, default=7, help="simulated days")
    sim.add_argument("--seed", type=int, default=1, help="seed of the scenario (prices, EV sessions, events)")
    sim.add_argument("--fleet", choices=("tiny", "small", "default", "large"), default="small", help="fleet size")
    sim.add_argument(
        "--strategies", default="",
        help="comma-separated (default: blind, const-0.25x..const-4x, aware, full-info-mpc; uncontrolled always runs)",
    )
    sim.add_argument(
        "--step-s", type=_positive_seconds, default=900.0, help="planning step, s (divides 1800 or a multiple of it)"
    )
    sim.add_argument("--area", default="Kyushu", help="JEPX area whose price the site pays")
    sim.add_argument("--jobs", type=_positive_int, default=1, help="strategies run in this many processes")
    sim.add_argument("--no-blast", action="store_true", help="skip BLAST-Lite scoring even if installed")
    sim.add_argument(
        "--regulation-price", type=float, default=1.5,
        help="median capacity price of the RegD-like regulation product, JPY per kW·h of each side (0: not offered)",
    )
    sim.add_argument(
        "--progress-days", type=_non_negative_int, default=30,
        help="when stderr is not a terminal, a progress line every N simulated days (0: none)",
    )
    sim.add_argument("--chemistry", choices=("lfp", "nmc"), default="lfp", help="the packs' chemistry")
    sim.add_argument(
        "--replacement-cost", type=float, default=30_000.0,
        help="battery replacement cost, JPY per kWh of nominal capacity (world, valuation and wear prices)",
    )
    sim.add_argument(
        "--price-error", type=float, default=0.0,
        help="relative std of the error on the energy prices the forecasting strategies see (0: none)",
    )
    sim.add_argument("--out", type=_writable_file, default=None, help="write all figures as JSON to this file")
    sim.add_argument(
        "--plot", metavar="DIR", default=None,
        help="write net value, SoC and fade figures (PNG and SVG) to DIR (needs the plot extra: matplotlib)",
    )
    sim.set_defaults(func=_cmd_simulate)
    keys = sub.add_parser("keys", help="make Ed25519 keys for signed commands (docs/security.md)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="write a new private key and print the [[trust.keys]] entry for it")
    new.add_argument("--kid", required=True, help="key id (also the file name: KID.pem)")
    new.add_argument("--out", default=".", help="directory to write the key to (default: .)")
    new.add_argument("--kinds", default=None, help="comma-separated signal kinds the key may send (a sender's key)")
    new.add_argument("--issuer", default="", help="who holds the key (for logs and the audit trail)")
    new.set_defaults(func=_cmd_keys_new)
    public = keys_sub.add_parser("public", help="print the public key of a private key file (config form)")
    public.add_argument("key", help="private key file (PEM)")
    public.set_defaults(func=_cmd_keys_public)
    sign = sub.add_parser("sign", help="sign signals as commands a site takes (JSON lines in, signed lines out)")
    sign.add_argument("file", nargs="?", default="-", help='JSON lines {"kind": ..., "payload": {...}}; - is stdin')
    sign.add_argument("--key", required=True, help="private key file (PEM); its sequence counter is KEY.seq")
    sign.add_argument("--kid", default=None, help="key id the site knows the key by (default: the file's stem)")
    sign.add_argument("--site", required=True, help="the site id ([trust] site_id) the commands are for")
    sign.add_argument("--ttl", type=_positive_seconds, default=300.0, help="seconds each command stays valid")
    sign.add_argument("--kind", default=None, help="the kind of every line, when lines are bare signal objects")
    sign.add_argument("--compact", action="store_true", help="print only the signed command (for mosquitto_pub)")
    sign.set_defaults(func=_cmd_sign)
    verify = sub.add_parser("verify", help="check that messages were signed by the agent's key (exit 1 if any not)")
    verify.add_argument("file", nargs="?", default="-", help='lines "topic token" (mosquitto_sub -v) or tokens')
    verify.add_argument("--public-key", required=True, help="the agent's public key (vpp-agent keys public)")
    verify.add_argument("--site", default=None, help="also require this site id")
    verify.set_defaults(func=_cmd_verify)
    add_audit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(key_arguments(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:  # the state file went bad between the start-up checks and opening it
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
