"""Task adapters (classification, NER, QA), registered by name."""
from ctxbench.tasks import clf  # noqa: F401  (registration)
from ctxbench.tasks import ner  # noqa: F401
from ctxbench.tasks import qa  # noqa: F401
from ctxbench.tasks.base import CellResult, Context, Task, get_task, length_bucket, register_task, task_names

__all__ = ["CellResult", "Context", "Task", "get_task", "length_bucket", "register_task", "task_names"]
