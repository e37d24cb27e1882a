"""Importers: evidence people already captured with the tools they run becomes the
same `EgressEvent`s the live sensors write, so one audit covers both."""

from auditor.importers.common import ImportResult, import_file

__all__ = ["ImportResult", "import_file"]
