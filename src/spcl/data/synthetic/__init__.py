"""Built-in synthetic two-domain re-ID dataset (layouts of docs/datasets.md; the UDA setting of
docs/method.md#the-two-problems).

Procedurally drawn pedestrians, written in the Market-1501 layout so that the ordinary Market
reader loads them. Every identity has fixed attributes (clothing colours and patterns, hair, skin,
bag and its side, build, shoes); every image varies viewpoint (which changes what is visible),
pose, crop, occlusion and illumination; every camera has its own background, colour cast, blur,
noise, resolution loss and JPEG quality.

Two domains with disjoint identities:

- ``source``: a clean rendered look (like the synthetic PersonX), vivid clothing, mild cameras;
- ``target``: another attribute distribution (muted, dark, mostly plain clothing, more bags) and
  much stronger camera effects (colour casts, haze, blur, noise, low resolution, heavy JPEG,
  cluttered backgrounds, more occlusion), like real surveillance footage.

The same attribute renders the same way in both domains, so what is learned on the source
transfers in part; the rest is the domain gap that adaptation has to close.

Output is a pure function of ``(seed, config, GENERATOR_VERSION)``: identical bytes on every run
with the same numpy / Pillow (libjpeg) versions. Each domain depends only on its own seed stream,
so generating one domain alone gives the same files as generating both.

Modules: ``config`` (size and difficulty), ``styles`` (what differs between the domains),
``identities``, ``cameras``, ``render`` (one image), ``writer`` (the dataset on disk) and
``contact_sheet``.
"""

from __future__ import annotations

from spcl.data.synthetic.config import DOMAINS, GENERATOR_VERSION, SynthConfig, domain_dir_name
from spcl.data.synthetic.writer import ensure_synthetic, write_domain, write_synthetic

__all__ = [
    "DOMAINS",
    "GENERATOR_VERSION",
    "SynthConfig",
    "domain_dir_name",
    "ensure_synthetic",
    "write_domain",
    "write_synthetic",
]
