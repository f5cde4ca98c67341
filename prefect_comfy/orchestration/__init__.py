"""The Prefect layer: what a flow calls.

The job block (``jobs``), the tasks (``tasks``), the flow (``flows``), the sensor
(``sensor``), the suspending wait (``suspend``, ``runs``), results, artifacts and their
previews, triggers, and sync/async twins (``twins``). Events have a room of their own,
``events/``. It sees a server only through ``backends.base`` and ``backends.registry``.
"""
