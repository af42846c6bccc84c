"""Plain service classes (no models): the billing cycle, webhook delivery, the NexaCloud import run.

They take an Odoo environment and plain values, hold no state between calls, and are used by
the models' thin entry points (cron methods, buttons, API handlers).
"""
