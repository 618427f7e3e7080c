"""roomkit's benchmarks; each module runs with ``python -m benchmarks.<name>``.

``durable_writes``: acknowledged durable writes per second through one room.
"""
