"""The Timeline (columnar, bounded memory) and its JSONL log."""

from gradwatch.record.log import LOG_FORMAT, LOG_VERSION, JsonlLog, log_header, read_log
from gradwatch.record.timeline import Table, Timeline

__all__ = ["LOG_FORMAT", "LOG_VERSION", "JsonlLog", "Table", "Timeline", "log_header", "read_log"]
