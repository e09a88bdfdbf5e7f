"""The ``verify`` and ``check`` commands: parse, call one API function, print.

Exit codes: 0 pass, 1 fail; a SurgeryError propagates to the main group,
which prints one line and exits 2.
"""

from __future__ import annotations

import json

import click


def parse_shapes(texts: tuple[str, ...]) -> list[tuple[int, ...]] | None:
    """``("1,3,16,16",)`` -> ``[(1, 3, 16, 16)]``; None when no shape was given."""
    return [_shape(t) for t in texts] or None


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers, e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise click.BadParameter(f"{text!r}: expected positive dimensions, e.g. 1,3,224,224")
    return dims


def _emit(report: object, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(str(report))
    click.get_current_context().exit(0 if report else 1)


@click.command()
@click.argument("model", type=click.Path())
@click.option("--factory", metavar="MOD:FN", help="Callable that builds the network for a weights-only checkpoint.")
@click.option("--against", "against", type=click.Path(), metavar="REF",
              help="Also compare MODEL with REF run natively (any checkpoint with an architecture).")
@click.option("--inputs", type=click.Path(), metavar="X.npz",
              help="Input arrays by input name (or one array).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="S",
              help="Shape of a random input, e.g. 1,3,224,224 (repeat for several inputs).")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Relative tolerance.")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Absolute tolerance.")
@click.option("--layers", is_flag=True, help="On a mismatch, name the first diverging layer.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(model: str, factory: str | None, against: str | None, inputs: str | None,
           input_shapes: tuple[str, ...], rtol: float, atol: float, layers: bool, as_json: bool) -> None:
    """Prove MODEL computes what it should.

    Exports MODEL to ONNX (unless it is ONNX), runs ONNX Runtime and compares
    with MODEL run natively; with --against, also compares with REF run
    natively, adapting NHWC and NCHW layouts when the two differ. Inputs come
    from --inputs, or are random (seed 0) with --input-shape or the model's
    own input signature.

    Exit codes: 0 match, 1 mismatch, 2 bad input.

    Example: surgery verify model.pt --factory mypkg.nets:build --against vgg16.h5
    """
    from ..proof.verify import verify as run_verify

    if inputs and input_shapes:
        raise click.UsageError("give --inputs or --input-shape, not both")
    report = run_verify(model, against=against, factory=factory, inputs=inputs,
                        input_shape=parse_shapes(input_shapes),
                        rtol=rtol, atol=atol, layers=layers)
    _emit(report, as_json)


@click.command()
@click.argument("model", type=click.Path())
@click.option("--base", required=True, type=click.Path(), help="The checkpoint MODEL started from.")
@click.option("--frozen", "frozen", multiple=True, metavar="GLOB",
              help="Layers that must be bit-equal to BASE (default: the frozen list of MODEL.surgery.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(model: str, base: str, frozen: tuple[str, ...], as_json: bool) -> None:
    """Pre-deployment gate: MODEL is sound and consistent with BASE.

    Every tensor finite; frozen layers bit-equal to BASE; shapes and dtypes
    unchanged from BASE. Exit codes: 0 pass, 1 fail (failing tensors listed),
    2 bad input.

    Example: surgery check finetuned.safetensors --base transplanted.safetensors --frozen 'features.*'
    """
    from ..proof.check import check as run_check

    report = run_check(model, base=base, frozen=list(frozen) or None)
    _emit(report, as_json)
