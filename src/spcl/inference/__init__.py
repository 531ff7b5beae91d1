"""Using a trained model: features of new images, gallery search, ranked-list pictures, a report
of the run, ONNX export, and evaluating a checkpoint on any dataset.

Sits beside training, never above it: it opens checkpoints (``spcl.models.load_model``) and hands
the encoder they describe to the library below (``spcl.evaluation``). Modules: ``extractor``
(:class:`FeatureExtractor`), ``images`` (what a folder, CSV or list names), ``feature_file``
(``spcl extract``), ``search``, ``ranklist`` (the pictures), ``visualize``, ``report``,
``export`` and ``evaluate`` (``spcl eval``).
"""

from __future__ import annotations

from spcl.inference.evaluate import evaluate_checkpoint
from spcl.inference.extractor import FeatureExtractor, Preprocessing
from spcl.inference.feature_file import FeatureSet, extract_to_file, load_features
from spcl.inference.images import ImageList, list_input_images
from spcl.inference.search import GalleryIndex, QueryResult, search_gallery
from spcl.inference.visualize import visualize_run

__all__ = [
    "FeatureExtractor",
    "FeatureSet",
    "GalleryIndex",
    "ImageList",
    "Preprocessing",
    "QueryResult",
    "evaluate_checkpoint",
    "extract_to_file",
    "list_input_images",
    "load_features",
    "search_gallery",
    "visualize_run",
]
