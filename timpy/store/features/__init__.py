"""One storage mixin per feature, composed into ``timpy.store.repository.Repository``.

Each module holds its feature's protocol (the signatures, composed in
``timpy.store.protocol``), its mixin (the SQL) and the declaration of the
tables it owns (``CopiedTable``, listed in ``timpy.store.tables``).
"""
