"""``sidecar config``: check a configuration file, print the documented example."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import ConfigError, effective, example_toml, load, render_toml
from .app import cli, fail


@cli.group("config")
def config_group() -> None:
    """The TOML configuration of `sidecar run`, `sidecar api` and `sidecar invoice`."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print the effective configuration as JSON.")
def check(file: Path, as_json: bool) -> None:
    """Check FILE with the environment's SIDECAR_TABLE__KEY overrides and print the
    effective configuration (every key; secrets masked), each value with where it came
    from. Exit 2, naming the key path of each problem, when it cannot be used."""
    try:
        loaded = load(file)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        fail(f"{file}: not usable ({len(exc.problems)} problem"
             f"{'' if len(exc.problems) == 1 else 's'})", 2)
        return
    if as_json:
        click.echo(json.dumps({"source": str(file), "config": effective(loaded.config),
                               "origins": loaded.origins}, indent=2))
        return
    click.echo(f"# {file}: OK; the effective configuration:")
    click.echo(render_toml(loaded.config, loaded.origins), nl=False)


@config_group.command("example")
def example() -> None:
    """Print a configuration with every key, its default and what it means."""
    click.echo(example_toml(), nl=False)
