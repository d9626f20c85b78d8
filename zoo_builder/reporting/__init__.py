"""Reporting on zoos: reading summaries, Table-5-style reports and phase diagrams."""
