"""The ``surgery`` command line. Each command parses, calls one API function, prints.

A ``SurgeryError`` becomes one line on stderr and exit code 2; so does any
other failure unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ..errors import SurgeryError

EXIT_FAIL, EXIT_BAD_INPUT = 1, 2


class _Group(click.Group):
    """Turns errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except SurgeryError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if not (ctx.obj and ctx.obj.get("silent")):
                click.echo(f"surgery: error: {e}", err=True)
            raise click.exceptions.Exit(EXIT_BAD_INPUT) from None
        except Exception as e:  # a bug or an unexpected library error: still one line, unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"surgery: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
            raise click.exceptions.Exit(EXIT_BAD_INPUT) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="surgery")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Move trained weights between networks and frameworks, and prove the result."""
    ctx.obj = {"debug": debug}


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


_unsafe_flag = click.option(
    "--unsafe-pickle", is_flag=True,
    help="DANGEROUS: let PyTorch pickles run code (torch.load weights_only=False). Only for files you trust.")


def _admit(ctx: click.Context, param: click.Parameter, names: tuple[str, ...]) -> None:
    from ..formats.torch import state_dict

    state_dict.ALLOWED_GLOBALS.update(names)


_allow_global = click.option(
    "--allow-global", "allow_global", multiple=True, metavar="MODULE.NAME", expose_value=False, callback=_admit,
    help="Let a PyTorch pickle build this harmless class (e.g. argparse.Namespace); repeatable. Runs nothing else.")


def unsafe_option(f: Any) -> Any:
    """--unsafe-pickle and --allow-global, for every command that reads checkpoints."""
    return _unsafe_flag(_allow_global(f))


@cli.command()
@click.argument("ckpt", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--tensors", is_flag=True, help="Also list every tensor with its native name and layout.")
@unsafe_option
def inspect(ckpt: str, as_json: bool, tensors: bool, unsafe_pickle: bool) -> None:
    """One row per layer of CKPT: name, kind, param shapes, dtype, count, frozen.

    Reads headers only: no tensor data is loaded.
    """
    from .. import api
    from .. import render as report

    graph = api.load(ckpt, unsafe_pickle=unsafe_pickle)
    if as_json:
        _emit(report.inspect_dict(graph))
    else:
        click.echo(report.inspect_text(graph, tensors=tensors))


@cli.command("map")
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--match", type=click.Choice(["auto", "name", "shape"]), default="auto", show_default=True,
              help="How to pair layers the map does not name: auto tries names, then structure and shapes.")
@click.option("--map", "mapping", type=click.Path(), help="Start from this map (its rename rules, pairs...).")
@click.option("-o", "--output", type=click.Path(), help="Write the proposed map here instead of stdout.")
@unsafe_option
def map_command(src: str, dst: str, match: str, mapping: str | None, output: str | None, unsafe_pickle: bool) -> None:
    """Propose a map.yaml pairing SRC's layers with DST's, with a comment on how each pair was found."""
    from .. import api
    from ..io import atomic_path

    plan = api.plan(src, dst, mapping, match=match, unsafe_pickle=unsafe_pickle)
    text = plan.to_yaml()
    if output:
        with atomic_path(output) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
        click.echo(f"wrote {output}: {len(plan.pairs)} pairs, {len(plan.unused) + len(plan.uncovered)} unpaired")
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("src", type=click.Path())
@click.argument("dst", type=click.Path())
@click.option("--map", "mapping", type=click.Path(), help="map.yaml: rename rules, explicit pairs, skip/keep/freeze.")
@click.option("-o", "--output", type=click.Path(), help="Output file (default: DST, replaced atomically).")
@click.option("--match", type=click.Choice(["name", "shape", "auto", "none"]), help="Override the map's `match`.")
@click.option("--freeze", multiple=True, metavar="GLOB", help="Mark destination layers frozen (repeatable).")
@click.option("--allow-partial", is_flag=True,
              help="Accept every open decision at once (layers left as initialised, tensors copied nowhere, "
                   "assumed layouts, ambiguous pairs); recorded in the report and OUT.surgery.json.")
@click.option("--strict", is_flag=True, hidden=True, help="The default; accepted for old scripts.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan and what would be written (files, bytes, peak memory); read no tensor data, write nothing.")
@click.option("--report", "report_path", type=click.Path(),
              help="Also write the report as JSON here, with a sha256 of each copied tensor.")
@click.option("--max-shard-size", metavar="SIZE", help="Write sharded safetensors with shards of at most SIZE (e.g. 5GB).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--verify", "verify_after", is_flag=True,
              help="Then prove OUT computes what SRC computed (ONNX Runtime and natively); exit 1 on a mismatch.")
@click.option("--probe", is_flag=True,
              help="Settle ambiguous pairs and assumed flatten orders by running both networks layer by layer "
                   "(SRC from its file; DST from its file or --factory); the evidence goes into the report.")
@click.option("--factory", metavar="MOD:FN",
              help="With --verify or --probe: callable building the network for weights-only files.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="S",
              help="With --verify or --probe: random input shape.")
@unsafe_option
def transplant(src: str, dst: str, mapping: str | None, output: str | None, match: str | None, freeze: tuple[str, ...],
               allow_partial: bool, strict: bool, dry_run: bool, report_path: str | None, max_shard_size: str | None,
               as_json: bool, quiet: bool, verify_after: bool, probe: bool, factory: str | None,
               input_shapes: tuple[str, ...], unsafe_pickle: bool) -> None:
    """Copy SRC's weights into DST's layers as the map says, and write the result.

    Writes OUT (default DST, replaced atomically) and OUT.surgery.json, and prints
    the report: pairs with their transforms, unused and kept layers, frozen layers,
    warnings. Strict by default: anything left open (a destination layer left as
    initialised, a source tensor copied nowhere, an assumed layout, an ambiguous pair)
    exits 1, writes nothing and prints the map lines that accept it; --allow-partial
    accepts them all. With --verify, OUT is then run against SRC and the verdict
    recorded in OUT.surgery.json (OUT is kept either way). Exit 0 ok, 1 a decision is
    needed or --verify failed, 2 on bad input.
    """
    from .. import api
    from ..apply import parse_size, write_report
    from .proof import parse_shapes

    out = output or dst
    try:
        result = api.transplant(src, dst, mapping, freeze=freeze, match=match, strict=not allow_partial,
                                unsafe_pickle=unsafe_pickle, output=out, dry_run=dry_run, verify=verify_after,
                                factory=factory, input_shape=parse_shapes(input_shapes),
                                max_shard_size=parse_size(max_shard_size) if max_shard_size else None,
                                report=None if dry_run else report_path, quiet=quiet, probe=probe)
    except api.StrictError as refused:
        if report_path:
            write_report(refused.plan, report_path)
        _report(refused.plan, refused.plan.to_dict(), as_json)
        click.echo(f"surgery: {refused}; nothing written", err=True)
        if refused.accept_lines:
            click.echo("add to the map to accept as planned (merge into existing sections):\n"
                       + refused.accept_lines.rstrip(), err=True)
        sys.exit(EXIT_FAIL)
    if dry_run:
        if report_path:
            write_report(result.plan, report_path)
        _report(result.plan, {**result.plan.to_dict(), "write": result.write_plan.to_dict()}, as_json)
        if not as_json:
            click.echo(str(result.write_plan))
        return
    _report(result, result.to_dict(), as_json)
    if not as_json:
        click.echo(f"wrote {out} and {out}.surgery.json")
        if result.proof is not None:
            click.echo(str(result.proof))
    if result.proof is not None and not result.proof:
        sys.exit(EXIT_FAIL)


def _report(obj: Any, data: dict, as_json: bool) -> None:
    if as_json:
        _emit(data)
    else:
        click.echo(str(obj))


@cli.command()
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--max-shard-size", metavar="SIZE", help="Write sharded safetensors with shards of at most SIZE (e.g. 5GB).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes writing a safetensors output: its shards (with --max-shard-size), "
                   "or parts of the one file; committed last, by this process.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--dry-run", is_flag=True,
              help="Print what would be written (files, bytes, tensors) and the peak memory; read no tensor data, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print JSON.")
@unsafe_option
@click.pass_context
def convert(ctx: click.Context, src: str, out: str, max_shard_size: str | None, jobs: int, quiet: bool, dry_run: bool,
            as_json: bool, unsafe_pickle: bool) -> None:
    """Write SRC's weights to OUT in the format OUT's suffix names, in canonical names and layout.

    An OUT named as a folder (a trailing /) is a PyTorch Distributed Checkpoint; writing into an
    existing trainer checkpoint replaces its model and keeps its optimizer state.

    Under torchrun (several ranks, on one machine or several sharing a filesystem) the ranks
    split the writing of a safetensors output (its shards, or parts of the one file) through
    torch.distributed; rank 0 writes the index or header, commits, and alone prints.
    """
    from .. import api
    from ..apply import parse_size
    from ..parallel import torchrun_world

    shard = parse_size(max_shard_size) if max_shard_size else None
    world = torchrun_world()
    if world is not None and jobs > 1:
        raise SurgeryError("--jobs under torchrun: the ranks already split the work; "
                           "start more of them with --nproc-per-node instead")
    if dry_run:
        if world is not None and world[0] != 0:
            return
        processes = world[1] if world else jobs
        planned = api.convert_plan(src, out, max_shard_size=shard, unsafe_pickle=unsafe_pickle, processes=processes)
        _report(planned, planned.to_dict(), as_json)
        return
    if world is not None and world[0] != 0:
        ctx.obj["silent"] = True   # rank 0 speaks for the job, errors included
        quiet = True
    written = api.convert(src, out, max_shard_size=shard, quiet=quiet, unsafe_pickle=unsafe_pickle, jobs=jobs,
                          ranks=world is not None)
    for path in written:
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@unsafe_option
def diff(a: str, b: str, as_json: bool, unsafe_pickle: bool) -> None:
    """Compare A and B tensor by tensor: equal, changed (max abs diff), only in A/B, shape or dtype differs.

    Exit 0 when the same, 1 when they differ, 2 on bad input.
    """
    from .. import api

    result = api.diff(a, b, unsafe_pickle=unsafe_pickle)
    _emit(result.to_dict()) if as_json else click.echo(str(result))
    sys.exit(0 if result else EXIT_FAIL)


from .proof import check, verify  # noqa: E402  (commands defined in their own module)

cli.add_command(verify)
cli.add_command(check)


def main() -> None:
    """Console-script entry point.

    As a rank of a ``torchrun`` job, the process ends with ``os._exit`` once its output is
    flushed: at a normal exit, torch.distributed's C++ threads can be torn down in an order
    that aborts the process (``terminate called without an active exception``, seen once in
    ten runs on torch 2.13), turning a finished job into a failed one. Everything surgery
    writes is on disk by then (each file fsynced, the index renamed).
    """
    if "WORLD_SIZE" not in os.environ or _torchrun_world() is None:   # the env check spares the import
        cli(prog_name="surgery")
        return
    code: Any = 0
    try:
        cli(prog_name="surgery")
    except SystemExit as e:
        code = e.code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _torchrun_world() -> tuple[int, int] | None:
    from ..parallel import torchrun_world

    return torchrun_world()


if __name__ == "__main__":
    main()
