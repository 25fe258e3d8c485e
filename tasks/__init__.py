"""Task adapters (classification, NER, QA), registered by name."""
from . import clf  # noqa: F401  (registration)
from .base import CellResult, Context, Task, get_task, length_bucket, register_task, task_names

__all__ = ["CellResult", "Context", "Task", "get_task", "length_bucket", "register_task", "task_names"]
