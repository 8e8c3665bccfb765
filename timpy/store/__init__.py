"""The store layer: SQLAlchemy Core schema and the repository over it.

Rows carry sealed payloads; the columns needed for lookup are blind indexes
or opaque ids. Nothing readable is stored at rest.
"""
