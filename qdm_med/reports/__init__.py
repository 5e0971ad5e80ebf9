"""Reports: JSON files (:mod:`.json_report`) and pictures (:mod:`.pictures`)."""

from qdm_med.reports.json_report import base_report, to_jsonable, versions, write_json_report
from qdm_med.reports.pictures import draw_quadtree, error_map, montage

__all__ = ["base_report", "to_jsonable", "versions", "write_json_report", "draw_quadtree", "error_map", "montage"]
