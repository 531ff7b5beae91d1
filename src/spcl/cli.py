"""The ``spcl`` command line: it parses, builds a config, and calls the library.

Every flag of ``spcl train`` maps to one config field: ``--optim.lr`` style names exist for all of them,
and the everyday ones have short aliases (``--lr``, ``--source``, ``--epochs`` ...).
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spcl.config import MODES, leaf_fields, list_presets, load_config

# Short aliases: flag -> (config field, constant value for switches or None for a value flag).
_ALIASES: dict[str, tuple[str, Any]] = {
    "--source": ("data.source", None),
    "--target": ("data.target", None),
    "--dataset": ("data.target", None),
    "--data-root": ("data.root", None),
    "--height": ("data.height", None),
    "--width": ("data.width", None),
    "--workers": ("data.workers", None),
    "--skip-bad-images": ("data.skip_bad_images", True),
    "--arch": ("model.arch", None),
    "--pretrained": ("model.pretrained", None),
    "--no-pretrained": ("model.pretrained", "none"),
    "--features": ("model.features", None),
    "--images-per-bn": ("model.images_per_bn", None),
    "--no-dsbn": ("model.dsbn", False),
    "--eps": ("pseudo.eps", None),
    "--no-self-paced": ("pseudo.self_paced", False),
    "--discard-outliers": ("pseudo.discard_outliers", True),
    "--epochs": ("optim.epochs", None),
    "--iters": ("optim.iters", None),
    "--lr": ("optim.lr", None),
    "--batch-size": ("optim.batch_size", None),
    "--eval-every": ("eval.every", None),
    "--rerank": ("eval.rerank", True),
    "--seed": ("seed", None),
    "--device": ("device", None),
    "--output": ("output", None),
    "--no-resume": ("resume", False),
    "--checkpoint-every": ("checkpoint_every", None),
    "--amp": ("runtime.amp", None),
    "--sync-bn": ("model.sync_bn", True),
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=f"a YAML file or a preset name ({', '.join(list_presets())})")
    short = parser.add_argument_group("common settings (aliases of config fields)")
    for flag, (key, const) in _ALIASES.items():
        if const is None:
            short.add_argument(flag, dest=f"cfg:{key}", default=argparse.SUPPRESS, metavar="V", help=f"sets {key}")
        else:
            short.add_argument(
                flag, dest=f"cfg:{key}", action="store_const", const=const, default=argparse.SUPPRESS,
                help=f"sets {key}={const}",
            )
    full = parser.add_argument_group("every config field")
    for key, hint, default, doc in leaf_fields():
        if key == "mode" or f"--{key}" in _ALIASES:
            continue
        choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
        full.add_argument(
            f"--{key}", dest=f"cfg:{key}", default=argparse.SUPPRESS, metavar="V", choices=choices,
            help=f"{doc} (default: {default})" if doc else f"(default: {default})",
        )
    # settings of earlier versions, read as this version spells them (spcl.config.upgrade_settings)
    full.add_argument("--memory.camera_aware", dest="cfg:memory.camera_aware", default=argparse.SUPPRESS,
                      metavar="V", help=argparse.SUPPRESS)


def _config_from_args(args: argparse.Namespace, mode: str | None = None) -> Any:
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    if mode is not None:
        overrides["mode"] = mode
    return load_config(args.config, overrides)


def _cmd_synth(args: argparse.Namespace) -> int:
    from spcl.data.synthetic import SynthConfig, write_synthetic

    config = SynthConfig(height=args.height, width=args.width) if args.height or args.width else None
    if config is not None and (not args.height or not args.width):
        raise SystemExit("spcl synth: give both --height and --width")
    paths = write_synthetic(Path(args.out), seed=args.seed, config=config)
    from spcl.data import load

    for name, path in paths.items():
        print(load(path).format_statistics().replace(f"dataset {Path(path).name}", f"dataset {name}", 1))
        sheets = sorted(Path(path).glob("*.png"))
        if sheets:
            print(f"  contact sheet: {sheets[0]}")
    return 0


def _add_dataset_flags(p: argparse.ArgumentParser) -> None:
    """The options of the readers that take them (each flag is passed only when given)."""
    p.add_argument("--test-size", type=int, default=None, help="VehicleID test set (800, 1600, 2400; 10 gallery draws)")
    p.add_argument("--split", type=int, default=None,
                   help="the split of a dataset with several (CUHK03 classic 0..19; CUHK01, VIPeR, GRID, PRID, iLIDS 0..9)")
    p.add_argument("--cuhk03-protocol", choices=["new", "classic"], default=None, help="CUHK03's protocol (default new)")
    p.add_argument("--cuhk03-boxes", choices=["detected", "labeled"], default=None, help="CUHK03's boxes (default detected)")


def _dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    given = {"test_size": args.test_size, "split": args.split, "protocol": args.cuhk03_protocol, "boxes": args.cuhk03_boxes}
    return {key: value for key, value in given.items() if value is not None}


def _cmd_data_info(args: argparse.Namespace) -> int:
    from spcl.data import load
    from spcl.data.image_dataset import verify_images

    dataset = load(args.dataset, args.data_root, **_dataset_options(args))
    print(dataset.format_statistics())
    print(f"  training list fingerprint: {dataset.fingerprint()}")
    if args.verify:
        verify_images(dataset.train + dataset.query + dataset.gallery)
        print("  every image decodes")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from spcl.data import registered_datasets

    for name, description in registered_datasets().items():
        print(f"{name:<14} {description}")
    print("\npresets: " + ", ".join(list_presets()))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from spcl.training import Trainer

    from spcl.utils import close_distributed, init_distributed, resolve_device

    config = _config_from_args(args, args.mode)
    # under torchrun: join the process group (one process: nothing to join)
    dist = init_distributed(resolve_device(config.device), config.runtime.backend, config.runtime.timeout_minutes)
    try:
        Trainer(config, dist=dist).fit()
    finally:
        close_distributed()
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from spcl.inference import evaluate_checkpoint
    from spcl.utils.files import check_output_folder

    from spcl.inference.evaluate import evaluate_checkpoint_dg

    if args.output:
        check_output_folder(args.output, what="the evaluation's folder")
    if args.protocol == "dg":
        if args.dataset or args.rerank or _dataset_options(args):
            raise SystemExit("spcl eval --protocol dg: choose the sets with --datasets; --dataset, --rerank and the "
                             "dataset options (--split, ...) do not apply: every split is evaluated")
        names = [n.strip().lower() for n in args.datasets.split(",") if n.strip()]
        evaluate_checkpoint_dg(args.checkpoint, data_root=args.data_root, datasets=names, test_source=args.test_source,
                               device=args.device, output=args.output)
        return 0
    if not args.dataset:
        raise SystemExit("spcl eval: give --dataset (a name or a path), or --protocol dg")
    evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        data_root=args.data_root,
        rerank=args.rerank,
        test_source=args.test_source,
        device=args.device,
        output=args.output,
        **_dataset_options(args),
    )
    return 0


def _extractor(args: argparse.Namespace) -> Any:
    from spcl.inference import FeatureExtractor

    return FeatureExtractor(args.checkpoint, args.device, domain=args.domain, batch_size=args.batch_size,
                            workers=args.workers)


def _cmd_extract(args: argparse.Namespace) -> int:
    from spcl.inference import extract_to_file, list_input_images
    from spcl.utils.files import check_output

    check_output(args.out, inputs=[args.checkpoint, args.images], what="the feature file")
    images = list_input_images(args.images)
    extractor = _extractor(args)
    print(f"{extractor}: {len(images)} images from {args.images}", file=sys.stderr)
    result = extract_to_file(extractor, images, args.out, progress=not args.quiet,
                             log=lambda m: print(m, file=sys.stderr))
    known = int((result.images.pids >= 0).sum())
    print(f"{len(result)} x {result.features.shape[1]} features -> {args.out}"
          + (f" ({known} images with an identity from their names or the list)" if known else ""))
    return 0


def _side(source: str, args: argparse.Namespace, extractor: Any, what: str) -> tuple[Any, Any, Any]:
    """(features, images, metadata) of a search side: a feature file, or images to encode now."""
    from spcl.inference import list_input_images, load_features

    if source.endswith(".npz"):
        loaded = load_features(source)
        return loaded.features, loaded.images, loaded.meta
    if extractor is None:
        raise ValueError(f"--{what} {source} is not a feature file (.npz): give --checkpoint to encode its images")
    images = list_input_images(source)
    features = extractor(images.paths, progress=not args.quiet and len(images) > extractor.batch_size)
    return features, images, {"checkpoint": str(Path(args.checkpoint).resolve()), "domain": extractor.domain}


def _cmd_search(args: argparse.Namespace) -> int:
    import json

    from spcl.inference import GalleryIndex, search_gallery
    from spcl.inference.ranklist import draw_ranked_lists, thumb_size
    from spcl.inference.search import to_rows, to_text
    from spcl.utils.files import check_output_folder, write_text
    from spcl.utils.optional import need_faiss

    if args.nprobe < 0 or not 0.0 <= args.recall <= 1.0 or args.topk < 1:
        raise ValueError(f"--nprobe must be 0 (automatic) or more, --recall a share in [0, 1] and --topk at least 1; "
                         f"got {args.nprobe}, {args.recall}, {args.topk}")
    if args.index in ("flat", "ivf"):
        need_faiss(f"--index {args.index}", "use --index exact")
    check_output_folder(args.out, what="the results folder")
    extractor = _extractor(args) if args.checkpoint else None
    g_features, g_images, g_meta = _side(args.gallery, args, extractor, "gallery")
    q_features, q_images, q_meta = _side(args.query, args, extractor, "query")
    if g_meta.get("checkpoint") and q_meta.get("checkpoint") and (
        (g_meta["checkpoint"], g_meta.get("domain")) != (q_meta["checkpoint"], q_meta.get("domain"))
    ):
        print(f"note: the gallery features come from {g_meta['checkpoint']} ({g_meta.get('domain')} BNs) and the "
              f"queries from {q_meta['checkpoint']} ({q_meta.get('domain')} BNs): distances compare them only if "
              "that is the same model", file=sys.stderr)
    cache = f"{args.gallery}.ivf.faiss" if args.gallery.endswith(".npz") else None
    index = GalleryIndex(g_features, args.index, nprobe=args.nprobe, cache=cache)
    for note in index.notes:
        print(note, file=sys.stderr)
    if index.kind == "ivf" and not args.rerank:
        asked = index.nprobe
        recall, nprobe = index.tune(q_features, args.topk, args.recall)
        raised = f" (raised from {asked} to reach --recall {args.recall:g})" if nprobe != asked else ""
        print(f"ivf index: recall@{min(args.topk, len(index))} {recall:.3f} against the exact search on "
              f"{min(500, len(q_features))} sampled queries, probing {nprobe} of {index.nlist} lists{raised}"
              + ("" if recall >= args.recall else f"; below --recall {args.recall:g} with every list probed"),
              file=sys.stderr)
    results = search_gallery(q_features, q_images, index, g_images, args.topk, rerank=args.rerank)
    payload = [r.to_dict() for r in results]
    out = Path(args.out)
    write_text(out / "results.json", json.dumps(payload, indent=1) + "\n", what="the search results")
    if args.metrics:
        _search_metrics(results, q_images, g_images, args.topk, out)
    if args.json:
        print(json.dumps(payload, indent=1))
    else:
        print(to_text(results, index.kind + (" + re-ranking" if args.rerank else "")))
    if not args.no_png:
        thumb = thumb_size(q_images.paths[0])
        title = f"{len(results)} quer{'y' if len(results) == 1 else 'ies'}, top {args.topk} of {len(index)} gallery images"
        pngs = draw_ranked_lists(to_rows(results), out / "ranked.png", title=title, thumb=thumb)
        print(f"ranked lists: {', '.join(str(p) for p in pngs)}; JSON: {out / 'results.json'}", file=sys.stderr)
    return 0


def _search_metrics(results: list[Any], queries: Any, gallery: Any, topk: int, out: Path) -> None:
    """mAP / CMC over the ranked lists (``--metrics``): the evaluation of a gallery searched with an
    approximate index, with the share of valid true matches the lists hold."""
    import json

    import numpy as np

    from spcl.evaluation import ImageSet, metrics_from_ranked_lists

    if (np.asarray(queries.pids) < 0).any() or (np.asarray(gallery.pids) < 0).any():
        raise SystemExit("error: --metrics needs the identity of every query and gallery image (a pid in their "
                         "CSV or feature file)")
    lists = np.full((len(results), topk), -1, dtype=np.int64)
    for q, result in enumerate(results):
        for m in result.matches:
            lists[q, m.rank - 1] = m.index
    cameras = [None if c < 0 else int(c) for c in queries.camids], [None if c < 0 else int(c) for c in gallery.camids]
    metrics = metrics_from_ranked_lists(
        lists, ImageSet(pids=queries.pids, camids=cameras[0], paths=queries.paths),
        ImageSet(pids=gallery.pids, camids=cameras[1], paths=gallery.paths),
    )
    ranks = [r for r in (1, 5, 10) if r <= topk]
    print(f"over the top-{topk} lists: mAP {100 * metrics['mAP']:.1f}, "
          + ", ".join(f"rank-{r} {100 * metrics['cmc'][r - 1]:.1f}" for r in ranks)
          + f"; the lists hold {100 * metrics['recall']:.1f}% of the valid true matches "
          f"(mAP is exact when they hold all, a lower bound otherwise)", file=sys.stderr)
    summary = {"mAP": metrics["mAP"], "cmc": metrics["cmc"].tolist(), "recall": metrics["recall"],
               "num_valid_queries": metrics["num_valid_queries"], "topk": topk}
    from spcl.utils.files import write_text

    write_text(out / "metrics.json", json.dumps(summary, indent=1) + "\n", what="the search metrics")


def _cmd_visualize(args: argparse.Namespace) -> int:
    from spcl.inference import visualize_run
    from spcl.utils.files import check_output_folder

    if args.out:
        check_output_folder(args.out, what="the pictures' folder")
    written = visualize_run(args.run_dir, args.out, count=args.count, topk=args.topk)
    for name, paths in written.items():
        print(f"{name}: {', '.join(str(p) for p in paths)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from spcl.inference.report import write_report

    write_report(args.run_dir, max_points=args.max_points)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from spcl.inference.export import export_onnx
    from spcl.utils.optional import optional

    # export_onnx checks its output and its packages before loading the model
    if not args.no_check and optional("onnxruntime") is None:
        print("note: onnxruntime is not installed, so the exported model is not compared with PyTorch "
              "(pip install onnxruntime)", file=sys.stderr)

    path = export_onnx(args.checkpoint, args.out, domain=args.domain, opset=args.opset, check=not args.no_check)
    print(f"ONNX model: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from spcl.demo import format_table, merge_results, run_demo

    if args.merge:
        results = merge_results(args.merge)
        print(format_table(results))
        total = sum(r.get("seconds", 0.0) for rows in results.values() for r in rows)
        print(f"\n{sum(len(rows) for rows in results.values())} runs, {total / 60:.0f} minutes of training in all")
        return 0

    run_demo(
        data_root=args.data_root, output=args.output, seeds=args.seeds, ablations=args.ablations,
        device=args.device, epochs=args.epochs, methods=args.methods, only=args.only,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spcl", description="Self-paced contrastive learning for unsupervised and domain-adaptive re-ID."
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = sub.add_parser

    def add_command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_command  # type: ignore[method-assign]

    p = sub.add_parser("demo", help="generate the synthetic data, train source-only and SpCL on CPU, print a table")
    p.add_argument("--data-root", default="data")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ablations", action="store_true", help="also run the paper's ablations")
    p.add_argument("--methods", action="store_true",
                   help="also run SpCL without a source, Cluster Contrast's memory and camera-aware proxies (UDA, USL)")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's number of epochs")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="print one table from the results.json of runs made in parts (no training)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only the rows whose name contains one of these strings (e.g. 'camera-aware')")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train SpCL (uda, usl) or a baseline (source-only, oracle)")
    p.add_argument("mode", choices=MODES)
    _add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's query/gallery split, or on the DG sets")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", help="dataset name or path (protocol standard)")
    p.add_argument("--protocol", choices=["standard", "dg"], default="standard",
                   help="standard: the dataset's own split; dg: VIPeR, PRID, GRID and iLIDS under --data-root, "
                        "each averaged over its 10 splits")
    p.add_argument("--datasets", default="viper,prid,grid,ilids",
                   help="protocol dg: which test sets, comma-separated (default: %(default)s; cuhk01 may be added)")
    _add_dataset_flags(p)
    p.add_argument("--data-root", default="data")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
    p.add_argument("--test-source", action="store_true", help="use the source-domain BatchNorms (DSBN models)")
    p.add_argument("--device", default="auto")
    p.add_argument("--output", default=None, help="folder for per-query results (default: next to the checkpoint)")
    p.set_defaults(func=_cmd_eval)

    def add_model_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--checkpoint", required=required, help="a checkpoint of spcl train (best.pth, last.pth)")
        p.add_argument("--domain", choices=["target", "source"], default="target",
                       help="the BatchNorm branch of a DSBN model (default: target)")
        p.add_argument("--device", default="auto")
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("extract", help="features of a folder, CSV or list of images, into one .npz file")
    add_model_flags(p)
    p.add_argument("--images", required=True, help="a folder (recursive), a CSV with a path column, a .txt list or an image")
    p.add_argument("--out", required=True, help="the .npz file to write (an interrupted run continues)")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("search", help="rank a gallery for query images: text or JSON, and a PNG of the ranked lists")
    add_model_flags(p, required=False)
    p.add_argument("--gallery", required=True, help="a feature file of spcl extract (.npz), or images as for extract")
    p.add_argument("--query", required=True, help="an image, a folder, a CSV or list, or a feature file")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print JSON: per query, the ranked gallery entries")
    p.add_argument("--index", choices=["auto", "exact", "flat", "ivf"], default="auto",
                   help="exact blocked search, or a faiss index (auto: faiss IVF from 100,000 images when installed)")
    p.add_argument("--nprobe", type=int, default=0,
                   help="lists an IVF index probes at first (default: a sixteenth of them; raised to reach --recall)")
    p.add_argument("--recall", type=float, default=0.95,
                   help="an IVF index's recall@topk to reach, measured against the exact search on a sample of the "
                        "queries; nprobe is doubled until it does (0: measured and printed only)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (exact; small galleries)")
    p.add_argument("--out", default="search", help="folder for results.json and ranked.png (default: ./search)")
    p.add_argument("--no-png", action="store_true", help="do not draw the ranked lists")
    p.add_argument("--metrics", action="store_true",
                   help="also mAP / CMC over the top-k lists and the share of true matches they hold (metrics.json)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("visualize", help="ranked lists of an evaluation's worst and best queries, as PNG")
    p.add_argument("run_dir", help="a run folder (its newest evaluation) or an evaluation folder")
    p.add_argument("--out", default=None, help="folder for worst.png and best.png (default: <evaluation>/ranked)")
    p.add_argument("--count", type=int, default=10, help="queries per picture")
    p.add_argument("--topk", type=int, default=10, help="gallery entries per query (at most 20)")
    p.set_defaults(func=_cmd_visualize)

    p = sub.add_parser("report", help="a self-contained HTML report of a training run (RUN_DIR/report.html)")
    p.add_argument("run_dir")
    p.add_argument("--max-points", type=int, default=3000, help="target features drawn in the embedding")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("export", help="the inference encoder as an ONNX model, preprocessing in its metadata")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--domain", choices=["target", "source"], default="target")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-against-PyTorch check")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("synth", help="write the built-in synthetic two-domain dataset and its contact sheets")
    p.add_argument("--out", default="data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--width", type=int, default=0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("data-info", help="print the split statistics of a dataset (name or path)")
    p.add_argument("dataset")
    p.add_argument("--data-root", default="data")
    _add_dataset_flags(p)
    p.add_argument("--verify", action="store_true", help="decode every image once")
    p.set_defaults(func=_cmd_data_info)

    p = sub.add_parser("datasets", help="list the dataset readers and config presets")
    p.set_defaults(func=_cmd_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors end in one readable line and exit status 2 (``--debug``: the
    traceback), a run stopped by SIGTERM / SIGINT in 143 / 130 after its checkpoint."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"spcl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (turned into a message, or re-raised below)
        from spcl.training.hooks import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            return 128 + exc.signal
        if args.debug:
            raise
        message, known = describe_error(exc)
        print(f"spcl {args.command}: error: {message}", file=sys.stderr)
        if not known:
            print("  (an unexpected error: run the command again with --debug for the traceback)", file=sys.stderr)
        return 2 if known else 1


def describe_error(exc: BaseException) -> tuple[str, bool]:
    """One line for an error, and whether it is one of the expected kinds (bad input, missing files,
    no memory, no disk) rather than a defect."""
    import errno

    import torch
    import yaml

    from spcl.utils import OutOfMemory
    from spcl.utils.files import OutputError
    from spcl.utils.optional import MissingPackage

    if isinstance(exc, (OutOfMemory, OutputError, MissingPackage)):
        return " ".join(str(exc).split()), True
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        detail = str(exc).splitlines()[0] if str(exc) else "the device is out of memory"
        return (f"{detail}. Lower --eval.batch_size (feature extraction) or --batch-size (training), or use "
                "--device cpu for what does not fit the accelerator", True)
    if isinstance(exc, KeyError):  # unknown architecture or dataset option
        return (str(exc.args[0]) if exc.args else repr(exc)), True
    if isinstance(exc, yaml.YAMLError):
        return " ".join(str(exc).split()), True
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        return (f"{reason}: {exc.filename}" if exc.filename else reason), True
    if isinstance(exc, (ValueError, FileNotFoundError, RuntimeError)):
        known = type(exc).__module__.startswith("spcl") or type(exc) in (ValueError, FileNotFoundError)
        text = str(exc)
        if "Original Traceback" in text:  # raised in a loader worker: its last line is the error
            text = text.strip().splitlines()[-1].split(": ", 1)[-1]
        return " ".join(text.split()) or type(exc).__name__, known
    return f"{type(exc).__name__}: {exc}", False
