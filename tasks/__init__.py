"""The task layer: task bodies written once, registered on Celery or Dramatiq by ``KBCHAT_TASK_BACKEND``."""
