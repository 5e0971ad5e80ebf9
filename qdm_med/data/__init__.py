"""Data: the offline corpus (:mod:`.corpus`), dataset indexers (:mod:`.indexers`), patient splits
(:mod:`.splits`) and slice datasets (:mod:`.slices`)."""

from qdm_med.data.corpus import SOURCES, default_data_dir, fetch_corpus, list_corpus
from qdm_med.data.indexers import VolumeRecord, index_corpus, index_dataset, index_folder, index_hanseg, index_segrap
from qdm_med.data.slices import CTSliceDataset, NaturalImageDataset
from qdm_med.data.splits import patient_split

__all__ = [
    "SOURCES", "default_data_dir", "fetch_corpus", "list_corpus", "VolumeRecord", "index_corpus", "index_dataset",
    "index_folder", "index_hanseg", "index_segrap", "patient_split", "CTSliceDataset", "NaturalImageDataset",
]
