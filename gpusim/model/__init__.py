"""The model: the SimPy reference (the executable specification), the Redis server model,
Celery worker slots, and the parameters every engine shares."""
