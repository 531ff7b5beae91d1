"""Writing the synthetic domains in the Market-1501 layout, atomically, and reusing them when they
already match the seed, the config and the generator version."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spcl.data.synthetic.cameras import make_camera
from spcl.data.synthetic.config import DOMAINS, GENERATOR_VERSION, SPLIT_DIRS, SynthConfig, domain_dir_name
from spcl.data.synthetic.contact_sheet import write_contact_sheet
from spcl.data.synthetic.identities import draw_identities, identity_hash
from spcl.data.synthetic.render import render_image
from spcl.data.synthetic.styles import domain_style

__all__ = ["ensure_synthetic", "write_domain", "write_synthetic"]


def _draw_counts(
    rng: np.random.Generator, config: SynthConfig, domain: str, cam_p: np.ndarray, test: bool
) -> list[tuple[int, int]]:
    """(camera, image count) pairs of one identity, cameras ascending."""
    lo, hi = config.cameras_per_id
    k = int(rng.integers(lo, hi + 1))
    cams = np.sort(rng.choice(config.num_cameras, size=k, replace=False, p=cam_p))
    if test:
        a, b = config.test_images_per_camera
    else:
        a, b = config.train_images(domain)
    return [(int(c), int(rng.integers(a, b + 1))) for c in cams]


def write_domain(out_dir: str | os.PathLike[str], domain: str, seed: int = 0,
                 config: SynthConfig | None = None) -> dict[str, Any]:
    """Write one domain in the Market-1501 layout into ``out_dir`` (created) and return its meta.

    Train pids are 1..n_train, test pids n_train+1..n_train+n_test (4 digits); cameras c1..cN;
    file names ``PPPP_cCs1_FFFFFF_00.jpg`` with a running frame number per camera. Query: one
    random image per test identity and camera; gallery (``bounding_box_test``): the rest.
    """
    config = config or SynthConfig()
    dom = DOMAINS.index(domain) if domain in DOMAINS else -1
    if dom < 0:
        raise ValueError(f"unknown synthetic domain {domain!r}; expected one of {DOMAINS}")
    out = Path(out_dir)
    for sub in SPLIT_DIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    style = domain_style(domain, config)
    n_train, n_test = config.ids(domain)
    rh, rw = 2 * config.height, 2 * config.width

    cam_rng = np.random.default_rng([seed, dom, 1])
    cameras = [make_camera(cam_rng, c, style, rh, rw) for c in range(config.num_cameras)]
    cam_p = np.exp(cam_rng.normal(0, style.camera_popularity, config.num_cameras))
    cam_p = cam_p / cam_p.sum()
    identities = draw_identities(np.random.default_rng([seed, dom, 2]), style, n_train + n_test, config.sibling_rate)
    layout_rng = np.random.default_rng([seed, dom, 3])
    frames = layout_rng.integers(0, 2000, config.num_cameras)

    sheet_ids = set(range(min(config.contact_sheet_ids // 2, n_train))) | set(
        range(n_train, n_train + min(config.contact_sheet_ids - config.contact_sheet_ids // 2, n_test))
    )
    sheet: dict[tuple[int, int], Image.Image] = {}
    records = []
    counts = {sub: 0 for sub in SPLIT_DIRS}
    split_cams: dict[str, set[int]] = {sub: set() for sub in SPLIT_DIRS}
    split_pids: dict[str, set[int]] = {sub: set() for sub in SPLIT_DIRS}
    for i, attrs in enumerate(identities):
        pid = i + 1
        test = i >= n_train
        plan = _draw_counts(layout_rng, config, domain, cam_p, test)
        records.append({"pid": pid, "split": "test" if test else "train", "hash": identity_hash(domain, i, attrs),
                        "cameras": [c + 1 for c, _ in plan], "attributes": attrs})
        for cam, n in plan:
            query_pick = int(layout_rng.integers(n)) if test else -1
            for j in range(n):
                frames[cam] += layout_rng.integers(1, 10)
                img_rng = np.random.default_rng([seed, dom, 4, pid, cam, j])
                img = render_image(img_rng, attrs, cameras[cam], style, config)
                sub = "bounding_box_train" if not test else ("query" if j == query_pick else "bounding_box_test")
                name = f"{pid:04d}_c{cam + 1}s1_{int(frames[cam]):06d}_00.jpg"
                img.save(out / sub / name, "JPEG", quality=cameras[cam].jpeg_quality)
                counts[sub] += 1
                split_cams[sub].add(cam + 1)
                split_pids[sub].add(pid)
                if i in sheet_ids and (i, cam) not in sheet:
                    sheet[(i, cam)] = img
    write_contact_sheet(out / "contact_sheet.png", sheet, sorted(sheet_ids), config, domain)
    (out / "identities.json").write_text(json.dumps(records, indent=0, sort_keys=True))
    meta = {
        "name": domain_dir_name(domain),
        "domain": domain,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "config": config.to_json(),
        "splits": {
            sub: {"images": counts[sub], "identities": len(split_pids[sub]), "cameras": sorted(split_cams[sub])}
            for sub in SPLIT_DIRS
        },
        "cameras": [
            {"camera": c.index + 1, "jpeg_quality": c.jpeg_quality, "blur": round(c.blur, 3),
             "noise": round(c.noise, 3), "downscale": round(c.downscale, 3), "haze": round(c.haze, 3)}
            for c in cameras
        ],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _meta_matches(folder: Path, domain: str, seed: int, config: SynthConfig) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("version") == GENERATOR_VERSION
        and meta.get("seed") == seed
        and meta.get("domain") == domain
        and meta.get("config") == config.to_json()
    )


def _atomic_domain(root: Path, domain: str, seed: int, config: SynthConfig) -> Path:
    """Generate into a temporary sibling folder, then swap it in with renames."""
    final = root / domain_dir_name(domain)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        write_domain(tmp, domain, seed, config)
        if final.exists():
            if _meta_matches(final, domain, seed, config):  # another process finished first
                shutil.rmtree(tmp)
                return final
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=root))
            os.replace(final, old / "data")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def ensure_synthetic(root: str | os.PathLike[str], name: str, seed: int = 0,
                     config: SynthConfig | None = None) -> Path:
    """Path of the synthetic domain ``name`` (``synth-source`` / ``synth-target``, or just
    ``source`` / ``target``) under ``root``, generated on first use and reused afterwards.

    A folder whose meta.json records another seed, config or generator version is regenerated.
    Generation writes into a temporary folder renamed into place, so an interrupted run never
    leaves a half-written dataset behind.
    """
    config = config or SynthConfig()
    domain = name.removeprefix("synth-")
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic dataset {name!r}; expected one of "
                         f"{[domain_dir_name(d) for d in DOMAINS]}")
    folder = Path(root) / domain_dir_name(domain)
    if _meta_matches(folder, domain, seed, config):
        return folder
    return _atomic_domain(Path(root), domain, seed, config)


def write_synthetic(out: str | os.PathLike[str], seed: int = 0, config: SynthConfig | None = None) -> dict[str, Path]:
    """Write both domains under ``out`` (``synth-source``, ``synth-target``), each with its
    meta.json, identities.json and contact_sheet.png; returns domain -> folder.

    Folders already holding this exact seed / config / version are kept as they are.
    """
    return {d: ensure_synthetic(out, d, seed, config) for d in DOMAINS}
