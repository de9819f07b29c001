"""Measuring: `faceverify bench`, `evaluate` and `calibrate`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.settings import Settings

if TYPE_CHECKING:
    from app.scoring.pairs import Pair

from app.cli.common import or_exit


def bench(
    photos: Annotated[
        Path,
        typer.Option(
            help="Folder with obama.jpg, obama3.jpg, biden.jpg, two_people.jpg, obama2.jpg."
        ),
    ] = Path("tests/data"),
    repeats: Annotated[int, typer.Option(help="Timed runs per encoder/pipeline measurement.")] = 30,
    requests: Annotated[int, typer.Option(help="Sequential HTTP requests per photo.")] = 80,
    clients: Annotated[int, typer.Option(help="Concurrent HTTP clients.")] = 8,
    load_requests: Annotated[
        int, typer.Option(help="Requests per concurrent run (12 MP: a quarter).")
    ] = 400,
    sizes: Annotated[
        str, typer.Option(help="Gallery sizes for identify, comma-separated.")
    ] = "10000,100000,1000000",
    json_out: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    skip_http: Annotated[bool, typer.Option(help="Skip the HTTP part.")] = False,
    workers: Annotated[
        int, typer.Option(help="Server worker processes (default: FACEVERIFY_WORKERS).")
    ] = 0,
    audit: Annotated[
        bool,
        typer.Option(
            help="Only the audit trail's cost: /verify on two servers, trail off and on, "
            "requests alternated; every answer and event checked."
        ),
    ] = False,
) -> None:
    """Measure encoder, pipeline, HTTP and 1:N speed; print a table and JSON."""
    from app import bench as bench_module

    bench_module.main(
        photos,
        repeats,
        requests,
        clients,
        [int(s) for s in sizes.split(",")],
        json_out,
        skip_http,
        workers=workers or Settings().workers,
        load_requests=load_requests,
        audit_only=audit,
    )


def evaluate(
    out: Annotated[Path, typer.Option(help="Folder for pairs.tsv, report.json and plots.")],
    pairs: Annotated[Path | None, typer.Option(help="LFW-style pairs file (View 1 or 2).")] = None,
    images: Annotated[
        Path | None, typer.Option(help="Image root for --pairs (NAME/NAME_NNNN.jpg).")
    ] = None,
    identities: Annotated[
        Path | None, typer.Option(help="Folder with one sub-folder per identity.")
    ] = None,
    different: Annotated[
        int, typer.Option(help="With --identities: different-identity pairs.")
    ] = 20_000,
    max_same: Annotated[int, typer.Option(help="With --identities: same pairs per identity.")] = 30,
    seed: Annotated[int, typer.Option(help="With --identities: sampling seed.")] = 0,
    mode: Annotated[
        str,
        typer.Option(
            help="fast: both photos as fast probes; thorough: both as enrollment templates; "
            "mixed: the first photo of each pair as a template, the second as a fast probe; "
            "all: the three from one pass (written to OUT/fast, OUT/thorough, OUT/mixed)."
        ),
    ] = "fast",
    open_set: Annotated[
        bool,
        typer.Option(
            "--open-set",
            help="Open-set identification instead of pairs (needs --identities): per "
            "gallery size, one photo of each of N people enrolled, searched with their "
            "other photos and with photos of people left out; FPIR and FNIR at --fpir, "
            "with 95% intervals, and a DET plot.",
        ),
    ] = False,
    gallery_sizes: Annotated[
        str, typer.Option(help="With --open-set: gallery sizes (people), comma-separated.")
    ] = "100,1000",
    fpir: Annotated[
        str, typer.Option(help="With --open-set: FPIR targets, comma-separated.")
    ] = "0.01,0.001",
    buckets: Annotated[
        bool,
        typer.Option(
            "--buckets",
            help="Accuracy by face size and head pose instead: each pair's second photo, "
            "as a probe, shrunk into a 640x480 frame so its face is each of --widths px "
            "wide; detection rate, FNMR and FMR per face-width and yaw bucket, and a plot.",
        ),
    ] = False,
    widths: Annotated[
        str, typer.Option(help="With --buckets: face widths (px), comma-separated.")
    ] = "80,50,32,20",
    limit: Annotated[
        int, typer.Option(help="Use at most this many pairs (a seeded sample; 0 = all).")
    ] = 0,
) -> None:
    """Accuracy and calibration of the service's pipeline on labelled pairs (or, with
    --open-set, of 1:N searches; with --buckets, by face size and pose)."""
    from app.evaluation import MODES, run_evaluate

    if open_set:
        if limit:
            typer.echo("faceverify: --limit is for pairs, not --open-set", err=True)
            raise typer.Exit(2)
        _open_set(out, identities, gallery_sizes, fpir, seed)
        return
    if buckets:
        _buckets(out, pairs, images, identities, different, max_same, seed, widths, limit)
        return

    if mode not in (*MODES, "all"):
        typer.echo(f"faceverify: --mode must be one of {', '.join(MODES)} or all", err=True)
        raise typer.Exit(2)
    settings = or_exit(Settings)
    pair_list, root = _pairs(pairs, images, identities, different, max_same, seed)
    pair_list = _sampled(pair_list, limit, seed)
    modes = MODES if mode == "all" else tuple(m for m in MODES if m == mode)
    reports = run_evaluate(settings=settings, pairs=pair_list, root=root, out=out, modes=modes)
    for name, rep in reports.items():
        tf, cal = rep["ten_fold"], rep["calibration"]
        missing = "" if rep["curve"]["present"] else " (missing: the fast curve stood in)"
        typer.echo(
            f"mode {name}, curve {rep['curve']['name']}{missing}: "
            f"{rep['pairs']['total']} pairs, {rep['identities']} identities, "
            f"{rep['failure_to_acquire']['images_without_face']} images without a face\n"
            f"  accuracy at {rep['threshold']}: {100 * rep['accuracy_at_threshold']:.2f}%  "
            f"10-fold: {100 * tf['accuracy_mean']:.2f}% +- {100 * tf['accuracy_std']:.2f}  "
            f"EER {100 * rep['eer']['rate']:.2f}%\n"
            f"  calibration {cal['version']}: Brier {cal['brier']:.4f}, log loss "
            f"{cal['log_loss']:.4f}, ECE {cal['ece_10_equal_count_bins']:.4f}"
        )
    typer.echo(f"written to {out}/")


def _sampled(pairs: list[Pair], limit: int, seed: int) -> list[Pair]:
    """At most ``limit`` of ``pairs`` (a seeded sample, in their order; 0 = all)."""
    import random

    if not limit or limit >= len(pairs):
        return pairs
    keep = set(random.Random(seed).sample(range(len(pairs)), limit))
    return [pair for i, pair in enumerate(pairs) if i in keep]


def _buckets(
    out: Path,
    pairs: Path | None,
    images: Path | None,
    identities: Path | None,
    different: int,
    max_same: int,
    seed: int,
    widths: str,
    limit: int,
) -> None:
    from app.evaluation_buckets import run_buckets

    try:
        sizes = tuple(int(w) for w in widths.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 8:
        typer.echo("faceverify: --widths must be whole numbers of at least 8 px", err=True)
        raise typer.Exit(2)
    settings = or_exit(Settings)
    pair_list, _ = _pairs(pairs, images, identities, different, max_same, seed)
    pair_list = _sampled(pair_list, limit, seed)
    report = run_buckets(settings=settings, pairs=pair_list, out=out, widths=sizes, seed=seed)
    typer.echo(
        f"{report['probes']} probes from {report['pairs']} pairs, threshold "
        f"{report['threshold']:g}; written to {out}"
    )
    for key in ("face_width", "yaw_at_least_60px"):
        for name, row in report[key].items():
            rate = "-" if row["detection_rate"] is None else f"{100 * row['detection_rate']:.1f}%"
            fnmr = "-" if row["fnmr"] is None else f"{100 * row['fnmr']:.1f}%"
            fmr = "-" if row["fmr"] is None else f"{100 * row['fmr']:.2f}%"
            typer.echo(
                f"  {name:>12}: {row['probes']:>5} probes, found {rate:>6}, "
                f"FNMR {fnmr:>6}, FMR {fmr:>6}"
            )


def _open_set(out: Path, identities: Path | None, gallery_sizes: str, fpir: str, seed: int) -> None:
    from app.evaluation_openset import run_open_set

    if identities is None:
        typer.echo(
            "faceverify: --open-set needs --identities DIR (one folder per person)", err=True
        )
        raise typer.Exit(2)
    try:
        sizes = [int(x) for x in gallery_sizes.split(",")]
        targets = tuple(float(x) for x in fpir.split(","))
    except ValueError:
        typer.echo("faceverify: --gallery-sizes takes integers, --fpir numbers", err=True)
        raise typer.Exit(2) from None
    if not all(1e-4 <= t <= 0.5 for t in targets) or not all(n >= 2 for n in sizes):
        typer.echo(
            "faceverify: --fpir must lie in [0.0001, 0.5] (what the service decides at), "
            "--gallery-sizes be >= 2",
            err=True,
        )
        raise typer.Exit(2)
    settings = or_exit(Settings)
    report = or_exit(
        lambda: run_open_set(
            settings=settings, root=identities, sizes=sizes, out=out, targets=targets, seed=seed
        )
    )
    for size, rep in report["sizes"].items():
        typer.echo(
            f"N = {size}: {rep['mated_searches']} mated, {rep['non_mated_searches']} "
            f"non-mated searches; rank-1 {100 * rep['rank1_of_mated']:.1f}%"
        )
        for target, at in rep["at_target"].items():
            lo, hi = at["fpir_ci95"]
            flo, fhi = at["fnir_ci95"]
            typer.echo(
                f"  at FPIR {target}: FPIR {100 * at['fpir']:.2f}% [{100 * lo:.2f}, "
                f"{100 * hi:.2f}]  FNIR {100 * at['fnir']:.1f}% [{100 * flo:.1f}, "
                f"{100 * fhi:.1f}]"
            )
        if "probability_ece_balanced" in rep:
            typer.echo(f"  open-set probability ECE {100 * rep['probability_ece_balanced']:.2f}%")
    typer.echo(f"written to {out}/")


def calibrate(
    pairs: Annotated[Path | None, typer.Option(help="LFW-style pairs file (View 1 or 2).")] = None,
    images: Annotated[Path | None, typer.Option(help="Image root for --pairs.")] = None,
    identities: Annotated[
        Path | None, typer.Option(help="Folder with one sub-folder per identity.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write; default the configured calibration file.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name of the data set, recorded in the file.")
    ] = None,
    different: Annotated[
        int, typer.Option(help="With --identities: different-identity pairs.")
    ] = 100_000,
    max_same: Annotated[int, typer.Option(help="With --identities: same pairs per identity.")] = 30,
    seed: Annotated[int, typer.Option(help="With --identities: sampling seed.")] = 0,
) -> None:
    """Fit the distance -> match percent curve on labelled pairs and write it."""
    from app.evaluation import run_calibrate

    settings = or_exit(Settings)
    pair_list, root = _pairs(pairs, images, identities, different, max_same, seed)
    target = out or settings.resolved_calibration_file()
    content = or_exit(
        lambda: run_calibrate(
            settings=settings,
            pairs=pair_list,
            root=root,
            out=target,
            data_name=name or root.name,
        )
    )
    held = content["fit"]["held_out"]
    if not held["folds"]:
        typer.echo(
            f"w={content['params']['w']:.4f} b={content['params']['b']:.4f}; "
            f"{held['note']}\nwritten to {target}"
        )
        return
    typer.echo(
        f"w={content['params']['w']:.4f} b={content['params']['b']:.4f} from "
        f"{content['data']['pairs']} pairs of {content['data']['identities']} identities\n"
        f"held-out identities: logistic log loss {held['logistic']['log_loss']:.4f} ECE "
        f"{held['logistic']['ece']:.4f}; isotonic log loss {held['isotonic']['log_loss']:.4f} "
        f"ECE {held['isotonic']['ece']:.4f}\nwritten to {target}"
    )


def _pairs(
    pairs: Path | None,
    images: Path | None,
    identities: Path | None,
    different: int,
    max_same: int,
    seed: int,
) -> tuple[list[Pair], Path]:
    from app.scoring.pairs import identity_pairs, read_lfw_pairs

    if identities and not pairs:
        return identity_pairs(
            identities, max_same_per_identity=max_same, different=different, seed=seed
        ), identities
    if pairs and images and not identities:
        return read_lfw_pairs(pairs, images), images
    typer.echo("faceverify: give either --pairs FILE --images DIR, or --identities DIR", err=True)
    raise typer.Exit(2)
