"""The messaging domain: accounts, terminals, conversations, messages.

Decisions are plain functions where possible; storage is passed in as a
``Store`` and delivery to live terminals goes through ``TerminalLink``.
"""
