"""The ground-truth bundle: a folder, or the same files in one ``.tar``, holding ``manifest.json``
and tensors in safetensors, nothing else.

- ``manifest.json``: what the ground truth is and what it was made from (task name and config,
  fingerprints of the training data, the queries and the reference checkpoint, the retraining
  design, the LDS ceiling, provenance) and, under ``files``, every other file's sha256, size and
  tensors (name, dtype, shape).
- ``subsets.safetensors``: ``indices`` int64 [M, k], the sorted training indices each subset keeps;
  ``retrain_seeds`` int64 [M, K], the seed of every retraining.
- ``outcomes.safetensors``: ``outcomes`` float32 [M, K, n_query], each retrained model's observable
  on each query; ``query_ids`` int64 [n_query]; ``degenerate`` bool [M, K] (retrained models no
  better than chance) where the ground truth kept it.
- ``checkpoint.safetensors`` (optional): the reference model's state dict.

Reading runs no code: JSON and safetensors only, and every file's bytes are checked against the
manifest's sha256 before they are parsed. A file the manifest does not list, a link, a missing
file, a changed byte, a tensor of another name, dtype or shape, and subsets or outcomes that
disagree with the manifest are refused with a :class:`BundleError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tdabench.harness.core.storage import atomic_write_bytes

FORMAT = "tdabench-ground-truth"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUBSETS = "subsets.safetensors"
OUTCOMES = "outcomes.safetensors"
CHECKPOINT = "checkpoint.safetensors"


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the field, in one line."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


@dataclass
class Bundle:
    """A verified bundle: its manifest, the manifest's sha256 (what a record names) and the tensors
    of each file, parsed only after their hashes matched."""

    path: Path
    manifest: dict
    manifest_sha256: str
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def gt_key(self) -> str:
        return self.manifest["gt_key"]

    def masks(self) -> torch.Tensor:
        """bool [M, n_train]: the subsets as masks."""
        idx = self.tensors[SUBSETS]["indices"]
        masks = torch.zeros(idx.shape[0], self.manifest["task"]["n_train"], dtype=torch.bool)
        masks.scatter_(1, idx, True)
        return masks

    def outcomes(self) -> torch.Tensor:
        """float32 [M, K, n_query]."""
        return self.tensors[OUTCOMES]["outcomes"]

    def degenerate(self) -> torch.Tensor | None:
        return self.tensors[OUTCOMES].get("degenerate")

    def source(self) -> dict:
        """What a record says of the ground truth it was scored against (``gt_source``)."""
        return {"format": FORMAT, "path": str(self.path.resolve()), "manifest_sha256": self.manifest_sha256,
                "gt_key": self.gt_key}


def write_bundle(out_dir: str | Path, manifest: dict, files: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write ``files`` (file name -> tensors) as safetensors and the manifest, with the format,
    version and every file's sha256, size and tensors added, into ``out_dir``; returns it. Each
    file is written atomically, the manifest last."""
    from safetensors.torch import save

    out = Path(out_dir)
    listed = {}
    for name, tensors in files.items():
        data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        atomic_write_bytes(out / name, data)
        _as_umask_allows(out / name)
        listed[name] = {"sha256": sha256(data), "bytes": len(data),
                        "tensors": {k: {"dtype": _dtype_name(v), "shape": list(v.shape)} for k, v in tensors.items()}}
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": listed}
    atomic_write_bytes(out / MANIFEST, (json.dumps(full, indent=1, sort_keys=True) + "\n").encode())
    _as_umask_allows(out / MANIFEST)
    return out


def _as_umask_allows(path: Path) -> None:
    """Give ``path`` the permissions a plain new file gets (a bundle is made to be handed on; the
    atomic write creates it private)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_tar(bundle_dir: str | Path, tar_path: str | Path) -> Path:
    """The bundle in ``bundle_dir`` as one uncompressed ``.tar`` (its files under one folder named
    like the bundle), written atomically."""
    bundle_dir = Path(bundle_dir)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(bundle_dir.iterdir()):
            data = p.read_bytes()
            info = tarfile.TarInfo(f"{bundle_dir.name}/{p.name}")
            info.size, info.mtime, info.mode = len(data), int(p.stat().st_mtime), 0o644
            tar.addfile(info, io.BytesIO(data))
    atomic_write_bytes(tar_path, buf.getvalue())
    return Path(tar_path)


def _members(path: Path) -> dict[str, bytes]:
    """The files of a bundle folder or ``.tar`` by name, read as bytes (nothing is extracted);
    links, folders and other non-files inside it are refused."""
    if path.is_dir():
        out = {}
        for p in sorted(path.iterdir()):
            if p.is_symlink() or not p.is_file():
                raise BundleError(f"{p}: not a plain file; a bundle holds manifest.json and the files it lists, "
                                  "nothing else")
            out[p.name] = p.read_bytes()
        return out
    if not path.exists():
        raise BundleError(f"{path}: no such bundle (a folder with manifest.json, or a .tar of one)")
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path}: neither a bundle folder nor a .tar ({exc})") from exc
    out = {}
    with tar:
        for m in tar.getmembers():
            if m.isdir():
                continue
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) > 2 or ".." in parts or Path(m.name).is_absolute():
                raise BundleError(f"{path}: member {m.name!r} is not a plain file at the bundle's top level; refused")
            out[parts[-1]] = tar.extractfile(m).read()
    return out


def open_bundle(path: str | Path) -> Bundle:
    """Read and verify the bundle at ``path`` (folder or ``.tar``): every hash before any file is
    parsed, then the tensors against the manifest and the manifest's own consistency. Raises
    :class:`BundleError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    members = _members(path)
    if MANIFEST not in members:
        raise BundleError(f"{path}: no {MANIFEST}; is this a ground-truth bundle (tdabench-gt export writes one)?")
    raw = members.pop(MANIFEST)
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path / MANIFEST}: not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{path / MANIFEST}: field format={found!r} is not {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path / MANIFEST}: field format_version={manifest.get('format_version')!r}; this tdabench "
                          f"reads version {FORMAT_VERSION}; upgrade tdabench")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
        raise BundleError(f"{path / MANIFEST}: field files must map each file name to its sha256")
    extra = sorted(set(members) - set(listed))
    if extra:
        raise BundleError(f"{path / extra[0]}: a file the manifest does not list; a bundle holds manifest.json and "
                          "the files it lists, nothing else")
    for name, meta in listed.items():
        if name not in members:
            raise BundleError(f"{path / name}: missing (listed in the manifest's files)")
        if sha256(members[name]) != meta.get("sha256"):
            raise BundleError(f"{path / name}: sha256 {sha256(members[name])[:16]}... does not match the manifest's "
                              f"files.{name}.sha256 {str(meta.get('sha256'))[:16]}...; the file was changed or damaged")
    bundle = Bundle(path, manifest, sha256(raw))
    for name, meta in listed.items():
        try:
            tensors = load(members[name])
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise BundleError(f"{path / name}: not a safetensors file ({exc})") from exc
        declared = meta.get("tensors") or {}
        if set(tensors) != set(declared):
            raise BundleError(f"{path / name}: holds tensors {sorted(tensors)}, the manifest's files.{name}.tensors "
                              f"lists {sorted(declared)}")
        for key, t in tensors.items():
            want = declared[key]
            if _dtype_name(t) != want.get("dtype") or list(t.shape) != want.get("shape"):
                raise BundleError(f"{path / name}: tensor {key} is {_dtype_name(t)} {list(t.shape)}, the manifest's "
                                  f"files.{name}.tensors.{key} says {want.get('dtype')} {want.get('shape')}")
        bundle.tensors[name] = tensors
    consistency_check(bundle)
    return bundle


def _need(bundle: Bundle, name: str, key: str) -> torch.Tensor:
    t = bundle.tensors.get(name, {}).get(key)
    if t is None:
        raise BundleError(f"{bundle.path / name}: tensor {key} is missing")
    return t


def consistency_check(bundle: Bundle) -> None:
    """The subsets, outcomes and queries agree with the manifest's ``task`` and ``ground_truth``
    fields (sizes, ranges, one row of outcomes per subset), so rows cannot silently belong to
    other subsets or queries than the manifest says."""
    m, where = bundle.manifest, bundle.path
    try:
        task, gt, data = m["task"], m["ground_truth"], m["data"]
        n_train, n_query = int(task["n_train"]), int(task["n_query"])
        M, k, K = int(gt["subsets"]), int(gt["subset_size"]), int(gt["retrainings"])
        query_ids = list(data["query_ids"])
        m["gt_key"], m["checkpoint"]["sha256"], data["train_sha256"], data["query_sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where / MANIFEST}: field {exc} is missing or malformed") from exc
    idx = _need(bundle, SUBSETS, "indices")
    if tuple(idx.shape) != (M, k) or idx.dtype != torch.int64:
        raise BundleError(f"{where / SUBSETS}: indices is {list(idx.shape)}, the manifest's ground_truth.subsets x "
                          f"subset_size is [{M}, {k}]")
    if M and (idx.min() < 0 or idx.max() >= n_train):
        raise BundleError(f"{where / SUBSETS}: indices outside [0, task.n_train={n_train})")
    if k > 1 and not bool((idx[:, 1:] > idx[:, :-1]).all()):
        raise BundleError(f"{where / SUBSETS}: indices of a subset are not sorted and distinct")
    seeds = _need(bundle, SUBSETS, "retrain_seeds")
    if tuple(seeds.shape) != (M, K):
        raise BundleError(f"{where / SUBSETS}: retrain_seeds is {list(seeds.shape)}, expected [{M}, {K}] "
                          "(ground_truth.subsets x retrainings)")
    out = _need(bundle, OUTCOMES, "outcomes")
    if tuple(out.shape) != (M, K, n_query):
        raise BundleError(f"{where / OUTCOMES}: outcomes is {list(out.shape)}, the manifest says [{M}, {K}, {n_query}] "
                          "(ground_truth.subsets x retrainings x task.n_query)")
    if not bool(torch.isfinite(out).all()):
        raise BundleError(f"{where / OUTCOMES}: outcomes holds values that are not finite")
    qids = _need(bundle, OUTCOMES, "query_ids")
    if qids.tolist() != query_ids or len(query_ids) != n_query:
        raise BundleError(f"{where / OUTCOMES}: query_ids differ from the manifest's data.query_ids")
    deg = bundle.degenerate()
    if deg is not None and tuple(deg.shape) != (M, K):
        raise BundleError(f"{where / OUTCOMES}: degenerate is {list(deg.shape)}, expected [{M}, {K}]")
