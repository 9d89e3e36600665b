"""The ``ctframe`` command line: scan, summarize, demo, export, show-config.

No command ends in a traceback unless asked to. It ends with status 0, or with
exactly one ``ctframe: error: ...`` line on stderr and one of these statuses:

* **2, bad input**: a :class:`~ctframe.errors.CTFrameError` (bad path, bad
  config, no CT series, output exists, unreadable or corrupt DICOM...), or an
  ``OSError`` of the operating system that is about the user's side of the run:
  a missing or unreadable path (``FileNotFoundError``, ``PermissionError``,
  ``IsADirectoryError``, ``NotADirectoryError``, ``FileExistsError``, a name too
  long, a link loop) at, inside or above a path given on the command line, or a
  full disk, a quota, a read-only file system or an I/O error anywhere. The
  same errno on a path the user did not give (a file ctframe ships, say) is a
  bug.
* **1, a bug**: any other exception, whatever its class (a ``ValueError`` or an
  ``OSError`` raised by ctframe's own code included). The line says that it is
  an internal error, names the exception class, and says to rerun with
  ``ctframe --debug ...``, which shows the traceback.
* **130**: interrupted (Ctrl-C); **141**, silently, when the reader of stdout has
  gone (``ctframe scan ROOT | head``).

Heavy libraries are imported inside the commands so ``ctframe --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(
    name="ctframe",
    help="CT analytics at cohort scale: scan DICOM folders, summarise cohorts, export volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR, EXIT_BUG, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 1, 130, 141
_state: dict[str, bool] = {"debug": False}

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file overriding configs/default.yaml.", show_default=False)
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages, only errors.")]


def _fail(message: str, code: int = EXIT_ERROR) -> None:
    typer.echo(f"ctframe: error: {message.splitlines()[0] if message else 'failed'}", err=True)
    raise typer.Exit(code)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has exited; if so, silence it for the rest of the run."""
    import os
    import select
    import sys

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file descriptor (tests, notebooks)
        return False
    if gone:  # the interpreter's final flush would fail again and print a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return gone


#: Errors of the machine, not of a path: the user's to fix wherever they happen.
_MACHINE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EIO") if hasattr(errno, name)
)
#: Errors about one path: the user's to fix when the path is theirs.
_PATH_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOENT", "EACCES", "EPERM", "EISDIR", "ENOTDIR", "EEXIST", "ENAMETOOLONG", "ELOOP", "ENOTEMPTY")
    if hasattr(errno, name)
)


def _related(path: str, given: str) -> bool:
    """Whether `path` is `given`, lies inside it, or is one of its parent folders."""
    try:
        common = os.path.commonpath([path, given])
    except ValueError:  # different drives, or a relative and an absolute path
        return False
    return common in (path, given)


def _users_os_error(exc: BaseException, given_paths: list[str]) -> bool:
    """Whether `exc` is an ``OSError`` about the user's input/output or machine, not a ctframe bug."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _MACHINE_ERRNOS:
        return True
    if exc.errno not in _PATH_ERRNOS:
        return False
    names = [os.path.abspath(os.fsdecode(f)) for f in (exc.filename, exc.filename2) if f is not None]
    return any(_related(name, given) for name in names for given in given_paths)


def _given_paths(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    from ctframe.sources import location_kind

    paths = [os.path.abspath(v) for v in (*args, *kwargs.values()) if isinstance(v, Path)]
    source = kwargs.get("root")  # SOURCE arguments are strings (they may be URLs)
    if isinstance(source, str) and source and location_kind(source) == "local":
        paths.append(os.path.abspath(source))
    return paths


def _bug_line(exc: BaseException, command: str) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    notes = "; ".join(str(n).splitlines()[0] for n in getattr(exc, "__notes__", ()) if str(n))
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return (
        f"internal error in ctframe (a bug, please report it): {detail}{f' ({notes})' if notes else ''}; "
        f"rerun as `ctframe --debug {command} ...` to see the traceback"
    )


def handle_errors(func: F) -> F:
    """Turn every exception of a command into one line on stderr and an exit status (see the module docstring)."""
    command = func.__name__.replace("_", "-")

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ctframe.errors import CTFrameError

        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except CTFrameError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; nothing was written", EXIT_INTERRUPTED)
        except BrokenPipeError as exc:
            if _stdout_reader_gone():  # `ctframe scan ROOT | head`: stop quietly, as Unix tools do
                raise typer.Exit(EXIT_BROKEN_PIPE) from None
            _fail(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            if _users_os_error(exc, _given_paths(args, kwargs)):
                _fail(f"{type(exc).__name__}: {exc}")
            if _state["debug"]:
                raise
            _fail(_bug_line(exc, command), EXIT_BUG)

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an internal error (a bug).")] = False,
) -> None:
    """CT analytics at cohort scale."""
    _state["debug"] = debug


@contextlib.contextmanager
def _configured(config: Path | None, quiet: bool) -> Iterator[dict[str, Any]]:
    from ctframe.config import config_context, load_config

    cfg = load_config(config)
    with config_context(cfg) as active, warnings.catch_warnings():
        warnings.simplefilter("ignore" if quiet else "default")
        if not quiet:
            warnings.showwarning = _one_line_warning
        yield active


def _one_line_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    typer.echo(f"ctframe: warning: {str(message).splitlines()[0]}", err=True)


def _require_folder(root: str | Path) -> None:
    """A local source must exist before any work (remote ones are checked by their first request)."""
    from ctframe.errors import NoSeriesError
    from ctframe.sources import local_path, location_kind

    if location_kind(str(root)) == "local" and not Path(local_path(str(root))).exists():
        raise NoSeriesError(f"{root}: no such file or folder")


SourceArgument = Annotated[
    str,
    typer.Argument(
        help="Where the DICOM is: a folder or file, an fsspec URL (s3://bucket/prefix, gs://..., https://...), "
        "a DICOMweb service root (dicomweb+http://host:port/dicom-web[?QIDO query]) or a .parquet catalog "
        "written by `ctframe scan --catalog`.",
        metavar="SOURCE",
        show_default=False,
    ),
]
StorageOption = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        help="fsspec option of a remote SOURCE, repeatable (anon=true; client_kwargs.endpoint_url=http://...). "
        "Credentials are better left to the environment or config files of the filesystem.",
        show_default=False,
    ),
]


def _storage_options(pairs: list[str] | None) -> dict[str, Any] | None:
    """``--storage-option KEY=VALUE`` pairs as a dict.

    Dotted keys nest (``client_kwargs.endpoint_url=...``); ``true``, ``false``,
    ``null`` and numbers convert; a quoted value stays text (``secret='12345'``).
    """
    from ctframe.errors import ParameterError

    if not pairs:
        return None
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ParameterError(f"--storage-option {pair.split('=', 1)[0]!r}: write it as KEY=VALUE")
        node = options
        *parents, leaf = key.strip().split(".")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ParameterError(f"--storage-option {key!r}: {name} is given both as a value and as a group")
        node[leaf] = _option_value(text)
    return options


def _option_value(text: str) -> Any:
    """An option's value from its text (see :func:`_storage_options`)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    words = {"true": True, "false": False, "null": None}
    if text.lower() in words:
        return words[text.lower()]
    for number in (int, float):
        try:
            value = number(text)
        except ValueError:
            continue
        if value == value and abs(value) != float("inf"):  # "nan" and "inf" stay text
            return value
    return text


def _shown(root: str | Path) -> str:
    """A source as messages show it (no credentials, no query values)."""
    from ctframe.sources import redact

    return redact(str(root))


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message, err=True)


# --------------------------------------------------------------------------- commands


TABLE_SUFFIXES = (".csv", ".parquet")


def _table_path(path: Path | None, option: str, what: str, overwrite: bool) -> None:
    """Check an output table's path before any work: a .csv or .parquet name, not there unless --overwrite."""
    from ctframe.errors import OutputExistsError, ParameterError

    if path is None:
        return
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ParameterError(f"{option} {str(path)!r}: {what} is written as .csv or .parquet; change the suffix")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another path or pass --overwrite")


def _no_dicom(root: str | Path, n_skipped: int) -> str:
    """The one CLI wording for a tree without any DICOM image."""
    root = _shown(root)
    if not n_skipped:
        return f"no DICOM image found under {root} (no files there)"
    return (
        f"no DICOM image found under {root} ({n_skipped} file(s) skipped); "
        f"`ctframe scan {root} --problems problems.csv` writes each file and reason"
    )


def _elapsed(start: float) -> str:
    import time

    seconds = time.monotonic() - start
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _scan_stage(
    root: str | Path,
    *,
    quiet: bool,
    include_phi: bool = False,
    storage_options: dict[str, Any] | None = None,
    catalog_path: Path | None = None,
) -> Any:
    """Scan `root` for the CLI (or read the .parquet catalog it names), saying what it found.

    A bar on a terminal, else one line with counts and elapsed time.
    """
    import sys
    import time

    import ctframe
    from ctframe.io import catalog_for

    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.ScanWarning)  # the CLI says it in its own words
        if str(root).endswith(".parquet") and catalog_path is None:
            catalog = catalog_for(str(root), include_phi=include_phi, storage_options=storage_options)
        else:
            catalog = ctframe.scan(
                str(root),
                progress=not quiet and sys.stderr.isatty(),
                include_phi=include_phi,
                storage_options=storage_options,
                catalog=catalog_path,
            )
    n_skipped = len(catalog.attrs.get("problems", ()))
    n_files = catalog["path"].nunique() if len(catalog) else 0
    n_stacks = catalog["stack_key"].nunique() if len(catalog) else 0
    changes = catalog.attrs.get("scan_changes")
    delta = (
        f" (catalog {catalog_path}: {changes['new']} new, {changes['changed']} changed, {changes['removed']} gone, "
        f"{changes['unchanged']} unchanged)"
        if changes
        else ""
    )
    _say(quiet, f"scanned {_shown(root)}: {n_files} DICOM file(s), {n_stacks} stack(s), {n_skipped} file(s) skipped, "
                f"{_elapsed(start)}{delta}")  # fmt: skip
    return catalog


@app.command()
@handle_errors
def scan(
    root: SourceArgument,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the series table (.csv or .parquet).")
    ] = None,
    problems_path: Annotated[
        Path | None,
        typer.Option(
            "--problems",
            metavar="PATH",
            help="Write the skipped files and the reason for each (.csv or .parquet).",
            show_default=False,
        ),
    ] = None,
    catalog_path: Annotated[
        Path | None,
        typer.Option(
            "--catalog",
            metavar="PATH",
            help="Keep the catalog in this .parquet file: the next scan reads only new or changed files "
            "and drops those that are gone.",
            show_default=False,
        ),
    ] = None,
    storage_option: StorageOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Print the series table with QC flags and each stack's key and folder; list files that were skipped.

    The keys printed are what `ctframe export --series` takes (a unique start of one is enough).
    """
    options = _storage_options(storage_option)
    if catalog_path is not None and catalog_path.suffix.lower() != ".parquet":
        from ctframe.errors import ParameterError

        raise ParameterError(f"--catalog {str(catalog_path)!r}: the catalog is a .parquet file; change the suffix")
    _table_path(output, "--output", "the series table", overwrite)
    _table_path(problems_path, "--problems", "the problems table", overwrite)
    if output is not None and problems_path is not None and output.resolve() == problems_path.resolve():
        from ctframe.errors import ParameterError

        raise ParameterError("--output and --problems name the same file; give each its own")
    _require_folder(root)
    with _configured(config, quiet):
        import ctframe
        from ctframe.errors import NoSeriesError
        from ctframe.export import atomic_path
        from ctframe.outputs import write_table

        catalog = _scan_stage(root, quiet=quiet, storage_options=options, catalog_path=catalog_path)
        problems = ctframe.problems_table(catalog)
        if problems_path is not None:  # written even when nothing was found: it says why
            with atomic_path(problems_path, overwrite=overwrite) as tmp:
                write_table(problems, tmp)
        if catalog.empty:
            raise NoSeriesError(_no_dicom(root, len(problems)))
        table = ctframe.series_table(catalog)
        if output is not None:
            with atomic_path(output, overwrite=overwrite) as tmp:
                write_table(table, tmp)
        if not quiet:
            _print_scan(table, catalog, problems, root=root, problems_path=problems_path)


def _print_scan(table: Any, catalog: Any, problems: Any, *, root: str, problems_path: Path | None) -> None:
    import pandas as pd

    shown = table[
        ["stack_key", "folder", "modality", "orientation", "n_slices", "spacing_median_mm", "usable", "qc_notes"]
    ]
    with pd.option_context(
        "display.width", 250, "display.max_colwidth", 80, "display.max_rows", 10_000, "display.max_columns", 20
    ):
        left = {c: f"{{:<{shown[c].astype(str).str.len().max()}}}".format for c in ("stack_key", "folder")}
        typer.echo(shown.to_string(index=False, formatters=left, justify="left"))
    typer.echo(f"\n{len(table)} stack(s) in {catalog['path'].nunique()} file(s); {len(problems)} file(s) skipped")
    typer.echo(f"choose a stack with `ctframe export {_shown(root)} --series KEY` (a unique start of a key is enough)")
    if len(problems):
        kinds = problems["reason"].str.split(r"[;(]", n=1, regex=True).str[0].str.strip().value_counts()
        for kind, n in kinds.items():
            typer.echo(f"  {n:5d} x {kind}")
        for path, reason in problems.head(20).itertuples(index=False):
            typer.echo(f"  skipped {path}: {reason}")
        if len(problems) > 20 and problems_path is None:
            typer.echo(f"  ... and {len(problems) - 20} more (add --problems problems.csv to write them all)")
        elif len(problems) > 20:
            typer.echo(f"  ... and {len(problems) - 20} more, all in {problems_path}")


#: Seconds to wait for the scheduler given with --scheduler before giving up (checked before any work).
SCHEDULER_TIMEOUT_S = 10.0
#: The local schedulers --scheduler also takes by name.
LOCAL_SCHEDULERS = ("threads", "synchronous", "processes")


def _check_execution(scheduler: str | None, workers: int | None) -> None:
    """Check --scheduler and --workers before any work (no connection yet)."""
    from ctframe.errors import ParameterError

    if scheduler is not None and workers is not None:
        raise ParameterError("give either --scheduler or --workers, not both")
    if workers is not None and workers < 1:
        raise ParameterError(f"--workers must be a number of worker processes, 1 or more, got {workers}")
    if scheduler is not None and "://" not in scheduler and scheduler not in LOCAL_SCHEDULERS:
        raise ParameterError(
            f"--scheduler takes a dask.distributed scheduler address such as tcp://10.0.0.5:8786 "
            f"(or one of {', '.join(LOCAL_SCHEDULERS)}), got {scheduler!r}"
        )


def _check_reachable(scheduler: str | None) -> None:
    """Check that something listens at a tcp:// or tls:// --scheduler address (a plain socket, no threads left)."""
    import socket
    from urllib.parse import urlsplit

    from ctframe.errors import ParameterError

    if scheduler is None or not scheduler.startswith(("tcp://", "tls://")):
        return
    try:
        parts = urlsplit(scheduler)
        host, port = parts.hostname, parts.port or 8786
    except ValueError as exc:  # a port that is not a number
        raise ParameterError(f"--scheduler {scheduler}: not an address such as tcp://10.0.0.5:8786 ({exc})") from None
    try:
        with socket.create_connection((host or "localhost", port), timeout=SCHEDULER_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or f"no answer within {SCHEDULER_TIMEOUT_S:g} s"
        raise ParameterError(_unreachable(scheduler, reason)) from None


def _unreachable(scheduler: str, reason: str) -> str:
    """The one CLI wording for a --scheduler address where no dask scheduler answers."""
    return (
        f"--scheduler {scheduler}: no dask scheduler answers there ({reason}); "
        "start one with `dask scheduler`, or leave out --scheduler to run locally"
    )


@contextlib.contextmanager
def _execution(scheduler: str | None, workers: int | None, *, quiet: bool) -> Iterator[Any]:
    """Yield what ``summarize(scheduler=...)`` takes: a connected Client, a local scheduler's name, or None.

    Entered after the scan (whose worker processes fork best before any
    thread starts); :func:`_check_reachable` has checked the address before it.
    """
    from ctframe.errors import ParameterError

    _check_execution(scheduler, workers)
    if workers is None and (scheduler is None or "://" not in scheduler):
        yield scheduler
        return
    from distributed import Client

    from ctframe.execution import local_cluster

    if workers is not None:
        with local_cluster(workers, dashboard_address=":0") as lc, Client(lc, set_as_default=False) as client:
            _say(quiet, f"local cluster of {workers} worker process(es); dashboard {client.dashboard_link}")
            yield client
        return
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S, set_as_default=False)
    except (OSError, ValueError) as exc:  # OSError covers timeouts; ValueError a malformed address
        reason = str(exc).splitlines()[0] if str(exc) else f"no answer within {SCHEDULER_TIMEOUT_S:g} s"
        raise ParameterError(_unreachable(scheduler, reason)) from None
    try:
        _say(quiet, f"connected to the dask scheduler at {scheduler}; dashboard {client.dashboard_link}")
        yield client
    finally:
        client.close()


def run_summarize(
    root: str | Path,
    outdir: Path,
    *,
    storage_options: dict[str, Any] | None = None,
    config_path: Path | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    include_phi: bool = False,
    command: str = "ctframe summarize",
    announce: bool = True,
) -> Path:
    """The summarize pipeline (also used by ``ctframe demo``, which announces its own paths)."""
    import time

    from ctframe.errors import NoSeriesError, OutputExistsError

    _check_execution(scheduler, workers)
    _require_folder(root)
    if outdir.exists() and not overwrite:
        raise OutputExistsError(f"{outdir} already exists; choose another folder or pass --overwrite")
    _check_reachable(scheduler)
    with _configured(config_path, quiet) as cfg:
        import ctframe
        from ctframe.cohort import open_cohort, summarize
        from ctframe.outputs import write_summary

        catalog = _scan_stage(
            root, quiet=quiet or not announce, include_phi=include_phi, storage_options=storage_options
        )
        problems = ctframe.problems_table(catalog)
        if catalog.empty:
            raise NoSeriesError(_no_dicom(root, len(problems)))
        try:
            cohort = open_cohort(catalog, include_phi=include_phi)
        except NoSeriesError:  # images were found (checked above): none passes the selection rule
            raise NoSeriesError(
                f"none of the {catalog['stack_key'].nunique()} stack(s) under {_shown(root)} passes the "
                f"series-selection rule (CT, axial, not a localizer...); `ctframe scan {_shown(root)}` shows each "
                "stack's QC flags, and the "
                "'selection' section of a --config file sets the rule (see `ctframe show-config`)"
            ) from None
        _say(quiet, f"{len(cohort.volumes)} series selected from {cohort.series['study_uid'].nunique()} studies")
        with _execution(scheduler, workers, quiet=quiet) as sched:
            start = time.monotonic()
            with _stack_warnings_counted(outdir, quiet=quiet):
                summary = summarize(cohort, scheduler=sched, progress=not quiet)
            _say(quiet, f"computed the cohort tables in {_elapsed(start)}")
            start = time.monotonic()
            # figures compute inside the block: on the cluster when one was given
            with _default_scheduler(sched):
                write_summary(
                    summary,
                    outdir,
                    catalog=catalog,
                    scan_problems=problems,
                    config=cfg,
                    root=str(root),
                    command=command,
                    scheduler=scheduler or (f"LocalCluster({workers} workers)" if workers else "threads"),
                    overwrite=overwrite,
                    extras=_figures_and_report(summary, cohort, quiet),
                )
    if len(problems):
        _say(quiet, f"{len(problems)} file(s) skipped by the scan; each one and why is in {outdir / 'problems.csv'}")
    _say(quiet or not announce, f"wrote {outdir} (tables, figures and report) in {_elapsed(start)}")
    if include_phi:
        _say(quiet, f"{outdir / 'linkage.csv'} holds the original identifiers: keep it apart from the shared tables")
    failed = summary.series["outcome"].astype(str).str.startswith("failed")
    if failed.any() and not (summary.series["selected"] & ~failed).any():  # nothing succeeded: bad input
        raise NoSeriesError(
            f"none of the {int(failed.sum())} selected stack(s) could be read; "
            f"the reasons are in {outdir / 'problems.csv'}"
        )
    return outdir


@contextlib.contextmanager
def _stack_warnings_counted(outdir: Path, *, quiet: bool) -> Iterator[None]:
    """One line for the cohort's per-stack warnings (each is a row of problems.csv); others pass through."""
    from ctframe.errors import CohortWarning

    with warnings.catch_warnings(record=True) as caught:
        if not quiet:
            warnings.simplefilter("always", CohortWarning)
        yield
    per_stack = [w for w in caught if issubclass(w.category, CohortWarning)]
    for w in caught:
        if w not in per_stack:
            _one_line_warning(w.message, w.category)
    if per_stack and not quiet:
        typer.echo(
            f"ctframe: warning: {len(per_stack)} stack(s) skipped or measured as the whole scan only "
            f"(no lungs or body); each one and why is in {outdir / 'problems.csv'}",
            err=True,
        )


@contextlib.contextmanager
def _default_scheduler(scheduler: Any) -> Iterator[None]:
    """Make `scheduler` (a Client or an address) the default for plain ``.compute()`` calls."""
    from ctframe.execution import scheduler_client

    with scheduler_client(scheduler) as client:
        if client is None:
            yield
            return
        import dask

        with dask.config.set(scheduler=client):
            yield


def _figures_and_report(summary: Any, cohort: Any, quiet: bool) -> Callable[[Path], None] | None:
    try:
        from ctframe.report import write_figures_and_report
    except ImportError:  # pragma: no cover - the report module ships with ctframe
        return None
    return lambda folder: write_figures_and_report(summary, cohort, folder)


@app.command()
@handle_errors
def summarize(
    root: SourceArgument,
    outdir: Annotated[Path, typer.Option("--output", "-o", help="Output folder (must not exist).")],
    config: ConfigOption = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a dask.distributed scheduler, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Run on a local cluster of N worker processes.")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing output folder (once the new one is complete).")
    ] = False,
    include_phi: Annotated[
        bool,
        typer.Option(
            "--keep-identifiers",
            "--include-phi",
            help="Also write linkage.csv: pseudonymous keys beside the original PatientID, name, UIDs and dates "
            "(the shared tables stay de-identified; keep linkage.csv apart). --include-phi is the old name.",
        ),
    ] = False,
    storage_option: StorageOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run the whole pipeline (HU, lungs, tables, figures, report) into OUTDIR, de-identified (see README, Privacy)."""
    run_summarize(
        root, outdir, config_path=config, scheduler=scheduler, workers=workers, overwrite=overwrite, quiet=quiet,
        include_phi=include_phi, storage_options=_storage_options(storage_option),
    )  # fmt: skip


@app.command()
@handle_errors
def demo(
    outdir: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the phantom DICOM and the summary.")
    ] = Path("ctframe-demo"),
    patients: Annotated[int, typer.Option(help="Phantom patients.", min=1, max=50)] = 3,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Write a small phantom cohort (two time points per patient) and summarise it."""
    from ctframe.errors import OutputExistsError

    if outdir.exists() and not overwrite:
        raise OutputExistsError(f"{outdir} already exists; choose another folder or pass --overwrite")
    from ctframe.export import atomic_path
    from ctframe.testing import write_phantom_cohort

    _say(quiet, f"writing a phantom cohort of {patients} patients x 2 studies ...")
    with atomic_path(outdir, overwrite=overwrite) as tmp:
        write_phantom_cohort(tmp / "dicom", n_patients=patients, n_time_points=2)
        run_summarize(tmp / "dicom", tmp / "summary", quiet=quiet, command="ctframe demo", announce=False)
    _say(quiet, f"demo done: DICOM in {outdir / 'dicom'}, summary in {outdir / 'summary'} (open report.html)")


def _export_plan(
    output: Path,
    format: str | None,
    *,
    fill_value: float | None,
    resample_mm: float | None,
    stored: bool,
    labels: bool,
    overwrite: bool,
) -> tuple[str, float, list[Path]]:
    """Check the export options before any work: the format, the fill, the resampling, existing outputs."""
    import math

    from ctframe.errors import OutputExistsError, ParameterError
    from ctframe.export import FORMAT_SUFFIXES, format_for_path

    suffixes = ", ".join(f"{s} ({fmt})" for fmt, group in FORMAT_SUFFIXES.items() for s in group)
    if format is not None and format not in FORMAT_SUFFIXES:
        raise ParameterError(f"--format must be one of {', '.join(FORMAT_SUFFIXES)}, got {format!r}")
    found = format_for_path(output)
    if found is None:
        raise ParameterError(f"--output {output.name!r} has no known suffix; end it in {suffixes}")
    if format is not None and format != found:
        raise ParameterError(
            f"--format {format} does not match --output {output.name!r} (a {found} name); "
            f"end the output in {' or '.join(FORMAT_SUFFIXES[format])}, or leave out --format"
        )
    if fill_value is not None and math.isinf(fill_value):
        raise ParameterError(f"--fill-value must be a finite number or nan, got {fill_value}")
    fill = fill_value if fill_value is not None else (-1024.0 if found == "nifti" else math.nan)
    if resample_mm is not None and not (math.isfinite(resample_mm) and resample_mm > 0):
        raise ParameterError(f"--resample-mm must be a positive number of mm, got {resample_mm}")
    if resample_mm is not None and stored:
        raise ParameterError("--resample-mm resamples HU; leave out --stored to use it")
    outputs = [output]
    if labels and found == "nifti":
        cut = len(next(s for s in sorted(FORMAT_SUFFIXES["nifti"], key=len, reverse=True)
                       if output.name.lower().endswith(s)))  # fmt: skip
        outputs.append(output.with_name(f"{output.name[:-cut]}_labels{output.name[-cut:]}"))
    for path in outputs:
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; choose another path or pass --overwrite")
    return found, fill, outputs


@app.command()
@handle_errors
def export(
    root: SourceArgument,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output path: .nii or .nii.gz (NIfTI), .zarr (Zarr), .nc (NetCDF).")
    ],
    series: Annotated[
        str | None, typer.Option(help="Stack key or SeriesInstanceUID (needed when ROOT has several).")
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="nifti, zarr or netcdf; must match the suffix of --output (default: from the suffix).",
            show_default=False,
        ),
    ] = None,
    fill_value: Annotated[
        float | None,
        typer.Option(
            "--fill-value",
            help="Value written for NaN voxels (padding, outside the scan circle), or nan "
            "(default: -1024 for NIfTI, nan for Zarr and NetCDF).",
            show_default=False,
        ),
    ] = None,
    resample_mm: Annotated[
        float | None,
        typer.Option(
            "--resample-mm",
            metavar="MM",
            help="Resample HU onto slices MM apart along the slice normal: "
            "for a NIfTI of a stack with gaps, irregular spacing or gantry tilt, which is refused otherwise.",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        bool, typer.Option("--labels", help="Add the lung labels (zarr/netcdf: a variable; nifti: a second file).")
    ] = False,
    stored: Annotated[bool, typer.Option("--stored", help="Export stored values instead of HU.")] = False,
    storage_option: StorageOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Export one volume (HU by default) with its geometry."""
    options = _storage_options(storage_option)
    fmt, fill, outputs = _export_plan(
        output, format, fill_value=fill_value, resample_mm=resample_mm, stored=stored, labels=labels,
        overwrite=overwrite,
    )  # fmt: skip
    _require_folder(root)
    with _configured(config, quiet):
        import ctframe
        from ctframe import export as writers

        try:
            volume = ctframe.open_series(root, series=series, storage_options=options)
        except ctframe.MultipleSeriesError as exc:
            count = str(exc).split(" holds ", 1)[-1].split(";", 1)[0]
            raise ctframe.MultipleSeriesError(
                f"{_shown(root)} holds {count}; choose one with --series KEY "
                f"(`ctframe scan {_shown(root)}` lists the keys)"
            ) from None
        if fmt == "nifti" and resample_mm is None and (problem := writers.grid_problem(volume)) is not None:
            raise ctframe.ParameterError(
                f"the series is not one NIfTI grid ({problem[0]}: {problem[1]}); "
                "pass --resample-mm MM to resample it onto a regular grid, or export to .zarr or .nc, "
                "which keep each slice's position"
            )
        data = volume if stored else ctframe.to_hu(volume)
        if resample_mm is not None:
            data = writers.resample_slices(data, resample_mm)
        label_volume = None
        if labels:
            from ctframe.segment import lung_mask

            label_volume = lung_mask(data if not stored else ctframe.to_hu(volume))
        if fmt == "nifti":
            writers.to_nifti(data, output, fill_value=fill, overwrite=overwrite)
            if label_volume is not None:
                writers.to_nifti(label_volume, outputs[1], overwrite=overwrite)
        elif fmt == "zarr":
            writers.to_zarr(data, output, labels=label_volume, fill_value=fill, overwrite=overwrite)
        else:
            writers.to_netcdf(data, output, labels=label_volume, fill_value=fill, overwrite=overwrite)
    _say(quiet, f"wrote {', '.join(str(p) for p in outputs)}")


@app.command("show-config")
@handle_errors
def show_config(config: ConfigOption = None) -> None:
    """Print the merged configuration (defaults plus --config) as YAML."""
    import yaml

    from ctframe.config import load_config

    typer.echo(yaml.safe_dump(load_config(config), sort_keys=False).rstrip())


def _click_exceptions() -> tuple[type[Exception], type[Exception]]:
    """Click's ``ClickException`` and ``NoArgsIsHelpError`` (typer vendors click from 0.26 on)."""
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:  # pragma: no cover - typer before it vendored click
        from click.exceptions import ClickException

        NoArgsIsHelpError = ClickException
    return ClickException, NoArgsIsHelpError


def run(argv: list[str] | None = None) -> None:
    """Entry point of the ``ctframe`` console script.

    Usage errors (an unknown option, a value that is not a number, one out of
    range...) are one ``ctframe: error:`` line with status 2, like every other
    bad input; the line names the ``--help`` to read.
    """
    import sys

    click_exception, no_args_is_help = _click_exceptions()
    try:
        code = app(args=argv, prog_name="ctframe", standalone_mode=False)
    except no_args_is_help as exc:  # `ctframe` alone: the help, as no_args_is_help promises
        typer.echo(exc.format_message(), err=True)  # type: ignore[attr-defined]
        sys.exit(EXIT_ERROR)
    except click_exception as exc:
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path} --help" if ctx is not None else "ctframe --help"
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"ctframe: error: {message} (see `{where}`)", err=True)
        sys.exit(getattr(exc, "exit_code", EXIT_ERROR))
    except typer.Abort:  # Ctrl-C while click itself was reading
        typer.echo("ctframe: error: interrupted; nothing was written", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
