"""``python -m farm``: assets, specs, motion statistics, original-config import, previews, and
finished datasets: index files, shards (pack/unpack), verification and tool views.

Rendering is the worker's: ``python -m worker render`` / ``python -m worker demo``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from farm.assets.library import AssetError, AssetLibrary, read_denylist
from farm.assets.roots import asset_roots, library_at
from farm.io.splits import SplitOptions, split_options, split_opts
from farm.io.storage import Storage, StorageError, open_location
from farm.model.presets import load_preset
from farm.model.spec import SpecError, save_spec
from farm.settings import ConfigError, current, markdown_table


def open_library(args: argparse.Namespace) -> AssetLibrary:
    """The library of ``--models``/``--textures`` (or the procedural pack), with ``--denylist``."""
    return library_at(args.models, args.textures, args.denylist)


def cmd_assets_synth(args: argparse.Namespace) -> int:
    from farm.assets.procedural import synthesize

    models, textures = synthesize(args.out, seed=args.seed)
    lib = AssetLibrary.open(models, textures)
    print(f"wrote {len(lib.models)} models to {models}, {len(lib.textures)} textures and "
          f"{len(lib.skyboxes)} backgrounds to {textures}")
    return 0


def cmd_assets_check(args: argparse.Namespace) -> int:
    from farm.assets.check import check_library, write_denylist

    lib = AssetLibrary.open(*asset_roots(args.models, args.textures))
    total = len(lib.models) + len(lib.textures) + len(lib.skyboxes)
    t0 = time.perf_counter()
    with tqdm(total=total, unit="asset", disable=args.quiet) as bar:
        problems = check_library(lib, args.workers, progress=bar.update)
    for p in sorted(problems, key=lambda p: (p.warning, p.item)):
        print(f"{p.item}: {'warning: ' if p.warning else ''}{p.reason}")
    out = Path(args.out)
    write_denylist(problems, out)
    warnings = sum(p.warning for p in problems)
    print(f"checked {total} assets in {time.perf_counter() - t0:.1f} s: "
          f"{len(problems) - warnings} problems (denied), {warnings} warnings; denylist written "
          f"to {out} (use --denylist {out} or FARM_DENYLIST={out})")
    return 0


def cmd_assets_index(args: argparse.Namespace) -> int:
    """Write a folder's manifest; print what was found and what was skipped, and why."""
    from farm.assets.indexer import index_folder
    from farm.assets.manifest import write_manifest

    root = Path(args.dir)
    t0 = time.perf_counter()
    result = index_folder(root, args.layout, args.category, args.license, args.up_axis)
    for rel, reason in result.skipped:
        print(f"skipped {rel}: {reason}")
    if not result.rows:
        raise AssetError(f"no usable meshes under {root} ({result.summary()})")
    out = Path(args.out) if args.out else root / "farm_manifest.jsonl"
    write_manifest(result.rows, out)
    print(f"{result.summary()}; manifest written to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_specs(args: argparse.Namespace) -> int:
    from farm.generate.specgen import write_many

    lib, preset = open_library(args), load_preset(args.preset)
    out = Path(args.out)
    indices = list(range(args.start, args.start + args.count))
    t0 = time.perf_counter()
    failed_gate = 0
    with tqdm(total=len(indices), unit="spec", disable=args.quiet) as bar:
        for written, failed in write_many(lib, preset, args.segment, indices, args.seed, out,
                                          workers=args.workers,
                                          denylist=read_denylist(args.denylist)):
            failed_gate += failed
            bar.update(written)
    dt = time.perf_counter() - t0
    print(f"wrote {len(indices)} specs to {out} in {dt:.2f} s ({len(indices) / dt:.0f} specs/s)"
          + (f"; {failed_gate} did not pass the geometric gate" if failed_gate else ""))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Motion and scene figures of generated specs beside the original generator's."""
    import json

    from farm.generate.distributions import compare, figures
    from farm.generate.sampling import generate_spec

    lib, preset = open_library(args), load_preset(args.preset)
    specs = (generate_spec(lib, preset, args.segment, i, args.seed)
             for i in range(args.start, args.start + args.count))
    rows = compare(figures(specs))
    if args.json:
        print(json.dumps([dict(zip(("figure", "ours", "original", "verdict"), r, strict=True))
                          for r in rows], indent=1))
        return 0
    print(f"{args.count} {preset.name} specs (step clamp {preset.step_clamp}) vs 1000 configs "
          "of the original generator")
    for name, ours, original, verdict in rows:
        print(f"{name:30} {_fmt(ours):42} {_fmt(original):42} {verdict}")
    return 1 if any(verdict.startswith("OFF") for *_, verdict in rows) else 0


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{v:.3f}" for k, v in value.items())
    return str(value)


def cmd_import_original(args: argparse.Namespace) -> int:
    from farm.assets.original import find_configs, import_file

    lib = AssetLibrary.open(args.models, args.textures)
    preset = load_preset(args.preset)
    out = Path(args.out)
    files = find_configs([Path(p) for p in args.paths])
    if not files:
        raise SpecError("paths", "no original config files found")
    errors = 0
    for path in tqdm(files, unit="config", disable=args.quiet):
        try:
            spec = import_file(path, lib, preset)
            if args.keep_gate_failures:
                spec = replace(spec, keep_gate_failures=True)
        except SpecError as exc:
            errors += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        save_spec(spec, out / f"{spec.id}.yaml")
    print(f"imported {len(files) - errors} of {len(files)} configs into {out}")
    return 1 if errors else 0


def index_location(storage: Storage, name: str, options: SplitOptions) -> str:
    """Write the index files and the card of every finished video at a location (folder or
    bucket prefix); returns what was written, in words."""
    from farm.io.dataset import finished_videos, read_manifests
    from farm.view.card import describe_dataset, write_dataset

    videos = finished_videos(storage, "")
    if not videos:
        raise StorageError(f"no finished videos (done/ markers) in {storage.describe()}")
    files, _ = write_dataset(storage, "", read_manifests(storage, "", videos), options, name)
    return describe_dataset(files)


def cmd_index(args: argparse.Namespace) -> int:
    storage = open_location(args.location)
    name = args.name or args.location.rstrip("/").rsplit("/", 1)[-1]
    print(f"wrote {index_location(storage, name, split_options(args))}")
    return 0


def parse_size(text: str) -> int:
    """``1GB``, ``500MB``, ``64KiB``, ``1e9`` -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30}
    number = text.strip().upper().rstrip("BIGKM") or "x"
    unit = text.strip().upper()[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r}: give a size such as 1GB, 500MB or 4096") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a shard holds at least one byte")
    return int(value)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def cmd_pack(args: argparse.Namespace) -> int:
    from farm.io.dataset import finished_videos
    from farm.io.shards import pack

    src = open_location(args.source)
    with tqdm(total=len(finished_videos(src, "")), unit="video", disable=args.quiet) as bar:
        result = pack(src, "", open_location(args.dest), "", args.shard_size, args.threads,
                      bar.update, args.clip)
    index = result.index
    total = sum(s["bytes"] for s in index["shards"])
    print(f"packed {index['videos']} videos into {len(index['shards'])} shards ({total / 1e6:.1f} MB) "
          f"and {len(index['files'])} segment files at {args.dest} in {result.seconds:.1f} s "
          f"({result.puts} PUTs); index.json SHA-256 {result.index_sha256}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from farm.io.shards import unpack

    result = unpack(open_location(args.source), "", open_location(args.dest), "", args.threads)
    print(f"unpacked {result.videos} videos ({result.files} files, {result.nbytes / 1e6:.1f} MB) "
          f"into {args.dest} in {result.seconds:.1f} s; every checksum matched")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from farm.io.layout import CARD
    from farm.io.shards import INDEX, verify_pack
    from farm.view.card import verify_folder

    storage = open_location(args.location)
    if storage.exists(INDEX):
        index, problems = verify_pack(storage)
        card = storage.get_bytes(CARD)
        if card and json.loads(card)["content_sha256"] != index["content_sha256"]:
            problems.append("the shards' content digest is not the dataset card's")
        what = f"pack of {index['videos']} videos in {len(index['shards'])} shards"
    else:
        card, problems = verify_folder(storage)
        what = f"{'' if card else 'no dataset card; '}dataset folder"
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.location}: {len(problems)} problems")
        return 1
    print(f"{args.location}: {what}, every file verified")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from farm.io.views import davis_view, youtube_vos_view

    make = davis_view if args.kind == "davis" else youtube_vos_view
    result = make(Path(args.folder), Path(args.out))
    for video, why in sorted(result.left_out.items()):
        print(f"{video}: left out: {why}")
    print(f"wrote the {args.kind} view of {args.folder} at {args.out}: "
          + ", ".join(f"{split} {len(v)}" for split, v in result.videos.items()))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Every FARM_* variable with its default and meaning (docs/configuration.md's table)."""
    print(markdown_table(), end="")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Contact sheets and animated overlays of rendered videos (local folder or S3 segment)."""
    from farm.view.preview import list_videos, open_source, write_preview

    src = open_source(args.source)
    videos = args.videos or list_videos(src)
    if not videos:
        raise StorageError(f"no rendered videos in {src.label} (a segment's folder or prefix, "
                           "holding done/ and JPEGImages/, e.g. s3://bucket/prefix/2)")
    if not args.videos and len(videos) > args.limit:
        print(f"{len(videos)} videos in {src.label}; previewing the first {args.limit} "
              "(--limit N or --videos ...)")
        videos = videos[:args.limit]
    for video in videos:
        result = write_preview(src, video, Path(args.out), args.every, args.fps, args.animation,
                               args.panel_width)
        print(result.describe())
    return 0


def parser(prog: str, description: str | None) -> tuple[argparse.ArgumentParser,
                                                         argparse._SubParsersAction]:
    """A command-line parser with ``-q`` and sub-commands (``python -m farm``/``worker``)."""
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return ap, ap.add_subparsers(dest="command", required=True)


def assets_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="ShapeNetCore.v2 root (default: procedural pack)")
    p.add_argument("--textures", help="folder holding texture/ and skybox/")
    p.add_argument("--denylist", help="file of model ids / image paths to skip")


def run(args: argparse.Namespace, errors: tuple[type[Exception], ...] = ()) -> int:
    """Run the chosen command: bad input (spec, asset, storage, setting) is one ``error:`` line
    and exit 2; ``errors`` more exceptions reported the same way with exit 3. A ``--seed`` not
    given is the settings' (FARM_SEED)."""
    if getattr(args, "seed", 0) is None:
        args.seed = current().seed
    try:
        return args.func(args)
    except (SpecError, AssetError, StorageError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    ap, sub = parser("python -m farm", __doc__)

    assets = sub.add_parser("assets", help="asset packs").add_subparsers(dest="action",
                                                                         required=True)
    synth = assets.add_parser("synth", help="write the procedural asset pack")
    synth.add_argument("--out", required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_assets_synth)

    check = assets.add_parser("check", help="scan meshes and images, write a denylist")
    check.add_argument("--out", default="denylist.txt")
    check.add_argument("--workers", type=int, default=None)
    check.add_argument("--models")
    check.add_argument("--textures")
    check.set_defaults(func=cmd_assets_check)

    index = assets.add_parser("index", help="write a library manifest for a folder of meshes")
    index.add_argument("dir", help="ShapeNet-layout tree, Google Scanned Objects folder, or any "
                       "folder of OBJ/GLB/glTF/PLY/STL files")
    index.add_argument("--out", help="manifest file (.jsonl or .csv; default "
                       "DIR/farm_manifest.jsonl)")
    index.add_argument("--layout", choices=("auto", "shapenet", "gso", "flat"), default="auto")
    index.add_argument("--category", help="category where the layout names none")
    index.add_argument("--license", help="licence of models the layout gives none")
    index.add_argument("--up-axis", choices=("Y", "Z"), help="up axis where the layout names "
                       "none (default Y; GSO: Z)")
    index.set_defaults(func=cmd_assets_index)

    specs = sub.add_parser("specs", help="generate video specs (YAML, one per video)")
    specs.add_argument("--segment", type=int, required=True)
    specs.add_argument("--count", type=int, required=True)
    specs.add_argument("--start", type=int, default=0)
    specs.add_argument("--preset", default="bl30k")
    specs.add_argument("--seed", type=int, default=None,
                       help="master seed (default: FARM_SEED)")
    specs.add_argument("--workers", type=int, default=None)
    specs.add_argument("--out", required=True)
    assets_opts(specs)
    specs.set_defaults(func=cmd_specs)

    stats = sub.add_parser("stats", help="compare generated motion with the original generator's")
    stats.add_argument("--segment", type=int, default=1)
    stats.add_argument("--count", type=int, default=1000)
    stats.add_argument("--start", type=int, default=0)
    stats.add_argument("--preset", default="bl30k")
    stats.add_argument("--seed", type=int, default=None,
                       help="master seed (default: FARM_SEED)")
    stats.add_argument("--json", action="store_true", help="rows as JSON")
    assets_opts(stats)
    stats.set_defaults(func=cmd_stats)

    imp = sub.add_parser("import-original", help="convert original BL30K generator configs")
    imp.add_argument("paths", nargs="+")
    imp.add_argument("--models", required=True)
    imp.add_argument("--textures", required=True)
    imp.add_argument("--preset", default="bl30k", help="render settings to use")
    imp.add_argument("--out", required=True)
    imp.add_argument("--keep-gate-failures", action="store_true",
                     help="deliver these videos even if their masks fail the quality gate")
    imp.set_defaults(func=cmd_import_original)

    index = sub.add_parser("index", help="meta.json, splits, empty-mask list and the dataset card "
                           "of a folder or bucket prefix of finished videos")
    index.add_argument("location", help="output folder or s3://bucket/prefix/segment")
    index.add_argument("--name", help="the dataset's name on its card (default: the folder's)")
    split_opts(index)
    index.set_defaults(func=cmd_index)

    pk = sub.add_parser("pack", help="a finished dataset as WebDataset shards + index")
    pk.add_argument("source", help="dataset folder or s3://bucket/prefix/segment")
    pk.add_argument("dest", help="folder or s3://bucket/prefix for the shards and index")
    pk.add_argument("--shard-size", type=parse_size, default="1GB",
                    help="shards close before passing this size (default 1GB; a video is never split)")
    pk.add_argument("--threads", type=int, default=8, help="parallel reads")
    pk.add_argument("--clip", type=positive, metavar="N",
                    help="one sample per N frames (default: one per video)")
    pk.set_defaults(func=cmd_pack)

    up = sub.add_parser("unpack", help="restore the folder layout of a pack, byte for byte")
    up.add_argument("source", help="the pack: folder or s3://bucket/prefix holding index.json")
    up.add_argument("dest", help="folder or s3://bucket/prefix")
    up.add_argument("--threads", type=int, default=16, help="parallel writes")
    up.set_defaults(func=cmd_unpack)

    ver = sub.add_parser("verify", help="check a dataset (folder, bucket prefix or pack) against "
                         "its markers, card and index")
    ver.add_argument("location")
    ver.set_defaults(func=cmd_verify)

    view = sub.add_parser("view", help="a folder of links laid out as a tool expects")
    view.add_argument("kind", choices=("davis", "youtube-vos"))
    view.add_argument("folder", help="a local dataset folder (with meta.json)")
    view.add_argument("--out", required=True)
    view.set_defaults(func=cmd_view)

    sub.add_parser("settings", help="every FARM_* variable: default and meaning (markdown)"
                   ).set_defaults(func=cmd_settings)

    prev = sub.add_parser("preview", help="contact sheet + animated mask overlay per video")
    prev.add_argument("source", help="output folder, or s3://bucket/prefix/segment (S3 endpoint "
                      "and credentials from FARM_S3_ENDPOINT / AWS_* as for the farm)")
    prev.add_argument("--videos", nargs="+", help="these videos (default: every finished one)")
    prev.add_argument("--out", required=True, help="folder for the PNG sheets and animations")
    prev.add_argument("--every", type=int, default=None,
                      help="one sheet row every N frames (default: at most 8 rows)")
    prev.add_argument("--fps", type=float, default=10.0, help="animation frame rate")
    prev.add_argument("--panel-width", type=int, default=None,
                      help="panel width in pixels (default: 192-384, from the frame size)")
    prev.add_argument("--animation", choices=("gif", "webp"), default="gif")
    prev.add_argument("--limit", type=int, default=20,
                      help="without --videos: preview at most this many videos")
    prev.set_defaults(func=cmd_preview)
    return ap


MOVED = ("render", "demo")  # the worker's now (it alone runs Blender): python -m worker ...


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    words = [a for a in argv if a not in ("-q", "--quiet")]
    if words and words[0] in MOVED:
        print(f"error: '{words[0]}' moved to the worker: python -m worker {' '.join(words)}",
              file=sys.stderr)
        return 2
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

