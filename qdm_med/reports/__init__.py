"""Reports: JSON files (:mod:`.json_report`) and pictures (:mod:`.pictures`)."""

from qdm_med.reports.json_report import to_jsonable, versions, write_json_report
from qdm_med.reports.pictures import draw_quadtree, error_map, montage
from qdm_med.reports.warnings import collect_warnings

__all__ = ["collect_warnings", "to_jsonable", "versions", "write_json_report", "draw_quadtree", "error_map", "montage"]
