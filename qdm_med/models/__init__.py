"""Models: the dual-stream QDM transformer (:mod:`.qdm`, blocks in :mod:`.blocks`), first stages
(:mod:`.first_stage`) and hook-based MAC counting (:mod:`.macs`)."""

from qdm_med.models.first_stage import FIRST_STAGES, KLVAEFirstStage, PixelUnshuffleFirstStage, build_first_stage
from qdm_med.models.macs import MacCounter, count_macs_hooks
from qdm_med.models.qdm import QDM_CONFIGS, DualStreamQDM, build_qdm

__all__ = [
    "QDM_CONFIGS", "DualStreamQDM", "build_qdm", "FIRST_STAGES", "KLVAEFirstStage", "PixelUnshuffleFirstStage",
    "build_first_stage", "MacCounter", "count_macs_hooks",
]
