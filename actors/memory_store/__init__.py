"""The entity's memory on disk: conversation log, memories with FTS5 recall, and todos.

One SQLite file per entity (database.py); its tables and migrations (schema.py); the
records, errors and checks of the API (records.py); how text is compared and searched
(text.py); the MemoryStore with its memories and recall (store.py), todo list (todos.py),
conversation log (log.py) and token use (usage.py).
"""

from .records import (
    MEMORY_KINDS,
    OPERATOR,
    HourUsage,
    InvalidInput,
    MemoryStoreError,
    NewMemory,
    NotFound,
    SchemaTooNew,
    TaskUsage,
    Todo,
    UsageCall,
    UsageWindow,
)
from .schema import MIGRATIONS, SCHEMA_VERSION
from .store import IMPORTANCE_WEIGHT, MAX_RECALL, RECENCY_WEIGHT, SCAN_LIMIT, MemoryStore
from .text import LESSON_MERGE_JACCARD, jaccard, near_duplicates, query_terms
from .usage import MAX_USAGE_HOURS, MAX_USAGE_TASKS, USAGE_RETENTION_S

__all__ = [
    "IMPORTANCE_WEIGHT",
    "LESSON_MERGE_JACCARD",
    "MAX_RECALL",
    "MAX_USAGE_HOURS",
    "MAX_USAGE_TASKS",
    "MEMORY_KINDS",
    "MIGRATIONS",
    "OPERATOR",
    "RECENCY_WEIGHT",
    "SCAN_LIMIT",
    "SCHEMA_VERSION",
    "USAGE_RETENTION_S",
    "HourUsage",
    "InvalidInput",
    "MemoryStore",
    "MemoryStoreError",
    "NewMemory",
    "NotFound",
    "SchemaTooNew",
    "TaskUsage",
    "Todo",
    "UsageCall",
    "UsageWindow",
    "jaccard",
    "near_duplicates",
    "query_terms",
]
