"""Task adapters (classification, NER, QA), registered by name."""
from . import clf  # noqa: F401  (registration)
from . import ner  # noqa: F401
from . import qa  # noqa: F401
from .base import CellResult, Context, Task, get_task, length_bucket, register_task, task_names

__all__ = ["CellResult", "Context", "Task", "get_task", "length_bucket", "register_task", "task_names"]
