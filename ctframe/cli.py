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
    return [os.path.abspath(v) for v in (*args, *kwargs.values()) if isinstance(v, Path)]


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


def _require_folder(root: Path) -> None:
    from ctframe.errors import NoSeriesError

    if not root.exists():
        raise NoSeriesError(f"{root}: no such file or folder")


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message, err=True)


# --------------------------------------------------------------------------- commands


@app.command()
@handle_errors
def scan(
    root: Annotated[Path, typer.Argument(help="Folder tree (or file) of DICOM.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the series table (.csv or .parquet).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Print the series table with QC flags; list files that were skipped."""
    _require_folder(root)
    with _configured(config, quiet):
        import ctframe
        from ctframe.errors import NoSeriesError, ParameterError
        from ctframe.export import atomic_path
        from ctframe.outputs import write_table

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctframe.ScanWarning)  # skipped files are listed below
            catalog = ctframe.scan(root, progress=None if not quiet else False)
        problems = ctframe.problems_table(catalog)
        if catalog.empty:
            raise NoSeriesError(f"no DICOM image found under {root} ({len(problems)} file(s) skipped)")
        table = ctframe.series_table(catalog)
        if output is not None:
            if output.suffix not in (".csv", ".parquet"):
                raise ParameterError(f"{output}: the series table is written as .csv or .parquet; change the suffix")
            with atomic_path(output, overwrite=overwrite) as tmp:
                write_table(table, tmp)
        if not quiet:
            _print_scan(table, catalog, problems)


def _print_scan(table: Any, catalog: Any, problems: Any) -> None:
    import pandas as pd

    shown = table[
        ["stack_key", "modality", "orientation", "n_slices", "spacing_median_mm", "usable", "qc_notes"]
    ].copy()
    shown["stack_key"] = shown["stack_key"].str.slice(-24)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60, "display.max_rows", 500):
        typer.echo(shown.to_string(index=False))
    typer.echo(f"\n{len(table)} stack(s) in {catalog['path'].nunique()} file(s); {len(problems)} file(s) skipped")
    if len(problems):
        kinds = problems["reason"].str.split(r"[;(]", n=1, regex=True).str[0].str.strip().value_counts()
        for kind, n in kinds.items():
            typer.echo(f"  {n:5d} x {kind}")
        for path, reason in problems.head(20).itertuples(index=False):
            typer.echo(f"  skipped {path}: {reason}")
        if len(problems) > 20:
            typer.echo(f"  ... and {len(problems) - 20} more (write them with the Python API: ctframe.problems_table)")


def _scheduler_for(scheduler: str | None, workers: int | None) -> contextlib.AbstractContextManager[Any]:
    from ctframe.errors import ParameterError

    if scheduler and workers:
        raise ParameterError("give either --scheduler or --workers, not both")
    if workers:
        if workers < 1:
            raise ParameterError(f"--workers must be >= 1, got {workers}")

        @contextlib.contextmanager
        def cluster() -> Iterator[Any]:
            from distributed import Client

            from ctframe.execution import local_cluster

            with local_cluster(workers) as lc, Client(lc) as client:
                yield client

        return cluster()
    return contextlib.nullcontext(scheduler)


def run_summarize(
    root: Path,
    outdir: Path,
    *,
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
    _require_folder(root)
    if outdir.exists() and not overwrite:
        from ctframe.errors import OutputExistsError

        raise OutputExistsError(f"{outdir} already exists; choose another folder or pass --overwrite")
    with _configured(config_path, quiet) as cfg:
        import ctframe
        from ctframe.cohort import open_cohort, summarize
        from ctframe.outputs import write_summary

        _say(quiet or not announce, f"scanning {root} ...")
        catalog = ctframe.scan(root, progress=None if not quiet else False, include_phi=include_phi)
        cohort = open_cohort(catalog, include_phi=include_phi)
        _say(quiet, f"{len(cohort.volumes)} series selected from {cohort.series['study_uid'].nunique()} studies")
        with _scheduler_for(scheduler, workers) as sched:
            summary = summarize(cohort, scheduler=sched, progress=not quiet)
            # figures compute inside the block: on the cluster when one was given
            with _default_scheduler(sched):
                write_summary(
                    summary,
                    outdir,
                    catalog=catalog,
                    scan_problems=ctframe.problems_table(catalog),
                    config=cfg,
                    root=root,
                    command=command,
                    scheduler=scheduler or (f"LocalCluster({workers} workers)" if workers else "threads"),
                    overwrite=overwrite,
                    extras=_figures_and_report(summary, cohort, quiet),
                )
    _say(quiet or not announce, f"wrote {outdir}")
    failed = summary.series["outcome"].astype(str).str.startswith("failed")
    if failed.any() and not (summary.series["selected"] & ~failed).any():  # nothing succeeded: bad input
        from ctframe.errors import NoSeriesError

        raise NoSeriesError(
            f"none of the {int(failed.sum())} selected stack(s) could be read; "
            f"the reasons are in {outdir / 'problems.csv'}"
        )
    return outdir


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
    root: Annotated[Path, typer.Argument(help="Folder tree of DICOM studies.")],
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
    quiet: QuietOption = False,
) -> None:
    """Run the whole pipeline (HU, lungs, tables, figures, report) into OUTDIR, de-identified (see README, Privacy)."""
    run_summarize(
        root, outdir, config_path=config, scheduler=scheduler, workers=workers, overwrite=overwrite, quiet=quiet,
        include_phi=include_phi,
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
    root: Annotated[Path, typer.Argument(help="Folder (or file) holding the series.")],
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
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    config: ConfigOption = None,
    quiet: QuietOption = False,
) -> None:
    """Export one volume (HU by default) with its geometry."""
    fmt, fill, outputs = _export_plan(
        output, format, fill_value=fill_value, resample_mm=resample_mm, stored=stored, labels=labels,
        overwrite=overwrite,
    )  # fmt: skip
    _require_folder(root)
    with _configured(config, quiet):
        import ctframe
        from ctframe import export as writers

        try:
            volume = ctframe.open_series(root, series=series)
        except ctframe.MultipleSeriesError as exc:
            count = str(exc).split(" holds ", 1)[-1].split(";", 1)[0]
            raise ctframe.MultipleSeriesError(
                f"{root} holds {count}; choose one with --series KEY (`ctframe scan {root}` lists the keys)"
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


def run() -> None:  # pragma: no cover - console-script entry point
    """Entry point of the ``ctframe`` console script."""
    app(prog_name="ctframe")
