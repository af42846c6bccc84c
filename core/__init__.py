"""Odoo-free core of Fusion Centralized Billing.

Everything here is plain Python (no ``odoo`` import) so it can be tested with
pytest in seconds and reused by the ORM layer, the controllers and the scripts:

* ``keys``        – API key generation, hashing and constant-time verification
* ``money``       – Decimal helpers (minor units, rounding)
* ``periods``     – billing period arithmetic
* ``aggregation`` – metric aggregations over events / pushed counters
* ``rating``      – charge models (standard, package, graduated, volume, percentage)
* ``lago``        – Lago wire format: validation, serialisation, error envelopes
* ``signing``     – outbound webhook HMAC signing and retry schedule
* ``nexacloud``   – read-only NexaCloud source reader and import planner
* ``reconcile``   – dual-run delta and explanation logic
"""
