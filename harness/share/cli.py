"""``tdabench-gt``: ground truths as files to hand on.

    tdabench-gt export RESULTS_DIR OUT_DIR [--cache DIR] [--format dattri] [--checkpoint] [--tar]
    tdabench-gt verify BUNDLE [--retrain N]   every hash and the manifest's consistency; N rows retrained
    tdabench-gt info BUNDLE          a short summary
    tdabench-gt import BUNDLE [--cache DIR]   into the cache, where runs of the same config find it
    (BUNDLE: a folder, a .tar, or a logged artifact wandb:ENTITY/PROJECT/NAME:VERSION, online)

``export`` writes one bundle per ground truth the folder's records were scored against, in
``OUT_DIR/<gt_key>/``, read from the cache the records name (or ``--cache``); ``--format dattri``
writes dattri's benchmark layout instead. A run evaluates methods against a bundle with
``tdabench ... gt.from=BUNDLE``. Every problem ends the command with one line naming the file and
the field, exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tdabench.harness.core.bundle import BundleError, open_bundle, write_tar
from tdabench.harness.core.logs import setup as setup_logging
from tdabench.harness.read.gt_sources import ARTIFACT_PREFIX
from tdabench.harness.read.results import one_line_errors


def summary(bundle) -> str:
    m = bundle.manifest
    t, gt, prov = m["task"], m["ground_truth"], m.get("provenance", {}).get("computed", {})
    ceiling = (m.get("lds_ceiling") or {}).get("ceiling")
    size = sum(f["bytes"] for f in m["files"].values())
    lines = [f"bundle      {bundle.path}  (manifest sha256 {bundle.manifest_sha256})",
             f"task        {t['name']} seed={t['seed']} n_train={t['n_train']} n_query={t['n_query']} "
             f"observable={t.get('observable', 'loss')}",
             f"ground key  {m['gt_key']}",
             f"design      {gt['subsets']} subsets of {gt['subset_size']} (alpha {gt['alpha']}) x "
             f"{gt['retrainings']} retraining(s), {gt['mode']}"
             + (", fine-tuned from the checkpoint" if gt.get("from_checkpoint") else ", from scratch"),
             f"ceiling     LDS ceiling {ceiling:.3f}" if ceiling is not None
             else "ceiling     none (one retraining per subset)",
             f"data        train {m['data']['train_sha256'][:16]}  queries {m['data']['query_sha256'][:16]}  "
             f"checkpoint {m['checkpoint']['sha256'][:16]}" + (" (included)" if m["checkpoint"].get("file") else ""),
             f"computed    {prov.get('finished')} on {prov.get('host')} with tdabench {prov.get('version')} "
             f"({(prov.get('git_sha') or 'commit unknown')[:12]})",
             f"files       {len(m['files'])} + manifest.json, {size / 1024:.0f} KiB"]
    return "\n".join(lines)


@one_line_errors("tdabench-gt")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tdabench-gt", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:7]))
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="one bundle per ground truth of a results folder's records")
    ex.add_argument("results_dir")
    ex.add_argument("out_dir")
    ex.add_argument("--cache", default=None, help="the cache holding the ground truths (default: the records')")
    ex.add_argument("--format", choices=["tdabench", "dattri"], default="tdabench")
    ex.add_argument("--checkpoint", action="store_true",
                    help="include the reference run (checkpoint, trajectory, losses), which import installs")
    ex.add_argument("--tar", action="store_true", help="also write each bundle as OUT_DIR/<gt_key>.tar")
    ve = sub.add_parser("verify", help="check every hash and the manifest's consistency")
    ve.add_argument("bundle")
    ve.add_argument("--retrain", type=int, default=0, metavar="N",
                    help="also retrain N subsets with the recorded seeds and compare their rows (needs the task)")
    ve.add_argument("--cache", default=os.environ.get("TDABENCH_CACHE", ".cache/tdabench"))
    sub.add_parser("info", help="a short summary").add_argument("bundle")
    im = sub.add_parser("import", help="write a bundle's ground truth into the cache")
    im.add_argument("bundle")
    im.add_argument("--cache", default=os.environ.get("TDABENCH_CACHE", ".cache/tdabench"))
    args = parser.parse_args(argv)
    setup_logging(0)
    try:
        run(args)
    except BundleError as exc:
        sys.exit(f"tdabench-gt: error: {exc}")


def run(args) -> None:
    if args.command == "export":
        from tdabench.harness.share.export import export_results

        for folder in export_results(args.results_dir, args.out_dir, args.cache, args.format, args.checkpoint):
            if args.tar and args.format == "tdabench":
                print(f"{write_tar(folder, folder.with_name(folder.name + '.tar'))}: the same bundle as one .tar")
        return
    if args.bundle.startswith(ARTIFACT_PREFIX):
        from tdabench.harness.read.gt_sources import download

        args.bundle = download(args.bundle, getattr(args, "cache", None) or os.environ.get(
            "TDABENCH_CACHE", ".cache/tdabench"))
    bundle = open_bundle(args.bundle)
    if args.command == "verify":
        files = ", ".join(f"{n} {f['sha256'][:12]}" for n, f in bundle.manifest["files"].items())
        print(f"{bundle.path}: ok (manifest sha256 {bundle.manifest_sha256}; {files})")
        if args.retrain > 0:
            from tdabench.harness.share.spotcheck import retrain_rows

            rows = retrain_rows(bundle, args.retrain, Path(args.cache))
            print(f"{bundle.path}: rows {', '.join(str(r) for r, _ in rows)} are what retraining their subsets gives")
    elif args.command == "info":
        print(summary(bundle))
    else:
        from tdabench.harness.share.export import import_bundle

        print(f"{import_bundle(bundle, Path(args.cache))}: imported; runs with the bundle's task and ground-truth "
              "settings read it from there")
