"""`srec`: the pipeline's everyday verbs in one command (a console script, `pyproject.toml`).

Each subcommand runs what the project already has, with no second implementation: `run` and `runs` are
DVC's CLI (`dvc repro`, `dvc exp show`), `land` is the landing zone's CLI (components/data/landing.py),
`models`/`show`/`card`/`promote`/`rollback`/`verify` are the registry's (components/serving/registry.py),
`serve` is `bentoml serve` on bentofile.yaml, `check-params` is components/config.py and `pools` is
components/orchestration/__main__.py. So `srec land list` prints exactly what `python -m
components.data.landing list` prints, and fails the same way (one `ERROR [landing] ...` line, exit 1).

Every subcommand works on the checkout it is started in: the folder with `dvc.yaml` and `params.yaml`.
Started elsewhere, it stops and names the folder to `cd` into, rather than guessing: relative paths
(`srec land drop FILE`, `--params`) mean what they mean in the shell that typed them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from components import config, summary
from components.data import landing
from components.errors import DataError, stage_main
from components.orchestration import __main__ as orchestration_cli
from components.orchestration.runner import repo_lock, stage_env
from components.serving import registry

#: `srec runs`: the columns worth a glance; the full table is `dvc exp show` (111 columns)
RUN_COLUMNS = r"^(Experiment|Created|ndcg@10\..*|gate_passed)$"
#: options that a subcommand hands on, unparsed, to the tool it wraps (`srec land --help` is landing's own help)
FORWARD = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def checkout() -> Path:
    """The current folder, checked to be the pipeline's checkout (it holds dvc.yaml and params.yaml).

    Raises click.UsageError naming the checkout above it, if there is one, and the `cd` that fixes it."""
    here = Path.cwd()
    if (here / "dvc.yaml").is_file() and (here / "params.yaml").is_file():
        return here
    above = next((p for p in here.parents if (p / "dvc.yaml").is_file() and (p / "params.yaml").is_file()), None)
    fix = f"cd {above}" if above else "cd into the pipeline's checkout (the folder with dvc.yaml and params.yaml)"
    raise click.UsageError(f"{here} has no dvc.yaml and params.yaml, so it is not the pipeline's checkout. Fix: {fix}")


def call(cmd: list[str], hint: str | None = None) -> None:
    """Run a tool with the stages' environment (this interpreter first on PATH, offline and quiet tools,
    components/orchestration/runner.py) and exit with its status when it fails, after `hint` (on stderr)."""
    code = subprocess.call(cmd, env=stage_env())
    if code:
        if hint:
            click.echo(hint, err=True)
        sys.exit(code)


def forwarded(main, prog: str, args: tuple[str, ...]) -> None:
    """Call an existing argparse `main(argv, prog=)` with the arguments as typed."""
    checkout()
    main(list(args), prog=prog)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="llm-srec-pipeline", prog_name="srec")
def cli() -> None:
    """LLM-SRec pipeline: run it, land new interactions, look at runs and models, promote, serve.

    Run from the checkout (the folder with dvc.yaml and params.yaml). `srec COMMAND --help` says more.
    """


@cli.command()
@click.argument("stages", nargs=-1)
@click.option("--dry", is_flag=True, help="print what DVC would run, run nothing")
@click.option("-f", "--force", is_flag=True, help="run the stages even when nothing they depend on changed")
@click.option("-s", "--single-item", is_flag=True, help="run only the named STAGES, not what they depend on")
def run(stages: tuple[str, ...], dry: bool, force: bool, single_item: bool) -> None:
    """Run the pipeline (or STAGES) with `dvc repro`.

    STAGES run with what they depend on, and the run's summary is printed after. DVC skips every stage whose code, params and inputs are unchanged. Stages: `dvc stage list`.
    The same lock as the Airflow DAG's tasks is held, so a run by hand waits for a scheduled one."""
    root = checkout()
    flags = [flag for flag, on in (("--dry", dry), ("--force", force), ("--single-item", single_item)) if on]
    hint = ("srec run --dry: DVC's dry run cannot plan past a stage whose inputs an earlier stage has not made yet "
            "(as before a first run). `dvc status` lists every stage that is stale.") if dry else None
    with repo_lock(root):  # released on the way out of a failed run's sys.exit too
        call([sys.executable, "-m", "dvc", "repro", *flags, *stages], hint)
    if not dry:
        summary.main(["--reports", str(root / "reports")])


@cli.command()
@click.option("-n", "--num", default=1, show_default=True, help="commits back from HEAD (-1: every commit)")
@click.option("--all", "full", is_flag=True, help="every column (params, every metric), not only the headline")
def runs(num: int, full: bool) -> None:
    """Show past runs: NDCG@10 per model, gate result.

    One row per commit and DVC experiment (`dvc exp show`). The workspace row is the last `srec run`; commit a run (`git add dvc.lock reports ...`) to keep it."""
    checkout()
    columns = [] if full else ["--drop", ".*", "--keep", RUN_COLUMNS]
    call([sys.executable, "-m", "dvc", "exp", "show", "--no-pager", "-n", str(num), *columns])


@cli.command(context_settings=FORWARD, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def land(args: tuple[str, ...]) -> None:
    """Land new interactions: drop, ingest, list, retract, release.

    `srec land --help` is the landing zone's own help."""
    forwarded(landing.main, "srec land", args)


@cli.command()
def models() -> None:
    """List packaged versions, newest first.

    `*` marks the production version."""
    checkout()
    registry.main(["list"])


@cli.command()
@click.argument("tag", required=False)
def show(tag: str | None) -> None:
    """Show a version's metadata.

    Its labels, metadata and model card path (default: production)."""
    checkout()
    registry.main(["show", *([tag] if tag else [])])


@cli.command()
@click.argument("tag", required=False)
@click.option("--open", "launch", is_flag=True, help="open it in the default browser")
def card(tag: str | None, launch: bool) -> None:
    """Where a version's model card is.

    The card is the run report packaged with the version (default: production); `--open` shows it."""
    checkout()
    page = card_path(tag)
    click.echo(page)
    if launch:
        click.launch(str(page))


@stage_main("registry")
def card_path(tag: str | None) -> Path:
    """The model card's path for `tag` (default: production). Raises DataError when there is none."""
    tag = registry.tag_or_production(tag)
    model = registry.get_model(tag)
    page = registry.model_card(model)
    if page is None:
        raise DataError(tag, "was packaged without a run report, so it has no model card",
                        "`srec run` packages the next model with one")
    return page


@cli.command()
@click.argument("tag")
@click.option("--reason", default="manual promotion", show_default=True, help="kept in the registry's events")
def promote(tag: str, reason: str) -> None:
    """Make TAG production.

    TAG is `llmsrec:VERSION`, as `srec models` lists them. Any packaged version may be promoted, e.g. an older
    one; its files are verified first."""
    checkout()
    registry.main(["promote", tag, "--reason", reason])


@cli.command()
def rollback() -> None:
    """Go back to the previous production version.

    That is the version promoted before the current one."""
    checkout()
    registry.main(["rollback"])


@cli.command()
@click.argument("tag", required=False)
def verify(tag: str | None) -> None:
    """Check a version's files.

    Against what was packaged (default: production)."""
    checkout()
    registry.main(["verify", *([tag] if tag else [])])


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="127.0.0.1 is this machine only. Another host without LLMSREC_API_TOKEN_FILE serves anyone who "
              "reaches it, with a warning (docs/serving.md: Exposure)")
@click.argument("bentoml_args", nargs=-1, type=click.UNPROCESSED)
def serve(port: int, host: str, bentoml_args: tuple[str, ...]) -> None:
    """Serve the production model over HTTP.

    This is `bentoml serve` on bentofile.yaml; its OpenAPI page is at /. Other options go to
    `bentoml serve` as typed (see `bentoml serve --help`). The process becomes `bentoml serve`, so a
    signal sent to it (Ctrl-C, SIGTERM) reaches BentoML itself. It then renames itself `circusd`: stop it
    by its pid, since `pkill -f "srec serve"` matches nothing."""
    checkout()
    os.execve(sys.executable, [sys.executable, "-m", "bentoml", "serve", "--host", host, "--port", str(port),
                               *bentoml_args], stage_env())


@cli.command("check-params")
@click.option("--params", default="params.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--schema", is_flag=True, help="print params.yaml's JSON Schema instead")
def check_params(params: str, schema: bool) -> None:
    """Validate params.yaml.

    Checked against its schema (components/config.py); a bad knob is named with its fix."""
    checkout()
    config.main(["--params", params, *(["--schema"] if schema else [])])


@cli.command()
@click.option("--params", default="params.yaml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--apply", is_flag=True, help="run the `airflow pools set` commands (with this shell's AIRFLOW_HOME)")
def pools(params: str, apply: bool) -> None:
    """Airflow pools the DAG needs.

    Prints the `airflow pools set` commands, or runs them with `--apply` (`make airflow` does). A task whose
    pool does not exist is never scheduled."""
    checkout()
    orchestration_cli.main(["pools", "--params", params, *(["--apply"] if apply else [])])


if __name__ == "__main__":
    cli()
