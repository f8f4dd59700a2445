"""The worker side: the Taskiq broker and schedule, reminder and webhook delivery, the worker processes."""
