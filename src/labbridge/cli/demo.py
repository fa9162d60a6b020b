"""``labbridge demo``: start a whole simulated lab on loopback and run an extraction."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from labbridge.cli.common import fail_on_start_error, logs_above, run_async
from labbridge.cli.run import render
from labbridge.devices.state_file import write_json_atomic
from labbridge.node.demo import Lab as DemoLab
from labbridge.node.demo import NodeNotReady, last_log_line, new_workdir
from labbridge.node.demo_keys import watch_args
from labbridge.node.demo_sequence import extraction
from labbridge.node.lab import Lab, ScriptError, Step
from labbridge.node.node import build_node


def _where(lab: DemoLab) -> list[str]:
    lines = []
    for key, c in lab.components.items():
        eps = ", ".join(f"{s['protocol']} {s.get('host', '')}:{s.get('port')}"
                        for s in c.info.get("services", [])
                        if s.get("port") and s.get("role", "listen") == "listen")
        lines.append(f"  {key:<20} {eps}")
    vc = lab.components.get("valve-controller")
    if vc:
        host, port = vc.endpoint("tcp")  # type: ignore[misc]
        lines.append("")
        lines.append(f"  try:  labbridge call {host}:{port} GetValveStates")
        lines.append(f"        labbridge monitor {host}:{port}")
        if vc.url("zmq-pub"):
            lines.append(f"        labbridge watch {vc.url('zmq-pub')} "
                         f"{watch_args(lab.workdir, 'valve-controller')}")
    rot = lab.components.get("rotator")
    if rot and rot.endpoint("tcp"):
        host, port = rot.endpoint("tcp")  # type: ignore[misc]
        lines.append(f"        labbridge rotator {host}:{port} status")
    ep = lab.epics_info()
    if ep:
        lines.append(f"  EPICS: prefix {ep['prefix']} ({len(ep['pvs'])} PVs, e.g. "
                     f"{ep['prefix']}:valves:A, {ep['prefix']}:gauges:IG); for CA/PVA clients:")
        lines.append(f"        export EPICS_CA_ADDR_LIST='{ep['EPICS_CA_ADDR_LIST']}' "
                     "EPICS_CA_AUTO_ADDR_LIST=NO")
        lines.append(f"        export EPICS_PVA_ADDR_LIST='{ep['EPICS_PVA_ADDR_LIST']}' "
                     "EPICS_PVA_AUTO_ADDR_LIST=NO")
    web, login = next(((s, c.info.get("login_url")) for c in lab.components.values()
                       for s in c.info.get("services", []) if s.get("protocol") == "http"),
                      (None, None))
    if web:
        lines.append(f"  web dashboard: http://{web['host']}:{web['port']}/")
        if login:  # issue 12: printed once, works once (the node file keeps its hash only)
            lines.append(f"  log in once as operator: http://{web['host']}:{web['port']}"
                         f"{login}")
    else:
        lines.append("  web dashboard: not in this installation yet")
    return lines


@click.command()
@click.option("--ready-file", type=click.Path(dir_okay=False), envvar="LABBRIDGE_READY_FILE",
              help="Write JSON with every node's endpoints once the lab is up. Default: "
                   "$LABBRIDGE_READY_FILE.")
@click.option("--exit-after-sequence", is_flag=True,
              help="Stop the lab and exit when the extraction sequence is done.")
@click.option("--no-sequence", is_flag=True, help="Start the lab but run no sequence.")
@click.option("--no-progress", is_flag=True, help="Plain lines instead of a live display.")
@click.option("--temperature", type=float, default=600.0, show_default=True,
              help="Furnace temperature of the extraction (degrees C).")
@click.option("--keep", is_flag=True,
              help="Keep the lab's folder (node files, logs, state) after it stops; it is "
                   "kept anyway when something failed.")
def demo(ready_file: str | None, exit_after_sequence: bool, no_sequence: bool,
         no_progress: bool, temperature: float, keep: bool) -> None:
    """Start a whole simulated lab on loopback, run an extraction, keep it up until Ctrl-C.

    Ctrl-C (or SIGTERM) stops it: exit code 0. A node that dies while the lab runs is
    reported in one line and the whole lab is stopped (exit code 1; its log is kept).
    """
    console = Console()
    plain = no_progress or not console.is_terminal

    async def _main(workdir: Path) -> int:
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        lab = DemoLab(workdir)
        click.echo(f"labbridge demo: starting a simulated lab in {workdir}")
        code = 0
        node = None
        died: asyncio.Future[Any] | None = None
        stopper = asyncio.ensure_future(stop.wait())

        async def until_stopped(*tasks: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
            watched = {stopper, *tasks, *([died] if died is not None else [])}
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            return done

        def report_death() -> int:
            assert died is not None
            c = died.result()
            rc = c.proc.returncode
            how = (f"was killed by {signal.Signals(-rc).name}" if rc < 0
                   else f"exited with code {rc}")
            last = last_log_line(c)
            click.echo(f"labbridge demo: {c.title} {how} while the lab was running; stopping "
                       f"the lab (log: {c.info.get('log')}"
                       + (f"; last line: {last}" if last else "") + ")", err=True)
            return 1

        try:
            starting = asyncio.ensure_future(lab.start(
                on_ready=lambda c: click.echo(f"  ready: {c.title}")))
            if starting not in await until_stopped(starting):
                starting.cancel()
                click.echo("interrupted while starting")
                return 0
            try:
                starting.result()
            except RuntimeError as exc:  # a node exited or was not ready in time
                click.echo(f"labbridge demo: {exc}", err=True)
                if isinstance(exc, NodeNotReady) and exc.stacks:
                    # where a stuck node was (its folder may be gone later)
                    click.echo("  its threads were doing:", err=True)
                    for line in exc.stacks.splitlines():
                        click.echo(f"    {line}", err=True)
                return 1
            died = asyncio.ensure_future(lab.first_exit())
            for c in lab.left_out:
                click.echo(f"  left out: {c.title}: {c.note}")
            click.echo(f"lab up in {time.monotonic() - t0:.1f} s")
            for line in _where(lab):
                click.echo(line)
            if ready_file:
                write_json_atomic(Path(ready_file), lab.ready_info())
            if not no_sequence and "valve-controller" in lab.components:
                cfg_path = workdir / "acquisition.yaml"
                import yaml

                cfg_path.write_text(yaml.safe_dump(lab.acquisition_config(), sort_keys=False))
                node = build_node(cfg_path, state_dir=workdir / "state" / "acquisition")
                await node.start()
                from labbridge.cli.run import wait_ready

                try:
                    await wait_ready(node, 10)
                except ScriptError as exc:
                    click.echo(f"labbridge demo: {exc}", err=True)
                    return 1
                holder: list[Lab] = []
                shown: dict[str, Any] = {}

                def on_step(step: Step) -> None:
                    if plain:
                        if step.ok is not None:
                            mark = "ok  " if step.ok else "FAIL"
                            click.echo(f"  {mark} {step.what} {step.detail}".rstrip())
                    elif shown.get("live") is not None and holder:
                        shown["live"].update(render(holder[0], "extraction"), refresh=True)

                # lab.furnace and lab.spectrometer come from the node file's links.
                acq = Lab(node, on_step=on_step)
                holder.append(acq)
                click.echo("running the extraction sequence: pump, isolate, heat, expand, "
                           "measure, pump out")
                seq = asyncio.ensure_future(_run(acq, temperature, console, plain, shown))
                done = await until_stopped(seq)
                if seq in done:
                    try:
                        seq.result()
                        click.echo("extraction sequence complete")
                    except ScriptError as exc:
                        click.echo(f"extraction sequence failed: {exc}", err=True)
                        code = 1
                else:
                    seq.cancel()
                    with contextlib.suppress(asyncio.CancelledError, ScriptError):
                        await seq
                    if died in done:
                        return report_death()
                    click.echo("interrupted during the sequence")
                    return 0
            if died.done():
                return report_death()
            if not exit_after_sequence:
                click.echo("the lab keeps running; Ctrl-C to stop")
                if died in await until_stopped():
                    return report_death()
            return code
        finally:
            stopper.cancel()
            if died is not None:
                died.cancel()
            if node is not None:
                await node.stop()
            await lab.stop()
            click.echo("lab stopped")

    workdir = new_workdir()
    code = 1
    try:
        with fail_on_start_error("acquisition"):
            code = run_async(_main(workdir))
    finally:
        if code == 0 and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            click.echo(f"the lab's folder (node files, logs, state) is kept: {workdir}",
                       err=code != 0)
    sys.exit(code)


async def _run(acq: Lab, temperature: float, console: Console, plain: bool,
               shown: dict[str, Any]) -> None:
    if plain:
        await extraction(acq, temperature=temperature)
        return
    from rich.live import Live

    with logs_above(console), \
            Live(render(acq, "extraction"), console=console, auto_refresh=False) as live:
        shown["live"] = live
        await extraction(acq, temperature=temperature)
        live.update(render(acq, "extraction"), refresh=True)


def register(group: click.Group) -> None:
    group.add_command(demo)
