"""Data: the embedded synthetic generator, NIfTI folders and Learn2Reg datasets, file I/O.

Registered datasets: ``synth`` (:class:`SynthDataset`), ``folder``
(:class:`FolderDataset`) and ``learn2reg`` (:class:`Learn2RegDataset`); file data go through
one preprocessing pipeline (:class:`Preprocessing`, docs/preprocessing.md). Items are dicts in the
batch format of docs/conventions.md without the batch dimension; :func:`make_loader` batches them
for training, step by step (:class:`StepSampler`).
"""

from .datasets import SynthDataset
from .files import FilePairDataset, FolderDataset, Learn2RegDataset, Scan
from .io import ImageInfo, load_ddf, load_image, save_ddf, save_image
from .lesions import SynthLesionDataset
from .loader import StepSampler, collate, make_loader
from .organs import SynthOrgansDataset
from .preprocess import Preprocessing
from .synth import SynthMorphGenerator

__all__ = [
    "SynthDataset",
    "SynthOrgansDataset",
    "SynthLesionDataset",
    "SynthMorphGenerator",
    "FilePairDataset",
    "FolderDataset",
    "Learn2RegDataset",
    "Scan",
    "Preprocessing",
    "ImageInfo",
    "load_image",
    "save_image",
    "save_ddf",
    "load_ddf",
    "StepSampler",
    "make_loader",
    "collate",
]
