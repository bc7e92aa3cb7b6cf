"""The ``psf-live`` command line (one typer app; each command delegates to its module)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="psf-live",
    help="Live PSF maps, deblurring and depth from astigmatism for wide-field microscopes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def demo() -> None:
    """Run the whole product on the built-in simulated microscope (no hardware needed)."""
    raise fail("demo is not implemented yet")


def main() -> None:
    """Entry point for ``python -m psf_live``."""
    app()
