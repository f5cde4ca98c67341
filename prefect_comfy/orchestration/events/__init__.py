"""Prefect events: their names and ids (``names``), their payloads (``payloads``), the
sink that sends them (``sink``), the emitter the sensor uses (``emitter``) and the progress
budget (``budget``)."""
