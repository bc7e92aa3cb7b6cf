"""Recording sessions that never drop a raw frame (MDA -> bounded queue -> workers)."""

from ._session import RecordResult, RecordSession, record

__all__ = ["RecordResult", "RecordSession", "record"]
